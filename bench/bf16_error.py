"""bf16 compute against float32: how far a DiT3D forward in bf16 lands from the float32 one, and
the activations a bf16 train step saves for the backward pass (what keeping more in float32 costs).

    python bench/bf16_error.py [--depths 12 28] [--json runs/bench/bf16_error.json]

Error: DiT3D of width 384 (DiT-S: 6 heads, patch 2) at each depth, 4 frames of 8×8×4 latents, a
5-token caption, batch 4 with timesteps spread over [0, 1000); every weight random and non-zero
(the init plus N(0, 0.02²), so the zero-initialised gates, adaLN and output layers take part).
The same float32 params run with compute dtype float32 and bfloat16; reported: ‖bf16 − f32‖ /
‖f32‖ over the whole output, and max |bf16 − f32| / max |f32|. Memory: `saved_activation_bytes`
of DiT3D-S/2 on 16×32×32×4 clips with 32 text tokens, bf16, per clip (traced, nothing runs).
Runs on CPU; the numbers depend on the code's rounding, not on the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from memory import saved_activation_bytes  # noqa: E402

from dit3d_jax.models import get_model, init_params  # noqa: E402


def forward_error(depth: int, seed: int = 0) -> dict:
    model = get_model("DiT3D-S/2", depth=depth, input_size=8, num_frames=4, text_dim=16,
                      num_classes=10)
    params = init_params(model, jax.random.key(seed))
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    params = jax.tree_util.tree_unflatten(
        treedef, [p + 0.02 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
    k = jax.random.split(jax.random.key(seed + 2), 3)
    x = jax.random.normal(k[0], (4, 4, 8, 8, 4))
    t = jnp.array([5.0, 250.0, 600.0, 990.0])
    y = jnp.array([0, 3, 7, 9])
    text = jax.random.normal(k[1], (4, 5, 16))
    mask = jnp.arange(5)[None] < jnp.array([5, 3, 1, 4])[:, None]

    def run(dtype):
        net = model.clone(dtype=dtype)
        fn = jax.jit(lambda p: net.apply({"params": p}, x, t, y, text=text, text_mask=mask))
        return np.asarray(fn(params), np.float64)

    ref, low = run(jnp.float32), run(jnp.bfloat16)
    return dict(depth=depth, rel_l2=float(np.linalg.norm(low - ref) / np.linalg.norm(ref)),
                rel_max=float(np.abs(low - ref).max() / np.abs(ref).max()))


def saved_per_clip(remat: str) -> int:
    model = get_model("DiT3D-S/2", num_frames=16, input_size=32, text_dim=384,
                      dtype=jnp.bfloat16, scan_blocks=remat != "none", remat=remat)
    params = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
    return saved_activation_bytes(model, params, 1, text_len=32)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[12, 28])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = [forward_error(d) for d in args.depths]
    memory = {remat: saved_per_clip(remat) for remat in ("none", "dots")}
    harness.print_table(
        ["case", "‖bf16 − f32‖ / ‖f32‖", "max err / max |f32|"],
        [[f"DiT3D width 384, depth {r['depth']}", f"{r['rel_l2']:.2e}", f"{r['rel_max']:.2e}"]
         for r in rows]
        + [[f"saved for backward per clip, remat {k}", harness.gib(v), ""]
           for k, v in memory.items()], title="bf16 forward against float32")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(dict(machine=harness.machine(), errors=rows, saved_per_clip=memory), f,
                      indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
