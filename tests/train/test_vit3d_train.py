"""A ViT3D trains through the unchanged loop: init_from a converted (exported) ViT, the ViT frozen
with optim.freeze=backbone, the video layers and head learning, the workdir reloading a ViT3D."""
import os

import jax
import numpy as np

from dit3d_jax.models import get_model, init_params
from dit3d_jax.models.export import save_exported
from dit3d_jax.train.checkpoint import load_workdir
from dit3d_jax.train.config import load_config_file
from dit3d_jax.train.loop import train_and_evaluate


TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                    "configs", "tiny.py")


def _flat(tree):
    return {jax.tree_util.keystr(p): np.asarray(v)
            for p, v in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]}


def test_vit3d_trains_from_an_exported_vit_with_the_backbone_frozen(tmp_path):
    config = load_config_file(TINY, {
        "model.name": "ViT3D-Ti/4", "model.kwargs.in_channels": 3, "model.kwargs.input_size": 8,
        "model.kwargs.num_frames": 2, "model.kwargs.depth": 1, "optim.freeze": "backbone",
        "train.num_steps": 2, "train.checkpoint_every": 2, "importance.enabled": False})
    kw = config.model.kwargs
    vit = get_model("ViT-Ti/4", hidden_size=kw.hidden_size, depth=kw.depth,
                    num_heads=kw.num_heads, input_size=kw.input_size)
    vit_params = jax.device_get(init_params(vit, jax.random.key(7)))
    save_exported(str(tmp_path / "vit"), vit, vit_params)
    config.init_from = str(tmp_path / "vit")

    state = train_and_evaluate(config, str(tmp_path / "run"))
    assert int(state.step) == 2
    src, got = _flat(vit_params), _flat(state.params)
    for key, value in src.items():  # the frozen ViT, bit for bit
        np.testing.assert_array_equal(got[key], value, err_msg=key)
    fresh = _flat(init_params(get_model(config.model.name, **kw.to_dict()),
                              jax.random.fold_in(jax.random.key(config.seed), 1)))
    moved = [k for k in set(got) - set(src) if not np.array_equal(got[k], fresh[k])]
    assert any("video_block_0" in k for k in moved) and any("final_layer" in k for k in moved)
    model, _, _ = load_workdir(str(tmp_path / "run"))
    assert type(model).__name__ == "ViT3D" and model.input_size == 8
