"""End to end on CPU, tiny: a folder of mp4s -> encode_latents.py (tiny VAE) -> train a few
steps from an inflated converted PyTorch DiT with the backbone frozen -> resume -> sample.py
decodes through the VAE -> an MP4 of the right shape. And the bad inputs on that path."""
import os
import shutil
import sys
from pathlib import Path

import imageio.v3 as iio
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dit3d_jax.data.latents import LatentSource, is_complete  # noqa: E402
from dit3d_jax.data.sources import make_data_iterator  # noqa: E402
from dit3d_jax.models.export import load_exported  # noqa: E402
from dit3d_jax.models.vae import AutoencoderKL, init_vae, save_vae  # noqa: E402
from dit3d_jax.train.config import load_config_file  # noqa: E402
from dit3d_jax.train.loop import model_from_config, train_and_evaluate  # noqa: E402
from dit3d_jax.utils.cli import run  # noqa: E402
from torch_reference import TorchDiT, randomize_  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import convert_torch_weights  # noqa: E402
import encode_latents  # noqa: E402
import sample  # noqa: E402

FRAMES, SIZE = 4, 16  # pixels; the tiny VAE halves them: latents (4, 8, 8, 4)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The three inputs of the README's recipe, tiny: videos, a VAE, a PyTorch DiT."""
    root = tmp_path_factory.mktemp("e2e")
    videos = root / "videos"
    videos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        iio.imwrite(videos / f"v{i}.mp4", rng.integers(0, 256, (6, 20, 24, 3), dtype=np.uint8),
                    fps=4)
        (videos / f"v{i}.txt").write_text(f"clip {i % 2}")
    vae = AutoencoderKL(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4)
    save_vae(str(root / "vae"), vae, init_vae(vae, seed=0))
    dit = randomize_(TorchDiT(input_size=8, patch_size=4, hidden_size=384, depth=1, num_heads=6,
                              num_classes=4, learn_sigma=True), seed=1)
    torch.save({"ema": dit.state_dict()}, root / "dit.pt")
    return root


def _encode_argv(files, out):
    return ["--data", "video_folder", "--data-path", str(files / "videos"), "--vae",
            str(files / "vae"), "--output", str(out), "--frames", str(FRAMES), "--size",
            str(SIZE), "--data-dir", str(files / "tfds"), "--batch-size", "2"]


@pytest.fixture(scope="module")
def latents(files):
    """Encoded twice into the same folder: first interrupted after two clips (nothing that
    looks complete is left, and reading it says so), then to the end."""
    out = files / "latents"
    real = encode_latents.encoded_examples

    def interrupted(*args, **kwargs):
        for n, item in enumerate(real(*args, **kwargs)):
            if n == 2:
                raise KeyboardInterrupt
            yield item

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(encode_latents, "encoded_examples", interrupted)
        assert encode_latents.main(_encode_argv(files, out)) == 130
    assert not is_complete(out)
    with pytest.raises(FileNotFoundError, match="did not finish: run encode_latents.py again"):
        LatentSource(out)
    assert run(encode_latents.main, _encode_argv(files, out)) == 0
    return out


@pytest.fixture(scope="module")
def init_dir(files):
    """The PyTorch DiT converted and inflated into a DiT3D (convert_torch_weights.py)."""
    out = files / "dit3d_init"
    assert run(convert_torch_weights.main, [
        "--checkpoint", str(files / "dit.pt"), "--inflate-to", "DiT3D-S/4", "--num-frames",
        str(FRAMES), "--text-dim", "0", "--output", str(out)]) == 0
    return out


def _config(files, latents, workdir_steps):
    return load_config_file(str(ROOT / "configs" / "tiny.py"), {
        "model.name": "DiT3D-S/4", "model.kwargs.hidden_size": 384, "model.kwargs.depth": 1,
        "model.kwargs.num_heads": 6, "model.kwargs.num_frames": FRAMES,
        "model.kwargs.input_size": SIZE // 2, "model.kwargs.text_dim": 0,
        "model.kwargs.num_classes": 4, "data.name": "latents", "data.path": str(latents),
        "data.global_batch_size": 2, "init_from": str(files / "dit3d_init"),
        "optim.freeze": "backbone", "train.num_steps": workdir_steps,
        "train.checkpoint_every": 1, "train.keep_checkpoints": 3, "train.log_every": 1,
        "sample.steps": 2})


def test_videos_to_trained_dit3d_to_decoded_mp4(files, latents, init_dir, tmp_path):
    src = LatentSource(latents)
    assert len(src) == 3 and src.shape == (FRAMES, SIZE // 2, SIZE // 2, 4)
    assert src.caption_labels() == {"clip 0": 0, "clip 1": 1}
    assert src.metadata["vae"] == str(files / "vae")

    _, converted = load_exported(str(init_dir))

    workdir = tmp_path / "run"
    state = train_and_evaluate(_config(files, latents, 2), str(workdir))
    params = jax.device_get(state.params)
    # frozen backbone: the converted DiT weights are untouched, the video layers trained
    np.testing.assert_array_equal(params["blocks_0"]["attn"]["qkv"]["kernel"],
                                  converted["blocks_0"]["attn"]["qkv"]["kernel"])
    assert not np.array_equal(params["blocks_0"]["temporal_attn"]["qkv"]["kernel"],
                              converted["blocks_0"]["temporal_attn"]["qkv"]["kernel"])

    # resume: step 2 again from the step-1 checkpoint gives the same params, bit for bit
    shutil.rmtree(workdir / "checkpoints" / "2")
    resumed = jax.device_get(train_and_evaluate(_config(files, latents, 2), str(workdir)).params)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(resumed)):
        np.testing.assert_array_equal(a, b)

    out = tmp_path / "samples.mp4"
    assert sample.main(["--workdir", str(workdir), "--label", "1", "--steps", "2",
                        "--scale", "1", "--out", str(out)]) == 0
    video = iio.imread(out, index=None, plugin="FFMPEG")
    assert video.shape[0] == FRAMES
    # the frames strip: 1 sample x 4 frames of decoded SIZE x SIZE pixels (latents are 8 x 8)
    png = iio.imread(out.with_suffix(".png"))
    assert png.shape == (SIZE + 4, FRAMES * (SIZE + 2) + 2, 3)


def test_latents_of_the_wrong_shape_or_no_path_are_one_error(latents, files):
    config = _config(files, latents, 1)
    config.model.kwargs.num_frames = 2
    with pytest.raises(ValueError, match=r"expected latents of shape \(2, 8, 8, 4\).*got "
                                         r"\(4, 8, 8, 4\)"):
        make_data_iterator(config, model_from_config(config), process_index=0, process_count=1)
    full = load_config_file(str(ROOT / "configs" / "dit3d_s2.py"))
    with pytest.raises(ValueError, match="data.path: .*python encode_latents.py --data "
                                         "video_folder"):
        make_data_iterator(full, model_from_config(full), process_index=0, process_count=1)
    assert load_config_file(str(ROOT / "configs" / "dit3d_s2.py:benchmark")).data.name == "random"
    assert load_config_file(str(ROOT / "configs" / "dit_s2.py")).data.name == "latents"


@pytest.mark.parametrize("flag,value,message", [
    ("--output", None, "already holds a complete latent dataset"),
    ("--vae", "dit3d_init", "has no vae.json"),
    ("--data-path", "none", "expected a directory of videos"),
    ("--size", "15", "expected a multiple of the VAE's downsampling factor 2")])
def test_bad_encode_arguments_are_one_line_and_write_nothing(files, latents, init_dir, tmp_path,
                                                             capsys, flag, value, message):
    argv = _encode_argv(files, tmp_path / "unwritten")
    argv[argv.index(flag) + 1] = (str(latents) if value is None else
                                  value if flag == "--size" else str(files / value))
    assert run(encode_latents.main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not os.path.exists(tmp_path / "unwritten")


def test_image_folder_latents_feed_the_image_dit(files, tmp_path):
    """configs/dit_s2.py's path: class folders of images -> encode -> (h, w, c) latents -> the
    image DiT's batches (the dataset's shape checked against the model's)."""
    from PIL import Image
    rng = np.random.default_rng(1)
    for cls in ("cat", "dog"):
        (tmp_path / "images" / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (40, 24, 3), dtype=np.uint8)).save(
                tmp_path / "images" / cls / f"{i}.png")
    out = tmp_path / "latents"
    assert run(encode_latents.main, ["--data", "image_folder", "--data-path",
                                     str(tmp_path / "images"), "--vae", str(files / "vae"),
                                     "--output", str(out), "--size", str(SIZE)]) == 0
    src = LatentSource(out)
    assert src.shape == (SIZE // 2, SIZE // 2, 4) and src.caption_labels() == {"cat": 0, "dog": 1}
    config = load_config_file(str(ROOT / "configs" / "dit_s2.py"), {
        "data.path": str(out), "data.global_batch_size": 4, "model.kwargs.input_size": SIZE // 2})
    batch = next(make_data_iterator(config, model_from_config(config), process_index=0,
                                    process_count=1))
    assert batch["latent_mean"].shape == (4, SIZE // 2, SIZE // 2, 4)
    assert sorted(batch["label"].tolist()) == [0, 0, 1, 1]


def test_sample_decodes_an_image_dit_through_the_vae(files, tmp_path, capsys):
    """`sample.py --checkpoint DIT --vae VAE --label ...`: decoded images (pixels, not latents);
    a --vae that is not a VAE is one error line and writes nothing."""
    from dit3d_jax.models import get_model, init_params
    from dit3d_jax.models.export import save_exported
    dit = get_model("DiT-S/8", depth=1, input_size=SIZE // 2, in_channels=4, num_classes=4)
    save_exported(str(tmp_path / "dit"), dit, init_params(dit, jax.random.key(0)))
    out = tmp_path / "img.png"
    argv = ["--checkpoint", str(tmp_path / "dit"), "--label", "1", "--label", "3", "--steps",
            "2", "--scale", "1", "--out", str(out)]
    assert sample.main(argv + ["--vae", str(files / "vae")]) == 0
    grid = iio.imread(out)
    # 2 decoded 16x16 images side by side (latents would be 8x8), with a caption strip above
    assert grid.shape[1] == 2 * (SIZE + 2) + 2
    capsys.readouterr()
    bad = tmp_path / "bad.png"
    assert sample.main(argv[:-1] + [str(bad), "--vae", str(tmp_path / "dit")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --vae") and err.count("\n") == 1 and "vae.json" in err
    assert not bad.exists()


def test_moving_shapes_split_keeps_captions_and_labels(files, tmp_path):
    from dit3d_jax.data.shapes import captions, example
    out = tmp_path / "latents"
    assert run(encode_latents.main, [
        "--data", "moving_shapes", "--config", "tiny", "--split", "heldout", "--data-dir",
        str(tmp_path / "tfds"), "--vae", str(files / "vae"), "--output", str(out), "--size",
        "16", "--batch-size", "32"]) == 0
    src = LatentSource(out, split="heldout")
    assert len(src) == 64 and src.shape == (8, 8, 8, 4)
    assert sorted(src.caption_labels()) == sorted(captions("heldout", "tiny"))
    rows = {(src[i]["caption"], int(src[i]["label"])) for i in range(len(src))}
    expected = {(ex["caption"], ex["label"]) for ex in (example("heldout", i, "tiny")
                                                        for i in range(64))}
    assert rows == expected


def test_encoding_on_two_devices_matches_one(files, latents, tmp_path):
    """Data-parallel encode (2 simulated CPU devices, one clip each per step) writes the same
    latents as the single-device run (to float16 storage precision)."""
    import subprocess
    out = tmp_path / "latents2"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(ROOT / "encode_latents.py"),
                             *_encode_argv(files, out)], capture_output=True, text=True,
                            env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "on 2 cpu device(s)" in result.stderr
    one, two = LatentSource(latents), LatentSource(out)

    def by_clip(src):
        rows = [src[i] for i in range(len(src))]
        return sorted(rows, key=lambda r: (r["caption"], float(r["latent_mean"].sum())))
    for a, b in zip(by_clip(one), by_clip(two), strict=True):
        assert a["caption"] == b["caption"] and a["label"] == b["label"]
        for k in ("latent_mean", "latent_logvar"):
            np.testing.assert_allclose(a[k], b[k], rtol=2e-3, atol=1e-3)
