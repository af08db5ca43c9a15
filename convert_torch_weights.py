"""Converts a facebookresearch/DiT PyTorch checkpoint into a Flax params directory.

    python convert_torch_weights.py --checkpoint DiT-XL-2-256x256.pt --output runs/dit_xl2
    python convert_torch_weights.py --checkpoint ckpt.pt --inflate-to DiT3D-S/2 --num-frames 16 \
        --text-dim 384 --output runs/dit3d_s2_init
    python convert_torch_weights.py --vit vit_b_16.pth --input-size 64 --output runs/vit_b16_64

Accepts a plain state_dict or DiT's training dict (uses 'ema', else 'model'). Writes DIR/params
(orbax) and DIR/model.json, loadable by sample.py (--checkpoint DIR) and train.py
(--config.init_from=DIR). `--vit` takes a torchvision ViT state_dict (e.g. `vit_b_16`'s
ImageNet weights, saved with torch.save(model.state_dict(), PATH)) and writes the image ViT
backbone, position grid resized to --input-size; as init_from it fills a ViT3D's backbone and the
video layers start fresh. Needs torch (`pip install -e '.[convert]'`).
"""
from __future__ import annotations

import argparse
import os
import sys

import jax

from dit3d_jax.utils.cli import UsageError, run


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=None, help="PyTorch DiT .pt file")
    parser.add_argument("--vit", default=None, help="torchvision ViT state_dict (.pth)")
    parser.add_argument("--input-size", type=int, default=None,
                        help="--vit: frame size the ViT3D will see (default: the file's)")
    parser.add_argument("--output", required=True, help="directory to write")
    parser.add_argument("--model", default=None, help="e.g. DiT-S/2 (default: inferred)")
    parser.add_argument("--inflate-to", default=None, help="e.g. DiT3D-S/2: put DiT into a DiT3D")
    parser.add_argument("--num-frames", type=int, default=16)
    parser.add_argument("--text-dim", type=int, default=0, help="0: no text layers")
    parser.add_argument("--temporal-every", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="init of the video-only layers")
    return parser.parse_args(argv)


def convert_vit(args) -> int:
    """--vit: torchvision ViT state_dict -> DIR holding the image ViT backbone."""
    if args.checkpoint is not None:
        raise UsageError("--vit and --checkpoint: expected one of them, got both")
    if not os.path.isfile(args.vit):
        raise UsageError(f"--vit {args.vit!r}: expected a torchvision ViT state_dict file, got "
                         f"no such file")
    if os.path.exists(os.path.join(args.output, "params")):
        raise UsageError(f"--output {args.output!r} already holds params; choose a new directory")
    import torch

    from dit3d_jax.convert.torch_vit import convert_torch_vit, infer_vit
    from dit3d_jax.models import count_params, variant_name
    from dit3d_jax.models.export import save_exported

    try:
        state_dict = torch.load(args.vit, map_location="cpu", weights_only=True)
    except Exception as err:  # pylint: disable=broad-except  (any unreadable file)
        raise UsageError(f"--vit {args.vit!r}: expected a torch.save'd state_dict, could not "
                         f"load it ({type(err).__name__}: {err})") from None
    if not isinstance(state_dict, dict):
        raise UsageError(f"--vit {args.vit!r}: expected a state_dict (dict of tensors), got "
                         f"{type(state_dict).__name__}")
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


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.vit is not None:
        return convert_vit(args)
    if args.checkpoint is None:
        raise UsageError("expected --checkpoint PATH (a DiT .pt) or --vit PATH (a torchvision "
                         "ViT state_dict)")
    if not os.path.isfile(args.checkpoint):
        sys.exit(f"error: --checkpoint {args.checkpoint!r} does not exist")
    if os.path.exists(os.path.join(args.output, "params")):
        sys.exit(f"error: --output {args.output!r} already holds params; choose a new directory")
    import torch

    from dit3d_jax.convert import convert_torch_state_dict, infer_model, inflate, select_state_dict
    from dit3d_jax.models import count_params, get_model, init_params, variant_name
    from dit3d_jax.models.export import save_exported

    state_dict = select_state_dict(torch.load(args.checkpoint, map_location="cpu",
                                              weights_only=True))
    try:
        model = infer_model(state_dict) if args.model is None else get_model(args.model)
        params = convert_torch_state_dict(state_dict, model)
    except ValueError as err:
        sys.exit(f"error: {err}")
    summary = [f"tensors mapped: {len(state_dict)} (pos_embed checked, not stored)",
               f"variant: {variant_name(model)}, input {model.input_size}, channels "
               f"{model.in_channels}, classes "
               f"{model.num_classes} learn_sigma {model.learn_sigma}",
               f"parameters: {count_params(params):,}"]
    if args.inflate_to:
        name = args.inflate_to
        video = get_model(name, depth=model.depth, input_size=model.input_size, in_channels=model.in_channels,
                          num_classes=model.num_classes, learn_sigma=model.learn_sigma,
                          class_dropout_prob=model.class_dropout_prob,
                          num_frames=args.num_frames, text_dim=args.text_dim,
                          temporal_every=args.temporal_every)
        try:
            params = inflate(params, init_params(video, jax.random.key(args.seed)))
        except ValueError as err:
            sys.exit(f"error: {err}")
        model = video
        summary.append(f"inflated to {name}: {count_params(params):,} parameters")
    save_exported(args.output, model, params)
    print("\n".join(summary + [f"wrote {os.path.abspath(args.output)}"]))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
