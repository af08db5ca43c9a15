"""Samples videos (or images) from a trained DiT3D / DiT.

    python sample.py --workdir runs/demo --prompt "a red circle moving left" --num 4
    python sample.py --workdir runs/demo --heldout              # the dataset's held-out captions
    python sample.py --checkpoint runs/dit_xl2 --label 207 --label 360 --cfg-scale 4

Loads a train.py workdir (EMA params unless --no-ema) or a convert_torch_weights.py output, draws
`--num` samples per prompt/label with batched classifier-free guidance, and writes OUT.gif and
OUT.mp4 (a captioned grid video) and OUT.png (every frame of every sample; images: one grid).
Latent models decode through the VAE (--vae DIR, a convert_torch_weights.py --vae output, or
the one the run's latent dataset recorded), --decode-chunk frames at a time:

    python sample.py --checkpoint runs/dit_xl2 --vae runs/sd_vae --label 207 --label 360
"""
from __future__ import annotations

import os
import sys

from dit3d_jax.utils import compile_cache
from dit3d_jax.utils.cli import ArgumentParser, UsageError, run


def parse_args(argv):
    p = ArgumentParser(description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--workdir", help="a train.py workdir")
    src.add_argument("--checkpoint", help="a convert_torch_weights.py output directory")
    p.add_argument("--no-ema", action="store_true", help="use the raw params, not the EMA")
    p.add_argument("--prompt", action="append", default=[], help="caption (repeatable)")
    p.add_argument("--label", action="append", default=[], help="class id(s): 3 or 3,5")
    p.add_argument("--heldout", action="store_true", help="prompt with the held-out captions")
    p.add_argument("--num", type=int, default=1, help="samples per prompt / label")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cfg-scale", type=float, default=None, help="default: the config's, else 4")
    p.add_argument("--steps", type=int, default=None, help="default: the config's, else 250")
    p.add_argument("--sampler", default=None,
                   help="ddpm or ddim (gaussian), euler or heun (flow); default: the config's")
    p.add_argument("--eta", type=float, default=None, help="DDIM eta (default 0)")
    p.add_argument("--guidance-channels", type=int, default=None,
                   help="guide only the first N channels (3 reproduces DiT's sample.py); "
                        "default: all")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="compute dtype (auto: bfloat16 on GPU/TPU and AVX512-BF16 CPUs, "
                        "else float32)")
    p.add_argument("--out", default=None, help="OUT.gif (default WORKDIR/samples.gif)")
    p.add_argument("--vae", default=None, help="convert_torch_weights.py --vae output that "
                   "decodes the latents (default: the one the run's latent dataset recorded)")
    p.add_argument("--decode-chunk", type=int, default=8, help="frames the VAE decodes at once")
    p.add_argument("--fps", type=int, default=8)
    p.add_argument("--scale", type=int, default=None,
                   help="integer upscaling of the written grid (default: tiles ≥ 128 px wide)")
    p.add_argument("--verbose", action="store_true", help="show the traceback of a user error")
    compile_cache.add_flag(p)
    return p.parse_args(argv)


def load(args):
    """-> (model, params, config or None). Raises UsageError for a missing, unreadable or
    mismatched source (a workdir whose newest checkpoint does not restore falls back to the
    newest that does, with a warning)."""
    if args.checkpoint is not None:
        from dit3d_jax.models import check_denoiser, variant_name
        from dit3d_jax.models.export import load_exported
        if not os.path.isfile(os.path.join(args.checkpoint, "model.json")):
            raise UsageError(f"--checkpoint {args.checkpoint!r}: no model.json there (expected a "
                             f"convert_torch_weights.py output)")
        try:
            model, params = load_exported(args.checkpoint)
            check_denoiser(variant_name(model), "model.json")
        except (FileNotFoundError, ValueError) as err:
            raise UsageError(f"--checkpoint {args.checkpoint!r}: {err}") from err
        return model, params, None
    if not os.path.isdir(args.workdir):
        raise UsageError(f"--workdir {args.workdir!r} does not exist")
    from dit3d_jax.train.checkpoint import CheckpointError, load_workdir
    from dit3d_jax.utils.logging import quiet_library_logs
    quiet_library_logs()
    try:
        return load_workdir(args.workdir, ema=not args.no_ema)
    except (FileNotFoundError, CheckpointError) as err:
        raise UsageError(f"--workdir {args.workdir!r}: {err}") from err


def conditions(args, model, config):
    """-> (a caption per sample for the grid, prompts, labels)."""
    prompts = list(args.prompt)
    if args.heldout:
        if config is None or config.data.name != "moving_shapes":
            raise UsageError("--heldout needs a workdir trained on the moving_shapes dataset")
        from dit3d_jax.data.shapes import captions as dataset_captions
        prompts += list(dataset_captions("heldout", config.data.config))
    labels = [int(v) for item in args.label for v in str(item).split(",") if v.strip()]
    if prompts and model.input_spec.text_dim == 0:
        raise UsageError("--prompt: this model has no text conditioning (text_dim=0)")
    for label in labels:
        if not 0 <= label < model.num_classes:
            raise UsageError(f"--label {label}: expected a class in [0, {model.num_classes})")
    if prompts and labels and len(prompts) != len(labels):
        raise UsageError(f"--prompt and --label: give as many of each ({len(prompts)} vs "
                         f"{len(labels)}) or only one kind")
    n = max(len(prompts), len(labels), 1)
    names = [" / ".join(filter(None, [prompts[i] if prompts else "",
                                      f"class {labels[i]}" if labels else ""])) or "unconditional"
             for i in range(n)]
    return [name for name in names for _ in range(args.num)], prompts, labels


def settings(args, model, config):
    """-> (generate()'s sampler/steps/cfg_scale/eta/guidance_channels, objective): flags, else
    the config, else DiT's (`dit3d_jax.generate.sample_settings`); guidance_channels: the flag or
    None (all channels)."""
    from dit3d_jax.diffusion.objective import make_objective
    from dit3d_jax.generate import sample_settings
    objective = make_objective(config.objective if config is not None else {"name": "gaussian"},
                               model.learn_sigma)
    try:
        chosen = sample_settings(config, sampler=args.sampler, steps=args.steps,
                                 cfg_scale=args.cfg_scale, eta=args.eta)
    except ValueError as err:  # its messages start with the argument: "steps 0: ..."
        raise UsageError(f"--{err}") from None
    g = args.guidance_channels
    if g is not None and not 1 <= g <= model.in_channels:
        raise UsageError(f"--guidance-channels {g}: expected an int in [1, {model.in_channels}] "
                         f"(the model's channels)")
    return dict(chosen, guidance_channels=g), objective


def load_decoder(args, model, config):
    """-> (vae, params) decoding the model's latents, or None (the samples are pixels): --vae,
    else the VAE the run's latent dataset recorded. Raises UsageError when it does not fit."""
    path = args.vae
    if path is None and config is not None and config.data.name == "latents":
        from dit3d_jax.data.latents import read_metadata
        try:
            path = read_metadata(config.data.path).get("vae")
        except FileNotFoundError:
            path = None
    if path is None:
        return None
    if args.decode_chunk < 1:
        raise UsageError(f"--decode-chunk {args.decode_chunk}: expected at least 1")
    from dit3d_jax.models.vae import load_vae
    try:
        vae, params = load_vae(path)
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(f"--vae {path!r}: {err}") from None
    if vae.latent_channels != model.in_channels:
        raise UsageError(f"--vae {path!r}: expected a VAE with {model.in_channels} latent "
                         f"channels (the model's), got {vae.latent_channels}")
    return vae, params


def decode(decoder, x, chunk: int):
    """Scaled latents (N, [F,] h, w, c) -> pixels (N, [F,] f·h, f·w, 3) through the VAE
    decoder = (vae, params), at most `chunk` frames at a time."""
    import numpy as np

    from dit3d_jax.models.vae import decode_video
    vae, params = decoder
    video = x if x.ndim == 5 else x[:, None]
    frames = np.asarray(decode_video(vae, params, video, chunk=chunk))
    return frames if x.ndim == 5 else frames[:, 0]


def main(argv=None) -> int:
    """Exit status: 0, or 2 after one `error:` line for bad input (`dit3d_jax.utils.cli.run`)."""
    return run(_sample, argv)


def _sample(argv) -> int:
    args = parse_args(argv)
    # The progress bar's host callback would keep the sampling loop out of the persistent cache
    # (jax never writes executables with host callbacks), so a cached run samples without it.
    cached = compile_cache.enable(args.compile_cache) is not None
    if args.num < 1:
        raise UsageError(f"--num {args.num}: expected at least 1")
    out = args.out or os.path.join(args.workdir or args.checkpoint, "samples.gif")
    base, ext = os.path.splitext(out)
    if ext.lower() not in (".gif", ".mp4", ".png"):
        raise UsageError(f"--out {out!r}: expected a .gif, .mp4 or .png path")
    model, params, config = load(args)
    names, prompts, labels = conditions(args, model, config)
    chosen, objective = settings(args, model, config)
    decoder = load_decoder(args, model, config)

    from dit3d_jax.generate import generate, text_encoder_for
    from dit3d_jax.utils.video import make_grid, write_image, write_video
    print(f"Sampling {len(names)} with {chosen['sampler']}, {chosen['steps']} steps, "
          f"CFG {chosen['cfg_scale']}", file=sys.stderr)
    x = generate(model, params, objective, prompts=prompts, labels=labels, num=args.num,
                 seed=args.seed, encoder=text_encoder_for(config) if prompts else None,
                 dtype=args.dtype, progress=not cached, **chosen)
    video = x.ndim == 5
    if decoder is not None:
        print(f"Decoding through the VAE, {args.decode_chunk} frames at a time", file=sys.stderr)
        x = decode(decoder, x, args.decode_chunk)
    x = x[..., :3]  # latents without a decoder: show the first three channels
    scale = args.scale or max(1, 128 // x.shape[-2])
    os.makedirs(os.path.dirname(os.path.abspath(base)), exist_ok=True)
    written = []
    if video:
        grid = make_grid(x, captions=names, scale=scale)
        written += [write_video(base + ".gif", grid, args.fps),
                    write_video(base + ".mp4", grid, args.fps)]
        frames = make_grid(x.reshape(-1, 1, *x.shape[2:]), ncols=x.shape[1], scale=scale)
        written.append(write_image(base + ".png", frames[0]))
    else:
        written.append(write_image(base + ".png", make_grid(x, captions=names, scale=scale)))
    for path in written:
        print(f"wrote {os.path.abspath(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
