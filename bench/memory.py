"""Memory of a benchmarked step: the device's peak, XLA's static estimate of a compiled call,
and the activations autodiff saves for the backward pass (counted from the traced program).
"""
from __future__ import annotations

from typing import Optional


def device_peak_bytes() -> Optional[int]:
    """Peak bytes in use on device 0 since process start (None where the backend has no stats,
    e.g. CPU)."""
    import jax
    stats = jax.devices()[0].memory_stats()
    return None if not stats else stats.get("peak_bytes_in_use")


def compiled_memory(compiled) -> Optional[dict]:
    """XLA's static memory estimate for one call of a compiled function, in bytes: arguments,
    outputs, temporaries, aliased (outputs written into donated arguments) and their total
    arguments + outputs + temporaries − aliased; None where the backend does not implement it."""
    try:
        m = compiled.memory_analysis()
        out = {"arguments": int(m.argument_size_in_bytes), "outputs": int(m.output_size_in_bytes),
               "temporaries": int(m.temp_size_in_bytes), "aliased": int(m.alias_size_in_bytes)}
    except Exception:  # not every backend implements it
        return None
    out["total"] = out["arguments"] + out["outputs"] + out["temporaries"] - out["aliased"]
    return out


def saved_activation_bytes(model, params, batch: int, *, text_len: int,
                           freeze: str = "none") -> int:
    """Bytes of activations that autodiff keeps from a batch's forward for the backward pass
    (captions of `text_len` tokens where the model takes text):
    the residuals held by `jax.vjp` of the model's summed output, with the leaves that `freeze`
    freezes behind stop_gradient as in the train step. Only the part that grows with the batch
    is counted (residuals at batch 2 minus batch 1, times `batch`), so params and per-step
    copies of them (compute-dtype kernels) are left out. Platform-independent: it counts the
    jaxpr's residuals, before XLA's fusion may recompute cheap elementwise ones; the remat policy
    and the compute dtype of `model` decide it. Traced only (jax.eval_shape), nothing runs."""
    import jax
    from dit3d_jax.train.optim import FROZEN, freeze_labels

    labels = freeze_labels(model, freeze)

    def residuals(p, x, cond):
        def forward(p, x):
            p = jax.tree_util.tree_map(
                lambda label, w: jax.lax.stop_gradient(w) if label == FROZEN else w, labels, p)
            return model.apply({"params": p}, x, **cond).sum()
        return jax.tree_util.tree_leaves(jax.vjp(forward, p, x)[1])

    def total(b: int) -> int:
        cond = model.input_spec.zeros(b, text_len)
        x = cond.pop("x")
        leaves = jax.eval_shape(residuals, params, x, cond)
        return sum(leaf.size * leaf.dtype.itemsize for leaf in leaves)

    return (total(2) - total(1)) * batch
