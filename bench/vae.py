"""SD VAE throughput: the Flax AutoencoderKL beside diffusers' PyTorch AutoencoderKL.

    .venv/bin/python bench/vae.py --json runs/bench/vae_cpu.json          # CPU: 1 frame, minutes
    .venv/bin/python bench/vae.py --batch 8 --repeats 5 --dtype bfloat16  # a GPU

Both at the real SD layout (128/256/512/512, the sd-vae-ft-* config) with random weights (speed
does not depend on their values), on --batch frames of --size² pixels:
  - encode: frames (N, S, S, 3) -> posterior mean (and logvar);
  - decode: latents (N, S/8, S/8, 4) -> frames.
JAX: each jitted once (compile time reported apart), then the median of --repeats calls after one
warm-up call. PyTorch: the same calls under inference_mode (fp32, or bf16 autocast for
--dtype bfloat16), one warm-up, median of --repeats. Ratio = JAX frames/s ÷ PyTorch frames/s.

Chunked decoding (`decode_video` of --frames frames, --chunk at a time, a lax.map inside one jit):
XLA's memory estimate of the compiled decoder (temporaries, i.e. activations; outputs apart),
beside decoding all --frames at once, and on a GPU also the measured device peak of one
decode_video call. The two run in one process, one after the other.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from memory import compiled_memory, device_peak_bytes  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=1, help="frames per encode/decode call")
    parser.add_argument("--size", type=int, default=256, help="frame height and width")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--frames", type=int, default=16, help="clip length for chunked decode")
    parser.add_argument("--chunk", type=int, default=4, help="frames decoded at once")
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--json", default=None, help="write the results here")
    return parser.parse_args(argv)


def bench_jax(args) -> dict:
    import jax
    import jax.numpy as jnp

    from dit3d_jax.models.vae import AutoencoderKL, _decode_frames, decode_video, init_vae

    vae = AutoencoderKL(dtype=jnp.dtype(args.dtype))
    params = jax.device_put(init_vae(vae))
    latent = args.size // vae.downsample_factor
    x = jax.random.uniform(jax.random.key(1), (args.batch, args.size, args.size, 3),
                           minval=-1, maxval=1)
    z = jax.random.normal(jax.random.key(2), (args.batch, latent, latent, 4))
    out = {}
    for name, method, inputs in (("encode", AutoencoderKL.encode, x),
                                 ("decode", AutoencoderKL.decode, z)):
        fn = jax.jit(lambda p, v, method=method: vae.apply({"params": p}, v, method=method))
        start = time.perf_counter()
        compiled = fn.lower(params, inputs).compile()
        compile_s = time.perf_counter() - start
        timing = harness.time_calls(lambda: compiled(params, inputs), steps=args.repeats,
                                   warmup=1, sync=jax.block_until_ready)
        out[name] = {"compile_s": compile_s, "median_s": timing["median_s"],
                     "times_s": timing["times_s"],
                     "frames_per_s": args.batch / timing["median_s"]}
        print(f"jax {name}: compile {compile_s:.1f} s, {out[name]['frames_per_s']:.3f} frames/s",
              flush=True)

    abstract = jax.eval_shape(lambda: params)
    memory = {}
    for chunk in (args.chunk, args.frames):
        latents = jax.ShapeDtypeStruct((args.frames, latent, latent, 4), jnp.float32)
        memory[chunk] = compiled_memory(
            _decode_frames.lower(vae, abstract, latents, chunk).compile())
        print(f"jax decode_video {args.frames} frames, chunk {chunk}: XLA estimate {memory[chunk]}",
              flush=True)
    out["memory"] = {str(k): v for k, v in memory.items()}
    if jax.default_backend() != "cpu":
        clip = jnp.zeros((1, args.frames, latent, latent, 4))
        jax.block_until_ready(decode_video(vae, params, clip, chunk=args.chunk))
        out["memory"]["device_peak_bytes"] = device_peak_bytes()
    return out


def bench_torch(args) -> dict:
    import torch
    from diffusers import AutoencoderKL as TorchAutoencoderKL

    device = harness.torch_setup("fp32")
    model = TorchAutoencoderKL(block_out_channels=(128, 256, 512, 512),
                               down_block_types=("DownEncoderBlock2D",) * 4,
                               up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2,
                               latent_channels=4, norm_num_groups=32).to(device).eval()
    latent = args.size // 8
    x = torch.rand(args.batch, 3, args.size, args.size, device=device) * 2 - 1
    z = torch.randn(args.batch, 4, latent, latent, device=device)
    sync = (lambda out: torch.cuda.synchronize()) if device.type == "cuda" else (lambda out: out)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                              enabled=args.dtype == "bfloat16")
    out = {}
    with torch.inference_mode(), autocast:
        for name, call in (("encode", lambda: model.encode(x).latent_dist.mean),
                           ("decode", lambda: model.decode(z).sample)):
            timing = harness.time_calls(call, steps=args.repeats, warmup=1, sync=sync)
            out[name] = {"median_s": timing["median_s"], "times_s": timing["times_s"],
                         "frames_per_s": args.batch / timing["median_s"]}
            print(f"torch {name}: {out[name]['frames_per_s']:.3f} frames/s", flush=True)
    out["threads"] = torch.get_num_threads()
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    info = harness.machine()
    results = {"args": vars(args), "machine": info, "jax": bench_jax(args)}
    if not args.skip_torch:
        results["torch"] = bench_torch(args)
    rows = []
    for name in ("encode", "decode"):
        jax_fps = results["jax"][name]["frames_per_s"]
        torch_fps = results["torch"][name]["frames_per_s"] if "torch" in results else None
        rows.append([name, harness.fmt(jax_fps, ".3f"), harness.fmt(torch_fps, ".3f"),
                     harness.fmt(None if torch_fps is None else jax_fps / torch_fps, ".2f"),
                     f"{results['jax'][name]['compile_s']:.1f}"])
    harness.print_table(["SD VAE", "JAX frames/s", "PyTorch frames/s", "JAX / PyTorch",
                        "JAX compile s"], rows,
                       title=f"{args.size}² frames, batch {args.batch}, {args.dtype}, median of "
                             f"{args.repeats} ({info['cpu_model']}, {info['cpu_cores']} cores)")
    mem = results["jax"]["memory"]
    harness.print_table(
        ["decode_video", "temporaries", "outputs"],
        [[f"{args.frames} frames, chunk {c}", harness.gib(mem[str(c)]["temporaries"]),
          harness.gib(mem[str(c)]["outputs"])] for c in (args.chunk, args.frames)
         if mem.get(str(c))],
        title="XLA memory estimate of the compiled chunked decoder")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
