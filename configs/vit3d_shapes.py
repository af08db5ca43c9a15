"""ViT3D on the moving-shapes demo: configs/shapes_demo.py with the DiT3D swapped for a ViT3D.

    python train.py --config configs/vit3d_shapes.py --workdir runs/vit3d_demo
    python sample.py --workdir runs/vit3d_demo --heldout --out runs/vit3d_demo/samples.gif
    python bench/caption_accuracy.py --config configs/vit3d_shapes.py --workdir runs/vit3d_demo

Everything but the model is shapes_demo's (data, captions, rectified flow, optimizer, steps,
sampler). Model: ViT3D/4 (no registry size) at the demo DiT3D's width, depth and heads (hidden
128, depth 4, 4 heads, patch 4 on 8 frames of 16×16 RGB), trained from scratch, so the two
compare at about the same compute per step (README, "ViT3D"). To start its ViT from converted torchvision weights
of the same shape: --config.init_from=DIR (convert_torch_weights.py --vit … --input-size 16) and
optionally --config.optim.freeze=backbone.
"""
import importlib.util
import os

from dit3d_jax.train.config import parse_variant


def _shapes_demo_config():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shapes_demo.py")
    spec = importlib.util.spec_from_file_location("shapes_demo_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config(arg: str = ""):
    parse_variant(arg)  # no variants
    config = _shapes_demo_config()
    config.model.name = "ViT3D/4"
    config.model.kwargs.update(dict(hidden_size=128, depth=4, num_heads=4, num_frames=8,
                                    input_size=16, in_channels=3, text_dim=384, num_classes=0,
                                    learn_sigma=False, temporal_every=1))
    return config
