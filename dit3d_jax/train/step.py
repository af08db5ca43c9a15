"""One pure, sharded training step: state, batch -> state, metrics.

    step = make_train_step(config, model, objective, mesh, state_sharding)
    state, metrics = step(state, shard_batch(mesh, host_batch))

What happens inside, in order:
 1. keys: the state's key folded with the step number, split for timesteps, noise and CFG dropout;
    with a latent batch ("latent_mean", "latent_logvar"), x0 is drawn from that posterior with
    a key of its own stream (the state's key folded with LATENT_STREAM, then the step);
 2. timesteps: from the importance sampler with weights 1/(T·p_t) when importance.enabled, else
    drawn by the objective itself (uniform, or logit-normal for flow) with weights 1; the two
    do not combine: logit-normal t with importance.enabled is an error when the step is built;
 3. forward/backward in the compute dtype (the model cloned with dtype=bf16 when configured;
    params stay float32, the loss is float32); loss = mean(weights · per-sample loss); frozen
    leaves sit behind stop_gradient, so no weight gradients are computed for them;
 4. the optimizer (freeze partition, clipping, warm-up, AdamW, accumulation), then
    EMA: ema = decay·ema + (1 − decay)·params on trainable leaves when an update was applied;
 5. the importance history takes the global batch's (t, unweighted per-sample loss) (also with
    importance.enabled off, so switching it on later starts from a warm history);
 6. NaN guard: steps 4 and 5 run under a lax.cond on a finite loss and gradient norm, so a
    non-finite step leaves params, EMA, optimizer state and sampler bit-for-bit unchanged and
    counts in `skipped` (the step counter still advances).
Metrics (float32 scalars): loss, mse, vb, grad_norm (trainable leaves, before clipping), lr,
skipped (1 for a dropped step). The step never imports the data stack.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from dit3d_jax.diffusion import importance
from dit3d_jax.models.dit import DiT
from dit3d_jax.models.inputs import InputSpec
from dit3d_jax.models.vae import sample_posterior
from dit3d_jax.train import optim
from dit3d_jax.train.sharding import batch_sharding, replicated
from dit3d_jax.train.state import TrainState, build_optimizer

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
LATENT_STREAM = 0x1A7E47  # folded into the state's key for the per-step latent draws
METRICS = ("loss", "mse", "vb", "grad_norm", "lr", "skipped")


@functools.lru_cache(maxsize=None)
def cpu_has_fast_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True on x86 CPUs with AVX512-BF16 (the Linux `cpuinfo` flags), where XLA:CPU runs
    bf16 x bf16 -> f32 matmuls on its XNNPACK/YNNPACK kernels at ~1.9x its float32 rate;
    elsewhere (older x86, ARM, macOS) bfloat16 is not measured to be faster, so False."""
    try:
        with open(cpuinfo) as f:
            return any(line.startswith("flags") and " avx512_bf16" in line for line in f)
    except OSError:
        return False


def compute_dtype(name: str, backend: str | None = None) -> Any:
    """"auto" -> bfloat16 on GPU/TPU and on CPUs where it is faster (`cpu_has_fast_bf16`), else
    float32; otherwise the named dtype. Params stay float32 either way. backend: the one the
    model runs on (default: JAX's default backend)."""
    if name == "auto":
        fast = (backend or jax.default_backend()) != "cpu" or cpu_has_fast_bf16()
        return jnp.bfloat16 if fast else jnp.float32
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype: expected 'auto' or one of {tuple(COMPUTE_DTYPES)}, got "
                         f"{name!r}")
    return COMPUTE_DTYPES[name]


def draw_latents(batch: dict, key: jax.Array) -> jax.Array:
    """x0 = latent_mean + exp(latent_logvar / 2)·ε, ε ~ N(0, I) from `key`: a fresh sample of
    the (scaled) VAE posterior a latent dataset stores, (B, ...) float32."""
    return sample_posterior(key, batch["latent_mean"].astype(jnp.float32),
                            batch["latent_logvar"].astype(jnp.float32))


def model_inputs(model: DiT, batch: dict, key: jax.Array | None = None
                 ) -> tuple[jax.Array, dict]:
    """(x0, cond) from a batch: x0 = batch[model.input_spec.key] ("video" or "image"; the
    other one when only that is there), or a draw from the posterior "latent_mean" /
    "latent_logvar" with `key` (`draw_latents`); cond holds y / text / text_mask for the
    conditioning the model takes."""
    spec = model.input_spec
    if "latent_mean" in batch:
        if key is None:
            raise ValueError("key: expected a PRNG key to draw x0 from batch['latent_mean'] / "
                             "['latent_logvar'], got None")
        return draw_latents(batch, key), _conditioning(spec, batch)
    entry = spec.key
    if entry not in batch:
        other = "image" if entry == "video" else "video"
        if other not in batch:
            raise ValueError(f"batch: expected a {entry!r} entry for {type(model).__name__}, "
                             f"got keys {sorted(batch)}")
        entry = other
    return batch[entry], _conditioning(spec, batch)


def _conditioning(spec: InputSpec, batch: dict) -> dict:
    cond = {}
    if spec.num_classes > 0 and "label" in batch:
        cond["y"] = batch["label"]
    if spec.text_dim > 0 and "text_emb" in batch:
        cond["text"] = batch["text_emb"]
        if "text_mask" in batch:
            cond["text_mask"] = batch["text_mask"]
    return cond


def make_step_fn(config, model: DiT, objective) -> Callable[[TrainState, dict], tuple]:
    """The un-jitted pure step (state, batch) -> (state, metrics)."""
    tx, labels = build_optimizer(config, model)
    lr_of = optim.learning_rate(config.optim)
    net = model.clone(dtype=compute_dtype(config.compute_dtype))
    decay = float(config.ema_decay)
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"ema_decay: expected a value in [0, 1], got {decay!r}")
    use_importance = bool(config.importance.enabled)
    uniform_prob = float(config.importance.uniform_prob)
    t_sampling = getattr(objective, "t_sampling", "uniform")
    if use_importance and t_sampling != "uniform":
        raise ValueError(f"objective.t_sampling={t_sampling!r} cannot be used with "
                         f"importance.enabled=True: the importance sampler draws the timesteps "
                         f"(uniform until warmed up), so {t_sampling} would be ignored; set "
                         f"importance.enabled=False (or objective.t_sampling='uniform')")

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        # A stream of its own for the latent draw, so the other keys stay as they were.
        key_z = jax.random.fold_in(jax.random.fold_in(state.rng, LATENT_STREAM), state.step)
        x0, cond = model_inputs(model, batch, key_z)
        key = jax.random.fold_in(state.rng, state.step)
        key_t, key_loss, key_drop = jax.random.split(key, 3)
        if use_importance:
            t_bins, weights = importance.draw(state.importance, key_t, x0.shape[0], uniform_prob)
        else:
            t_bins, weights = None, jnp.ones((x0.shape[0],), jnp.float32)

        def loss_fn(params):
            params = jax.tree_util.tree_map(
                lambda label, p: jax.lax.stop_gradient(p) if label == optim.FROZEN else p,
                labels, params)

            def model_fn(x_t, t_model):
                return net.apply({"params": params}, x_t, t_model, train=True,
                                 rngs={"dropout": key_drop}, **cond)

            per_sample, aux = objective.loss(model_fn, x0, key_loss, t_bins)
            per_sample = per_sample.astype(jnp.float32)
            return jnp.mean(weights * per_sample), (per_sample, aux)

        (loss, (per_sample, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grad_norm = optim.global_norm(optim.trainable_only(grads, labels))
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        lr = lr_of(state.opt_state)

        def update(carry):
            params, ema_params, opt_state, history = carry
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optim.apply_updates(params, updates, labels)
            applied = optim.update_applied(opt_state)
            ema_params = jax.tree_util.tree_map(
                lambda label, e, p: e if label == optim.FROZEN else
                jnp.where(applied, decay * e + (1.0 - decay) * p, e),
                labels, ema_params, params)
            history = importance.update(history, aux["t_bins"], per_sample)
            return params, ema_params, opt_state, history

        # A branch, not a select of new against old: a select keeps both copies of every
        # param-sized buffer alive and costs more than AdamW and EMA together on CPU.
        params, ema_params, opt_state, history = jax.lax.cond(
            ok, update, lambda carry: carry,
            (state.params, state.ema_params, state.opt_state, state.importance))
        new_state = state.replace(
            step=state.step + 1, params=params, ema_params=ema_params, opt_state=opt_state,
            importance=history, skipped=state.skipped + (~ok).astype(jnp.int32))
        metrics = dict(loss=loss, mse=jnp.mean(aux["mse"]), vb=jnp.mean(aux["vb"]),
                       grad_norm=grad_norm, lr=lr, skipped=(~ok).astype(jnp.float32))
        return new_state, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}

    return step


def make_train_step(config, model: DiT, objective, mesh: Mesh, state_sharding: TrainState,
                    donate: bool = True) -> Callable[[TrainState, dict], tuple]:
    """jit(step) with the state sharded as `state_sharding`, the batch over ('data', 'fsdp'),
    replicated metrics, and the input state donated (its buffers are reused for the new state;
    `donate=False` only for measuring what that saves)."""
    return jax.jit(make_step_fn(config, model, objective),
                   in_shardings=(state_sharding, batch_sharding(mesh)),
                   out_shardings=(state_sharding, replicated(mesh)),
                   donate_argnums=0 if donate else ())
