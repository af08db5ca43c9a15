"""sample.py: writes a GIF, an MP4 and a PNG grid; bad arguments give one message, no files."""
import subprocess
import sys
from pathlib import Path

import imageio.v2 as imageio
import jax
import pytest

from dit3d_jax.models import get_model, init_params
from dit3d_jax.models.export import save_exported

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import sample  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt")
    model = get_model("DiT3D-S/8", depth=1, hidden_size=32, num_heads=2, input_size=8,
                      in_channels=3, num_frames=3, num_classes=4, text_dim=0)
    save_exported(str(out), model, init_params(model, jax.random.key(0)))
    return out


def test_writes_gif_mp4_and_grid(checkpoint, tmp_path):
    out = tmp_path / "s" / "clip.gif"
    result = subprocess.run([sys.executable, str(ROOT / "sample.py"), "--checkpoint",
                             str(checkpoint), "--label", "1,3", "--num", "2", "--steps", "3",
                             "--cfg-scale", "2", "--out", str(out), "--scale", "2"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    for ext in (".gif", ".mp4", ".png"):
        assert f"wrote {out.with_suffix(ext)}" in result.stdout
    frames = imageio.mimread(out.with_suffix(".mp4"))
    assert len(frames) == 3  # num_frames
    png = imageio.imread(out.with_suffix(".png"))
    assert png.shape[:2] == (4 * (16 + 2) + 2, 3 * (16 + 2) + 2)  # 4 samples x 3 frames
    assert "ddpm" in result.stderr  # narrated, with a progress bar on stderr


@pytest.mark.parametrize("flags,message", [
    (["--sampler", "plms"], "--sampler 'plms': expected one of"),
    (["--steps", "0"], "--steps 0: expected a positive"),
    (["--label", "4"], r"--label 4: expected a class in \[0, 4\)"),
    (["--prompt", "a red circle"], "no text conditioning"),
    (["--sampler", "heun"], "does not fit the gaussian objective"),
    (["--out", "x.avi"], "expected a .gif, .mp4 or .png"),
    (["--guidance-channels", "4"], r"--guidance-channels 4: expected an int in \[1, 3\]"),
])
def test_bad_arguments_give_one_message_and_no_files(checkpoint, tmp_path, capsys, flags,
                                                     message):
    out = tmp_path / "bad.gif"
    args = ["--checkpoint", str(checkpoint), "--out", str(out)] + flags
    assert sample.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert pytest.importorskip("re").search(message, err)
    assert list(tmp_path.iterdir()) == []


def test_missing_checkpoint_is_one_clear_error(tmp_path, capsys):
    assert sample.main(["--checkpoint", str(tmp_path / "nope")]) == 2
    assert "no model.json there" in capsys.readouterr().err


def test_guidance_channels_flag_reaches_generate(checkpoint, tmp_path, monkeypatch):
    import dit3d_jax.generate
    seen = {}

    class Stop(Exception):
        pass

    def fake_generate(*args, **kwargs):
        seen.update(kwargs)
        raise Stop
    monkeypatch.setattr(dit3d_jax.generate, "generate", fake_generate)
    base = ["--checkpoint", str(checkpoint), "--out", str(tmp_path / "x.gif"), "--steps", "2"]
    with pytest.raises(Stop):
        sample.main(base + ["--guidance-channels", "2"])
    assert seen["guidance_channels"] == 2
    with pytest.raises(Stop):
        sample.main(base)
    assert seen["guidance_channels"] is None
