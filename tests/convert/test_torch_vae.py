"""The SD VAE converter against diffusers' PyTorch AutoencoderKL, from both file layouts.

The reference is diffusers' own AutoencoderKL with the SD VAE layout (4 levels of
DownEncoderBlock2D/UpDecoderBlock2D, mid-block attention) at small widths, every parameter
re-drawn at random (GroupNorm affine included). The LDM file is written here from the documented
CompVis key names; diffusers' `from_single_file` reading it back to the same weights shows the file
is genuine. Errors are max |flax - torch| / max |torch|.
"""
import argparse
import importlib.util
import math
import re
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL as TorchAutoencoderKL
from safetensors.torch import save_file

from dit3d_jax.convert import (convert_vae_state_dict, infer_vae, load_torch_vae,
                               read_vae_checkpoint, vae_from_config)
from dit3d_jax.models import count_params
from dit3d_jax.models.vae import AutoencoderKL, load_vae
from torch_reference import TorchDiT, randomize_

ROOT = Path(__file__).resolve().parents[2]
SMALL = dict(block_out_channels=(32, 32, 64, 64), layers_per_block=2, norm_num_groups=8)
SD_CONFIG = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                 norm_num_groups=32, sample_size=256)


def torch_vae(**config) -> TorchAutoencoderKL:
    levels = len(config["block_out_channels"])
    return TorchAutoencoderKL(down_block_types=("DownEncoderBlock2D",) * levels,
                              up_block_types=("UpDecoderBlock2D",) * levels, **config)


def ldm_name(key: str, levels: int) -> str:
    """A diffusers AutoencoderKL key -> its name in the CompVis/LDM VAE (first_stage_model)."""
    key = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.down.\1.block.\2.",
                 key)
    key = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.",
                 key)
    key = re.sub(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
                 lambda m: f"decoder.up.{levels - 1 - int(m.group(1))}.block.{m.group(2)}.", key)
    key = re.sub(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                 lambda m: f"decoder.up.{levels - 1 - int(m.group(1))}.upsample.", key)
    key = re.sub(r"mid_block\.resnets\.([01])\.", lambda m: f"mid.block_{int(m.group(1)) + 1}.",
                 key)
    for new, old in (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"),
                     ("to_out.0", "proj_out")):
        key = key.replace(f"mid_block.attentions.0.{new}.", f"mid.attn_1.{old}.")
    return key.replace(".conv_shortcut.", ".nin_shortcut.").replace(".conv_norm_out.", ".norm_out.")


def ldm_state_dict(reference: TorchAutoencoderKL) -> dict:
    """LDM names; the mid attention's q/k/v/proj_out are 1x1 convs (C, C, 1, 1) there."""
    levels = len(reference.config.block_out_channels)
    out = {}
    for key, value in reference.state_dict().items():
        name = ldm_name(key, levels)
        if ".attn_1." in name and value.ndim == 2:
            value = value[:, :, None, None]
        out[name] = value.contiguous()
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A random small SD-layout VAE saved as a diffusers dir, a bare LDM safetensors, and an SD
    .ckpt and .safetensors with the VAE under first_stage_model. (next to other weights)."""
    root = tmp_path_factory.mktemp("vae_files")
    torch.manual_seed(0)
    reference = torch_vae(**SMALL).eval()
    with torch.no_grad():
        for name, param in reference.named_parameters():
            if param.ndim == 1 and "norm" in name and name.endswith("weight"):
                param.copy_(1.0 + 0.2 * torch.randn_like(param))
            elif param.ndim == 1:
                param.copy_(0.1 * torch.randn_like(param))
            else:
                param.copy_(torch.randn_like(param) / math.sqrt(param[0].numel()))
    assert all(bool((p != 0).all()) for p in reference.parameters())
    reference.save_pretrained(root / "diffusers")
    ldm = ldm_state_dict(reference)
    save_file(ldm, root / "vae-ft-test.safetensors")
    sd = {f"first_stage_model.{k}": v for k, v in ldm.items()}
    sd["model.diffusion_model.input_blocks.0.0.weight"] = torch.ones(2, 2)
    sd["first_stage_model.loss.logvar"] = torch.zeros(())  # LDM's training loss: not the VAE
    torch.save({"state_dict": sd, "global_step": 7}, root / "sd.ckpt")
    save_file(sd, root / "sd.safetensors")
    return reference, root


@pytest.fixture(scope="module")
def converted(files):
    reference, root = files
    return load_torch_vae(str(root / "diffusers"))


def _rel(flax_value, torch_value) -> float:
    expected = torch_value.detach().permute(0, 2, 3, 1).numpy()
    return float(np.abs(np.asarray(flax_value) - expected).max() / np.abs(expected).max())


def test_ldm_file_is_what_diffusers_reads_as_the_same_vae(files):
    reference, root = files
    loaded = TorchAutoencoderKL.from_single_file(str(root / "vae-ft-test.safetensors"),
                                                 config=str(root / "diffusers"),
                                                 local_files_only=True)
    theirs, ours = loaded.state_dict(), reference.state_dict()
    assert set(theirs) == set(ours)
    assert all(torch.equal(theirs[k].reshape(ours[k].shape), ours[k]) for k in ours)


def test_matches_diffusers_from_both_layouts(files, converted):
    reference, root = files
    vae, params = converted
    assert vae == AutoencoderKL(**SMALL)
    ldm_params = convert_vae_state_dict(read_vae_checkpoint(str(root / "vae-ft-test.safetensors"))
                                        [0], vae)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        posterior = reference.encode(x).latent_dist
        frames = reference.decode(posterior.mean).sample
    z = posterior.mean.permute(0, 2, 3, 1).numpy()

    @jax.jit
    def forward(p):
        mean, logvar = vae.apply({"params": p}, x.permute(0, 2, 3, 1).numpy(),
                                 method=AutoencoderKL.encode)
        return mean, logvar, vae.apply({"params": p}, z, method=AutoencoderKL.decode)

    for p in (params, ldm_params):
        mean, logvar, decoded = forward(p)
        errors = (_rel(mean, posterior.mean), _rel(logvar, posterior.logvar),
                  _rel(decoded, frames))
        assert max(errors) <= 1e-4, errors  # measured: about 1e-6, 2e-6, 3e-6


def test_every_accepted_file_gives_the_same_params(files, converted, tmp_path):
    reference, root = files
    _, params = converted
    old = {re.sub(r"\.(to_q|to_k|to_v|to_out\.0)\.", lambda m: "." + {
        "to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}[m.group(1)] + ".",
        k): v for k, v in reference.state_dict().items()}
    torch.save(old, tmp_path / "old_diffusers.bin")
    for state_dict in (read_vae_checkpoint(str(root / "diffusers" /
                                                "diffusion_pytorch_model.safetensors"))[0],
                       read_vae_checkpoint(str(root / "sd.ckpt"))[0],
                       read_vae_checkpoint(str(root / "sd.safetensors"))[0],
                       read_vae_checkpoint(str(tmp_path / "old_diffusers.bin"))[0]):
        other = convert_vae_state_dict(state_dict, AutoencoderKL(**SMALL))
        jax.tree_util.tree_map(np.testing.assert_array_equal, other, params)
    # A diffusers pipeline folder: its vae/ is used.
    shutil.copytree(root / "diffusers", tmp_path / "pipeline" / "vae")
    (tmp_path / "pipeline" / "model_index.json").write_text("{}")
    jax.tree_util.tree_map(np.testing.assert_array_equal,
                           load_torch_vae(str(tmp_path / "pipeline"))[1], params)
    # The diffusers weight file alone: config.json beside it is read (8 groups).
    assert load_torch_vae(str(root / "diffusers" / "diffusion_pytorch_model.safetensors"))[0] \
        == AutoencoderKL(**SMALL)
    # No config in an LDM file: shapes give the widths; groups and scale are the SD VAE's.
    inferred, _ = load_torch_vae(str(root / "sd.ckpt"))
    assert inferred == AutoencoderKL(block_out_channels=(32, 32, 64, 64), layers_per_block=2)


def test_default_module_maps_the_sd_vae_checkpoint():
    """AutoencoderKL() has exactly the parameters of diffusers' AutoencoderKL built with the
    sd-vae-ft-mse config (83,653,863), and every one of its keys, in both layouts, maps onto it."""
    with torch.device("meta"):
        reference = torch_vae(**SD_CONFIG)
    shapes = {k: np.broadcast_to(np.float32(0), tuple(v.shape))
              for k, v in reference.state_dict().items()}
    assert sum(p.numel() for p in reference.parameters()) == 83_653_863
    params = convert_vae_state_dict(shapes, AutoencoderKL())
    assert count_params(params) == 83_653_863
    ldm = {ldm_name(k, 4): (v[:, :, None, None] if ".attentions." in k and v.ndim == 2 else v)
           for k, v in shapes.items()}
    assert infer_vae(ldm) == AutoencoderKL()
    assert count_params(convert_vae_state_dict(ldm)) == 83_653_863


def test_every_bad_key_is_listed_in_one_error(files):
    reference, _ = files
    state_dict = dict(reference.state_dict())
    del state_dict["decoder.up_blocks.1.resnets.2.conv1.bias"]
    state_dict["encoder.extra.weight"] = torch.zeros(3)
    state_dict["quant_conv.weight"] = torch.zeros(8, 8, 3, 3)
    with pytest.raises(ValueError) as err:
        convert_vae_state_dict(state_dict, AutoencoderKL(**SMALL))
    message = str(err.value)
    for part in ("unknown keys (1): encoder.extra.weight",
                 "missing params (1): decoder/up_blocks_1/resnets_2/conv1/bias",
                 "mis-shaped (1): quant_conv.weight (8, 8, 3, 3)"):
        assert part in message


def test_unsupported_config_is_refused():
    with pytest.raises(ValueError, match="mid_block_add_attention=False.*use_quant_conv=False"):
        vae_from_config({"_class_name": "AutoencoderKL", "mid_block_add_attention": False,
                         "use_quant_conv": False})
    with pytest.raises(ValueError, match="_class_name 'UNet2DModel'"):
        vae_from_config({"_class_name": "UNet2DModel"})


# ----------------------------------------------------------------------------------------------
# convert_torch_weights.py --vae
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("convert_torch_weights_script",
                                                  ROOT / "convert_torch_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_writes_a_loadable_vae(files, converted, script, tmp_path, capsys):
    _, root = files
    assert script.run(script.main, ["--vae", str(root / "diffusers"), "--output",
                                    str(tmp_path / "out")]) == 0
    vae, params = load_vae(str(tmp_path / "out"))
    assert vae == converted[0]
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, converted[1])
    assert "parameters: " in capsys.readouterr().out
    # Writing over it is refused.
    assert script.run(script.main, ["--vae", str(root / "diffusers"), "--output",
                                    str(tmp_path / "out")]) == 2
    assert "already holds params" in capsys.readouterr().err


def _bad_inputs(root: Path, tmp: Path) -> dict:
    dit = randomize_(TorchDiT(input_size=8, patch_size=4, hidden_size=32, depth=1, num_heads=2,
                              num_classes=10))
    torch.save({"ema": dit.state_dict()}, tmp / "DiT-S-2.pt")
    (tmp / "notes.safetensors").write_text("these are not weights\n")
    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=1)}, tmp / "pickled.ckpt")
    (tmp / "random.ckpt").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp / "flax_dir").mkdir()
    (tmp / "flax_dir" / "vae.json").write_text("{}")
    (tmp / "unet").mkdir()
    (tmp / "unet" / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    (tmp / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(
        (root / "diffusers" / "diffusion_pytorch_model.safetensors").read_bytes())
    return {  # path -> what its one error line says
        tmp / "DiT-S-2.pt": "this is a DiT checkpoint",
        tmp / "notes.safetensors": "not a safetensors file",
        tmp / "random.ckpt": "not a PyTorch checkpoint or safetensors file",
        tmp / "pickled.ckpt": "objects other than tensors",
        tmp / "flax_dir": "expected a diffusers AutoencoderKL directory",
        tmp / "unet": "unsupported VAE options: _class_name 'UNet2DModel'",
        tmp / "missing.safetensors": "do not exist",
    }


def test_script_gives_one_error_line_and_writes_nothing(files, script, tmp_path, capsys):
    _, root = files
    for path, expected in _bad_inputs(root, tmp_path).items():
        output = tmp_path / f"out_{path.name}"
        status = script.run(script.main, ["--vae", str(path), "--output", str(output)])
        err = capsys.readouterr().err
        assert status == 2, (path, err)
        assert err.startswith("error: --vae: ") and expected in err and err.count("\n") == 1, err
        assert not output.exists()
    assert script.run(script.main, ["--output", str(tmp_path / "x")]) == 2
    assert "exactly one of --checkpoint" in capsys.readouterr().err
