"""DiT in Flax equals an independent PyTorch DiT (tests/torch_reference.py) weight for weight."""
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from dit3d_jax.convert import convert_torch_state_dict
from dit3d_jax.models import MODEL_NAMES, check_denoiser, count_params, get_model, init_params
from dit3d_jax.models.dit import SIZES
from dit3d_jax.models.layers import (gelu_tanh, layer_norm, modulate, norm_modulate,
                                     resolve_attn_impl, sincos_2d, timestep_embedding)
from torch_reference import TorchDiT, randomize_, ref_pos_embed, ref_timestep

# name, overrides (small input/classes keep it fast), batch
PARITY_CASES = [("DiT-S/2", dict(input_size=32, num_classes=1000)),
                ("DiT-B/4", dict(input_size=16, num_classes=10))]


def _torch_model(name, overrides, seed):
    depth, hidden, heads = SIZES[name.split("-")[1].split("/")[0]]
    patch = int(name.split("/")[1])
    ref = TorchDiT(**{**dict(patch_size=patch, hidden_size=hidden, depth=depth, num_heads=heads,
                             in_channels=4, learn_sigma=True), **overrides})
    return randomize_(ref, seed).eval()


def _rel_err(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("name,overrides", PARITY_CASES)
def test_dit_matches_independent_pytorch_dit(name, overrides):
    ref = _torch_model(name, overrides, seed=1)
    model = get_model(name, **overrides)
    params = convert_torch_state_dict(ref.state_dict())
    rng = np.random.default_rng(0)
    s = overrides["input_size"]
    x = rng.standard_normal((3, s, s, 4)).astype(np.float32)
    t = np.array([0, 417, 999], np.float32)
    y = np.array([0, 3, overrides["num_classes"] - 1])
    with torch.no_grad():
        expected = ref(torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(t),
                       torch.from_numpy(y)).numpy().transpose(0, 2, 3, 1)
    out = np.asarray(model.apply({"params": params}, x, t, y))
    assert out.shape == (3, s, s, 8)
    assert np.abs(expected).max() > 1e-2  # random weights give a non-trivial output
    assert _rel_err(out, expected) <= 1e-5

    # The null class: force_drop rows equal the reference fed label num_classes.
    with torch.no_grad():
        null = ref(torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(t),
                   torch.full((3,), overrides["num_classes"])).numpy().transpose(0, 2, 3, 1)
    dropped = np.asarray(model.apply({"params": params}, x, t, y,
                                     force_drop=np.array([True, False, True])))
    assert _rel_err(dropped[[0, 2]], null[[0, 2]]) <= 1e-5
    assert _rel_err(dropped[1], expected[1]) <= 1e-5


def test_gradients_match_the_pytorch_dit():
    # The backward pass recomputes LayerNorm/modulation and GELU chains (layers.norm_modulate,
    # gelu_tanh): every parameter's gradient must still be autograd's on the reference model.
    name, overrides = "DiT-B/4", dict(input_size=16, num_classes=10, depth=2)
    ref = _torch_model(name, overrides, seed=2)
    model = get_model(name, **overrides)
    params = convert_torch_state_dict(ref.state_dict())
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 16, 16, 4)).astype(np.float32)
    t, y = np.array([3, 800], np.float32), np.array([1, 9])
    w = rng.standard_normal((2, 16, 16, 8)).astype(np.float32)
    out = ref(torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(t), torch.from_numpy(y))
    (out * torch.from_numpy(w.transpose(0, 3, 1, 2))).sum().backward()
    grads_ref = {k: p.grad for k, p in ref.named_parameters()}
    grads_ref["pos_embed"] = ref.pos_embed  # a buffer: the converter checks it, no gradient
    expected = convert_torch_state_dict(grads_ref)
    grads = jax.grad(lambda p: jnp.sum(model.apply({"params": p}, x, t, y) * w))(params)
    flat_ref = dict(jax.tree_util.tree_leaves_with_path(expected))
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        scale = max(np.abs(flat_ref[path]).max(), 1e-3)
        assert np.abs(np.asarray(g) - flat_ref[path]).max() <= 1e-4 * scale, path


def test_recomputed_chains_keep_only_their_inputs():
    k = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(k[0], (2, 64, 32), jnp.bfloat16)
    shift, scale = (0.1 * jax.random.normal(kk, (2, 32), jnp.bfloat16) for kk in k[1:])
    plain = lambda x, a, b: modulate(layer_norm(x), a, b)

    def saved(f, *args):
        _, vjp_fn = jax.vjp(f, *args)
        own = {id(a) for a in args}
        return sum(r.nbytes for r in jax.tree_util.tree_leaves(vjp_fn) if id(r) not in own)

    for ours, ref, args in [(norm_modulate, plain, (x, shift, scale)),
                            (gelu_tanh, lambda h: jax.nn.gelu(h.astype(jnp.float32),
                                                              approximate=True).astype(h.dtype),
                             (x,))]:  # GELU in float32, rounded once
        np.testing.assert_array_equal(ours(*args), ref(*args))
        cot = jnp.ones_like(ref(*args))
        for g, g_ref in zip(jax.vjp(ours, *args)[1](cot), jax.vjp(ref, *args)[1](cot)):
            np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(g_ref, np.float32),
                                       rtol=1e-2, atol=1e-2)  # bf16 inputs
        assert saved(ours, *args) == 0  # nothing beyond the inputs themselves
        assert saved(ref, *args) >= x.nbytes  # the plain chain keeps intermediates


def test_fixed_embeddings_match_the_reference_formulas():
    np.testing.assert_allclose(sincos_2d(64, 5), ref_pos_embed(64, 5), atol=1e-12)
    t = np.array([0.0, 1.0, 250.0, 999.0], np.float32)
    np.testing.assert_allclose(np.asarray(timestep_embedding(jnp.asarray(t), 256)),
                               ref_timestep(torch.from_numpy(t)).numpy(), atol=1e-4)  # float32 ulp at 999 rad ≈ 6e-5


def test_parameter_counts_of_every_variant_match_pytorch():
    for name in [n for n in MODEL_NAMES if n.startswith("DiT-")]:
        model = get_model(name)
        size, patch = name[4:].split("/")
        depth, hidden, heads = SIZES[size]
        with torch.device("meta"):
            ref = TorchDiT(patch_size=int(patch), hidden_size=hidden, depth=depth,
                           num_heads=heads)
        shapes = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
        flax_count = count_params(shapes)
        torch_count = sum(p.numel() for p in ref.parameters())
        assert flax_count + ref.pos_embed.numel() == torch_count, name
    s2 = jax.eval_shape(lambda: init_params(get_model("DiT-S/2"), jax.random.key(0)))
    assert count_params(s2) + 256 * 384 == 32_963_360


def test_label_dropout_uses_the_explicit_rng():
    model = get_model("DiT-S/8", depth=2, input_size=16, num_classes=5, class_dropout_prob=0.5)
    params = init_params(model, jax.random.key(0))
    noise = jax.random.normal(jax.random.key(1), (count_params(params),)) * 0.05
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    params = unravel(flat + noise)  # adaLN and final layer non-zero, so labels matter
    x = jnp.ones((16, 16, 16, 4))
    t = jnp.full((16,), 10.0)
    y = jnp.arange(16) % 5

    def run(seed):
        return np.asarray(model.apply({"params": params}, x, t, y, train=True,
                                      rngs={"dropout": jax.random.key(seed)}))
    a, b, c = run(0), run(0), run(1)
    np.testing.assert_array_equal(a, b)
    keep = np.asarray(model.apply({"params": params}, x, t, y))
    null = np.asarray(model.apply({"params": params}, x, t, y, force_drop=jnp.ones(16, bool)))
    dropped = [np.allclose(a[i], null[i], atol=1e-6) for i in range(16)]
    kept = [np.allclose(a[i], keep[i], atol=1e-6) for i in range(16)]
    assert all(d != k for d, k in zip(dropped, kept)), (dropped, kept)  # dropped xor kept
    assert 0 < sum(dropped) < 16
    assert not np.array_equal(a, c)


def test_bad_inputs_raise_one_clear_error():
    model = get_model("DiT-S/8", depth=1, input_size=16, num_classes=5)
    params = init_params(model, jax.random.key(0))
    x, t, y = jnp.zeros((2, 16, 16, 4)), jnp.zeros((2,)), jnp.array([0, 1])
    cases = [((jnp.zeros((2, 16, 16)), t, y), "x: expected shape"),
             ((jnp.zeros((2, 16, 16, 3)), t, y), "x: expected shape"),
             ((jnp.zeros((2, 8, 8, 4)), t, y), "x: expected shape"),
             ((x, jnp.zeros((3,)), y), "t: expected shape"),
             ((x, t, jnp.array([0, 5])), r"y: labels must be in \[0, 5\)"),
             ((x, t, jnp.array([-1, 0])), "y: labels must be in"),
             ((x, t, jnp.array([0.0, 1.0])), "y: expected int labels")]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            model.apply({"params": params}, *args)
    with pytest.raises(ValueError, match="unknown model name 'DiT-M/2'"):
        get_model("DiT-M/2")
    with pytest.raises(ValueError, match="unknown model name 'DiT-S/3'"):
        get_model("DiT-S/3")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['depht'\]"):
        get_model("DiT-S/2", depht=3)
    for fields, message in [(dict(input_size=9), "input_size 9 is not divisible by patch_size 2"),
                            (dict(num_heads=5), "hidden_size 384 is not divisible by num_heads 5"),
                            (dict(remat="some"), "remat: expected one of")]:
        with pytest.raises(ValueError, match=message):
            init_params(get_model("DiT-S/2", **{"depth": 1, "input_size": 4, **fields}),
                        jax.random.key(0))


def test_auto_attention_is_cudnn_only_on_a_gpu_in_half_precision():
    assert resolve_attn_impl("auto", jnp.bfloat16, backend="gpu") == "cudnn"
    assert resolve_attn_impl("auto", jnp.float16, backend="gpu") == "cudnn"
    assert resolve_attn_impl("auto", jnp.float32, backend="gpu") == "xla"
    assert resolve_attn_impl("auto", jnp.bfloat16, backend="tpu") == "xla"
    assert resolve_attn_impl("auto", jnp.bfloat16, backend="cpu") == "xla"
    assert resolve_attn_impl("cudnn", jnp.float32, backend="cpu") == "cudnn"  # as asked
    with pytest.raises(ValueError, match="attn_impl: expected one of"):
        resolve_attn_impl("flash", jnp.bfloat16)
    # On this CPU "auto" is the XLA kernel: same numbers as attn_impl="xla".
    model = get_model("DiT-S/8", depth=1, input_size=16, num_classes=5)
    params = init_params(model, jax.random.key(0))
    params = jax.tree_util.tree_map(lambda p: p + 0.05, params)
    x, t, y = jnp.ones((2, 16, 16, 4)), jnp.full((2,), 10.0), jnp.array([0, 1])
    out = {impl: model.clone(attn_impl=impl).apply({"params": params}, x, t, y)
           for impl in ("auto", "xla")}
    np.testing.assert_array_equal(out["auto"], out["xla"])


def test_a_name_without_a_size_takes_hidden_depth_and_heads_from_the_fields():
    fields = dict(hidden_size=64, depth=2, num_heads=4)
    model = get_model("DiT3D/4", **fields)
    assert (model.hidden_size, model.depth, model.num_heads, model.patch_size) == (64, 2, 4, 4)
    assert type(model).__name__ == "DiT3D"
    assert get_model("DiT/8", **fields).patch_size == 8
    with pytest.raises(ValueError, match="'DiT3D/4' names no size: .* missing depth, num_heads"):
        get_model("DiT3D/4", hidden_size=64)
    with pytest.raises(ValueError, match="unknown model name 'DiT3D/3'.*FAMILY/PATCH"):
        get_model("DiT3D/3", **fields)
    with pytest.raises(ValueError, match="model.name: ViT/16 is the image ViT backbone alone"):
        check_denoiser("ViT/16", "model.name")
    check_denoiser("ViT3D/16", "model.name")  # a denoiser: no error
