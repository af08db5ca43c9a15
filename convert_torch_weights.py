"""Converts a facebookresearch/DiT PyTorch checkpoint into a Flax params directory.

    python convert_torch_weights.py --checkpoint DiT-XL-2-256x256.pt --output runs/dit_xl2
    python convert_torch_weights.py --checkpoint ckpt.pt --inflate-to DiT3D-S/2 --num-frames 16 \
        --text-dim 384 --output runs/dit3d_s2_init
    python convert_torch_weights.py --vae sd-vae-ft-ema/ --output runs/sd_vae
    python convert_torch_weights.py --vit vit_b_16.pth --input-size 64 --output runs/vit_b16_64

Accepts a plain state_dict or DiT's training dict (uses 'ema', else 'model'). Writes DIR/params
(orbax) and DIR/model.json, loadable by sample.py (--checkpoint DIR) and train.py
(--config.init_from=DIR). With --vae (a diffusers AutoencoderKL directory or its
diffusion_pytorch_model.safetensors/.bin, an LDM vae-ft-*.safetensors, or an SD .ckpt) it writes
DIR/params and DIR/vae.json instead (`dit3d_jax.models.vae.load_vae`). `--vit` takes a torchvision
ViT state_dict (e.g. `vit_b_16`'s ImageNet weights, saved with torch.save(model.state_dict(), PATH))
and writes the image ViT backbone, position grid resized to --input-size; as init_from it fills a
ViT3D's backbone and the video layers start fresh.
Needs torch (`pip install -e '.[convert]'`). Bad input (a missing file, a file that is not a
PyTorch checkpoint, a state_dict of another model) is one `error:` line and exit status 2.
"""
from __future__ import annotations

import argparse
import os
import re
import sys

import jax

from dit3d_jax.utils.cli import ArgumentParser, UsageError, one_line, run


def parse_args(argv):
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=None, help="PyTorch .pt file (DiT)")
    parser.add_argument("--vae", default=None, help="SD VAE weights (diffusers dir or file, LDM "
                        "file); converted instead of a DiT")
    parser.add_argument("--vit", default=None, help="torchvision ViT state_dict (.pth); "
                        "converted instead of a DiT")
    parser.add_argument("--input-size", type=int, default=None,
                        help="--vit: frame size the ViT3D will see (default: the file's)")
    parser.add_argument("--output", required=True, help="directory to write")
    parser.add_argument("--model", default=None, help="e.g. DiT-S/2 (default: inferred)")
    parser.add_argument("--inflate-to", default=None, help="e.g. DiT3D-S/2: put DiT into a DiT3D")
    parser.add_argument("--num-frames", type=int, default=16)
    parser.add_argument("--text-dim", type=int, default=0, help="0: no text layers")
    parser.add_argument("--temporal-every", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="init of the video-only layers")
    parser.add_argument("--verbose", action="store_true", help="show the traceback of an error")
    return parser.parse_args(argv)


def check_new_output(output: str, names: tuple[str, ...] = ("params",)) -> None:
    """UsageError when --output already holds one of `names` (nothing is overwritten)."""
    for name in names:
        if os.path.exists(os.path.join(output, name)):
            raise UsageError(f"--output {output!r} already holds {name}; choose a new directory")


def load_torch_checkpoint(path: str, flag: str = "--checkpoint") -> dict:
    """torch.load(path) without running pickled code (weights_only; DiT's training dicts carry
    an argparse.Namespace, allowed). UsageError when it is not a checkpoint torch can read, or
    holds something other than a dict."""
    try:
        import torch  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise UsageError("convert_torch_weights.py needs torch: pip install -e '.[convert]'"
                         ) from None
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pylint: disable=broad-except  # not a checkpoint, truncated, ...
        detail = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\n\n|$)", str(err), re.S)
        why = " ".join(detail.group(1).split()) if detail else one_line(err, 200)
        raise UsageError(f"{flag} {path!r}: expected a PyTorch checkpoint (torch.save of a "
                         f"state_dict or of DiT's training dict), torch.load cannot read it: "
                         f"{why}") from err
    if not isinstance(checkpoint, dict):
        raise UsageError(f"{flag} {path!r}: expected a state_dict (a dict of tensors), got a "
                         f"{type(checkpoint).__name__}")
    return checkpoint


def main(argv) -> int:
    args = parse_args(argv)
    given = [flag for flag, value in (("--checkpoint", args.checkpoint), ("--vae", args.vae),
                                      ("--vit", args.vit)) if value is not None]
    if len(given) != 1:
        got = " and ".join(given) or "none"
        raise UsageError("expected exactly one of --checkpoint (a DiT .pt), --vae (SD VAE weights) "
                         f"or --vit (a torchvision ViT state_dict), got {got}")
    if args.vae is not None:
        return convert_vae(args)
    if args.vit is not None:
        return convert_vit(args)
    if not os.path.isfile(args.checkpoint):
        raise UsageError(f"--checkpoint {args.checkpoint!r} does not exist")
    check_new_output(args.output)

    from dit3d_jax.convert import convert_torch_state_dict, infer_model, inflate, select_state_dict
    from dit3d_jax.models import count_params, get_model, init_params, variant_name
    from dit3d_jax.models.export import save_exported

    state_dict = select_state_dict(load_torch_checkpoint(args.checkpoint))
    try:
        model = infer_model(state_dict) if args.model is None else get_model(args.model)
        params = convert_torch_state_dict(state_dict, model)
    except ValueError as err:
        raise UsageError(f"--checkpoint {args.checkpoint!r}: {err}") from err
    summary = [f"tensors mapped: {len(state_dict)} (pos_embed checked, not stored)",
               f"variant: {variant_name(model)}, input {model.input_size}, channels "
               f"{model.in_channels}, classes "
               f"{model.num_classes} learn_sigma {model.learn_sigma}",
               f"parameters: {count_params(params):,}"]
    if args.inflate_to:
        name = args.inflate_to
        try:
            video = get_model(name, depth=model.depth, input_size=model.input_size,
                              in_channels=model.in_channels, num_classes=model.num_classes,
                              learn_sigma=model.learn_sigma,
                              class_dropout_prob=model.class_dropout_prob,
                              num_frames=args.num_frames, text_dim=args.text_dim,
                              temporal_every=args.temporal_every)
            params = inflate(params, init_params(video, jax.random.key(args.seed)))
        except ValueError as err:
            raise UsageError(f"--inflate-to {name!r}: {err}") from err
        model = video
        summary.append(f"inflated to {name}: {count_params(params):,} parameters")
    save_exported(args.output, model, params)
    print("\n".join(summary + [f"wrote {os.path.abspath(args.output)}"]))
    return 0


def convert_vae(args) -> int:
    """--vae PATH --output DIR: SD VAE weights -> DIR/params + DIR/vae.json."""
    check_new_output(args.output, ("params", "vae.json"))
    from dit3d_jax.convert import load_torch_vae
    from dit3d_jax.models import count_params
    from dit3d_jax.models.vae import save_vae

    try:
        vae, params = load_torch_vae(args.vae)
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(f"--vae: {' '.join(str(err).split())}") from err  # one line
    save_vae(args.output, vae, params)
    print(f"VAE: block_out_channels {tuple(vae.block_out_channels)}, layers_per_block "
          f"{vae.layers_per_block}, latent_channels {vae.latent_channels}, groups "
          f"{vae.norm_num_groups}, scaling_factor {vae.scaling_factor}\n"
          f"parameters: {count_params(params):,}\nwrote {os.path.abspath(args.output)}")
    return 0


def convert_vit(args) -> int:
    """--vit: torchvision ViT state_dict -> DIR holding the image ViT backbone."""
    if not os.path.isfile(args.vit):
        raise UsageError(f"--vit {args.vit!r}: expected a torchvision ViT state_dict file, got "
                         f"no such file")
    check_new_output(args.output)

    from dit3d_jax.convert.torch_vit import convert_torch_vit, infer_vit
    from dit3d_jax.models import count_params, variant_name
    from dit3d_jax.models.export import save_exported

    state_dict = load_torch_checkpoint(args.vit, "--vit")
    try:
        model = infer_vit(state_dict)
        stored = model.input_size
        if args.input_size is not None:
            model = model.clone(input_size=args.input_size)
        params = convert_torch_vit(state_dict, model)
    except ValueError as err:
        raise UsageError(f"--vit {args.vit!r}: {err}") from None
    save_exported(args.output, model, params)
    resized = "" if model.input_size == stored else f" (position grid resized from {stored})"
    print(f"tensors read: {len(state_dict)} (heads.* skipped: the ImageNet classifier)\n"
          f"variant: {variant_name(model)}, input {model.input_size}{resized}\n"
          f"parameters: {count_params(params):,}\nwrote {os.path.abspath(args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
