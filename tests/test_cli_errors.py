"""train.py, sample.py and convert_torch_weights.py: each kind of bad input ends in one
`error: …` line on stderr and exit status 2, with no traceback (unless --verbose).

The cases run as subprocesses, all started at once by one module fixture (each imports jax, so
they overlap their start-up instead of paying it one after another).
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "tiny.py")


def _cases(d):
    """name -> (argv, a regex the error line must match). d: a scratch directory holding
    `run` (a tiny train.py workdir at step 0), `other` (its copy with a model.json of another
    width), `vit` (an export of a bare ViT backbone, as `convert_torch_weights.py --vit` writes),
    `empty/`, `text.pt` (not a checkpoint) and `foreign.pt` (a state_dict of no DiT)."""
    train = [sys.executable, "train.py", "--config", TINY]
    sample = [sys.executable, "sample.py"]
    convert = [sys.executable, "convert_torch_weights.py", "--output", f"{d}/out"]
    return {
        "train_config_missing": (
            [sys.executable, "train.py", "--config", "configs/nope.py", "--workdir", f"{d}/w"],
            r"--config 'configs/nope.py': expected a configs/NAME.py file, found no file"),
        "train_override_unknown": (
            train + ["--workdir", f"{d}/w", "--config.trian.num_steps=2"],
            r'Did you mean "train" instead of "trian"'),
        "train_variant_override_unknown": (
            [sys.executable, "train.py", "--config", "configs/shapes_demo.py:size=gpu",
             "--workdir", f"{d}/w", "--config.model.kwargs.hiden_size=384"],
            r"override names no field .*hiden_size.*Did you mean \"hidden_size\""),
        "train_variant_unknown": (
            [sys.executable, "train.py", "--config=configs/shapes_demo.py:size=tpu",
             "--workdir", f"{d}/w"],
            r"--config 'configs/shapes_demo.py:size=tpu': variant argument 'size=tpu': expected "
            r"any of: size=cpu\|gpu"),
        "train_override_bad_value": (
            train + ["--workdir", f"{d}/w", "--config.train.num_steps=abc"],
            r"--config.train.num_steps=abc: invalid literal for int"),
        "train_data_missing": (
            train + ["--workdir", f"{d}/w", "--config.data.name=video_folder",
                     f"--config.data.path={d}/no_videos"],
            r"data.path '.*no_videos': expected the directory that data.name='video_folder' "
            r"reads"),
        "train_init_from_not_export": (
            train + ["--workdir", f"{d}/w", f"--config.init_from={d}/empty"],
            r"init_from '.*empty': checkpoint: .* has no model.json"),
        "train_checkpoint_other_model": (
            train + ["--workdir", f"{d}/run", "--config.model.kwargs.hidden_size=32"],
            r"checkpoint: step 0 in .* was written for another model or config: \d+ arrays of "
            r"another shape"),
        "train_vit_backbone": (
            train + ["--workdir", f"{d}/w", "--config.model.name=ViT-S/8"],
            r"model.name: ViT-S/8 is the image ViT backbone alone, not a denoiser"),
        "train_verbose_traceback": (
            train + ["--workdir", f"{d}/w", "--config.trian.num_steps=2", "--verbose"],
            r"names no field"),
        "sample_workdir_missing": (sample + ["--workdir", f"{d}/nope"], r"does not exist"),
        "sample_not_a_checkpoint": (sample + ["--checkpoint", f"{d}/text.pt"],
                                    r"no model.json there"),
        "sample_vit_backbone": (sample + ["--checkpoint", f"{d}/vit"],
                                r"--checkpoint '.*vit': model.json: ViT-Ti/16 \(depth 1\) is the "
                                r"image ViT backbone alone, not a denoiser"),
        "sample_bad_value": (sample + ["--workdir", f"{d}/run", "--num", "x"],
                             r"argument --num: invalid int value: 'x'"),
        "sample_checkpoint_other_model": (
            sample + ["--workdir", f"{d}/other"],
            r"--workdir '.*other': checkpoint: step 0 .* written for another model or config"),
        "convert_not_a_checkpoint": (
            convert + ["--checkpoint", f"{d}/text.pt"],
            r"--checkpoint '.*text.pt': expected a PyTorch checkpoint .* torch.load cannot "
            r"read it"),
        "convert_other_model": (convert + ["--checkpoint", f"{d}/foreign.pt"],
                                r"cannot infer the variant, missing keys"),
    }


@pytest.fixture(scope="module")
def results():
    torch = pytest.importorskip("torch")
    import jax
    from dit3d_jax.models import get_model, init_params
    from dit3d_jax.models.export import save_exported
    from dit3d_jax.train.config import load_config_file
    from dit3d_jax.train.loop import train_and_evaluate
    d = tempfile.mkdtemp(prefix="cli_errors_")
    train_and_evaluate(load_config_file(TINY, {"train.num_steps": 0}), f"{d}/run")
    shutil.copytree(f"{d}/run", f"{d}/other")
    spec = json.load(open(f"{d}/other/model.json"))
    spec["fields"]["hidden_size"] = 32
    json.dump(spec, open(f"{d}/other/model.json", "w"))
    vit = get_model("ViT-Ti/16", depth=1, input_size=16)
    save_exported(f"{d}/vit", vit, init_params(vit, jax.random.key(0)))
    os.makedirs(f"{d}/empty")
    with open(f"{d}/text.pt", "w") as f:
        f.write("not a checkpoint\n")
    torch.save({"layer.weight": torch.zeros(2, 2)}, f"{d}/foreign.pt")

    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    procs = {name: subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
             for name, (argv, _) in _cases(d).items()}
    out = {name: (p.wait(timeout=300), p.stderr.read()) for name, p in procs.items()}
    yield d, out
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("name", sorted(_cases("D")))
def test_user_error_is_one_line_and_exit_2(results, name):
    d, out = results
    status, stderr = out[name]
    pattern = _cases(d)[name][1]
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert status == 2, stderr[-3000:]
    assert len(errors) == 1 and re.search(pattern, errors[0]), stderr[-3000:]
    assert stderr.rstrip().splitlines()[-1] == errors[0]     # nothing after it
    if name.endswith("verbose_traceback"):
        assert "Traceback (most recent call last)" in stderr
    else:
        assert "Traceback" not in stderr and len(stderr.splitlines()) <= 12, stderr[-3000:]
    assert not os.path.exists(os.path.join(d, "out", "params"))
