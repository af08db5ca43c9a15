"""load_config_file: a configs/*.py file (with :arg) and its overrides, as train.py's --config
flag gives them: typed, locked, and a misspelt or mistyped override is an error naming it. Every
shipped config and each of its named variants (parse_variant) loads, builds its model and refuses
an override of a field it lacks the same way."""
import functools
import glob
import os
import textwrap

import pytest

from dit3d_jax.models import MODEL_NAMES
from dit3d_jax.train.config import (SIZE_FIELDS, ConfigError, default_config, load_config_file,
                                    load_config_flags, parse_variant, split_overrides)
from dit3d_jax.train.loop import model_from_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(REPO, "configs", "tiny.py")
# Every configs/*.py file and the variants its get_config(arg) names ("" = no argument).
VARIANTS = {"tiny.py": [""], "shapes_demo.py": ["", "size=cpu", "size=gpu"],
            "vit3d_shapes.py": [""], "vit3d_b16.py": [""], "dit3d_s2.py": ["", "benchmark"],
            "dit_s2.py": ["", "benchmark"]}
SHIPPED = [os.path.join(REPO, "configs", name) + (f":{arg}" if arg else "")
           for name, args in VARIANTS.items() for arg in args]


@pytest.fixture
def variant_file(tmp_path):
    """A config file whose get_config(arg) picks the input size by name."""
    path = tmp_path / "variants.py"
    path.write_text(textwrap.dedent("""
        from dit3d_jax.train.config import default_config

        def get_config(arg="small"):
            config = default_config()
            config.model.kwargs.input_size = {"small": 8, "big": 64}[arg]
            return config
    """))
    return str(path)


def test_loads_a_file_and_passes_the_arg_to_get_config(variant_file):
    assert load_config_file(variant_file).model.kwargs.input_size == 8
    assert load_config_file(variant_file + ":big").model.kwargs.input_size == 64
    tiny = load_config_file(TINY)
    assert tiny.model.kwargs.hidden_size == 64 and tiny.data.name == "random"
    assert tiny.to_dict().keys() == default_config().to_dict().keys()


@pytest.mark.parametrize("form", ["mapping", "strings"])
def test_overrides_are_typed_and_nested(form):
    values = {"seed": 7, "optim.lr": 3e-4, "optim.b1": 1, "data.augment": True,
              "data.data_dir": "/tmp/a=b", "model.kwargs.depth": 1,
              "model.kwargs.learn_sigma": False}
    overrides = values if form == "mapping" else [
        f"{name}={str(value).lower() if isinstance(value, bool) else value}"
        for name, value in values.items()]
    config = load_config_file(TINY, overrides)
    got = {name: functools.reduce(getattr, name.split("."), config) for name in values}
    assert got == values
    assert {name: type(value) for name, value in got.items()} == {
        "seed": int, "optim.lr": float, "optim.b1": float, "data.augment": bool,
        "data.data_dir": str, "model.kwargs.depth": int, "model.kwargs.learn_sigma": bool}
    assert config.train.num_steps == 6  # untouched fields keep the file's values


@pytest.mark.parametrize("overrides,match", [
    ({"trian.num_steps": 2}, r"'trian.num_steps'.*no such field.*Did you mean \"train\""),
    (["trian.num_steps=2"], r"'trian.num_steps'.*no such field.*Did you mean \"train\""),
    ({"model.kwargs.dpth": 1}, r"'model.kwargs.dpth'.*no such field.*\"depth\""),
    (["train.nm=2"], r"'train.nm'.*no such field"),
])
def test_a_misspelt_override_is_an_error_naming_it(overrides, match):
    with pytest.raises(ValueError, match=match):
        load_config_file(TINY, overrides)


@pytest.mark.parametrize("overrides,match", [
    ({"train.num_steps": "2"}, r"'train.num_steps'.*str"),
    ({"train.num_steps": 2.5}, r"'train.num_steps'.*float"),
    ({"train.num_steps": True}, r"'train.num_steps': expected int, got the bool True"),
    ({"data.config": 3}, r"'data.config'.*int"),
    (["train.num_steps=abc"], r"--config.train.num_steps=abc: invalid literal for int"),
    (["optim.lr=fast"], r"--config.optim.lr=fast"),
    (["data.augment=maybe"], r"--config.data.augment=maybe"),
    (["train.num_steps"], r"'train.num_steps': expected NAME=VALUE"),
])
def test_a_value_of_the_wrong_type_is_an_error_naming_the_field(overrides, match):
    with pytest.raises(ValueError, match=match):
        load_config_file(TINY, overrides)


def test_the_config_comes_back_locked():
    config = load_config_file(TINY, {"train.num_steps": 2})
    assert config.is_locked
    with pytest.raises(AttributeError):
        config.train.num_stpes = 3
    with pytest.raises(AttributeError):
        config.new_section = 1


def test_a_missing_file_or_a_bare_string_of_overrides_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.py"):
        load_config_file(str(tmp_path / "nope.py"))
    with pytest.raises(TypeError, match="overrides: expected a mapping or a list"):
        load_config_file(TINY, "train.num_steps=2")


def test_parse_variant_reads_key_value_items_and_flags():
    spec = dict(size=("cpu", "gpu"), benchmark=False)
    assert vars(parse_variant("", **spec)) == {"size": "cpu", "benchmark": False}
    assert vars(parse_variant("size=gpu", **spec)) == {"size": "gpu", "benchmark": False}
    assert vars(parse_variant("benchmark, size=gpu", **spec)) == {"size": "gpu", "benchmark": True}
    assert parse_variant("benchmark=false", **spec).benchmark is False
    for arg, bad in [("size=tpu", "size=tpu"), ("size", "size"), ("benchmark=maybe", "benchmark="),
                     ("size=gpu,sise=cpu", "sise=cpu")]:
        with pytest.raises(ConfigError, match=f"variant argument '{bad}.*expected any of: "
                                              f"size=cpu\\|gpu, benchmark"):
            parse_variant(arg, **spec)
    with pytest.raises(ConfigError, match="'x': expected no argument"):
        parse_variant("x")


def test_every_config_lists_its_variants_here():
    assert sorted(VARIANTS) == sorted(os.path.basename(p)
                                      for p in glob.glob(os.path.join(REPO, "configs", "*.py")))


def _fields(config, prefix=""):
    """{"a.b": value} of every leaf field (FieldReferences kept, so None fields keep a type)."""
    out = {}
    for name, value in config.items(preserve_field_references=True):
        if hasattr(value, "items"):
            out.update(_fields(value, f"{prefix}{name}."))
        else:
            out[prefix + name] = value
    return out


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: os.path.basename(p))
def test_every_shipped_variant_loads_with_the_default_fields_and_builds_its_model(path):
    config = load_config_file(path)
    assert config.is_locked
    # No config adds a field: each is one of default_config()'s, of the same type.
    defaults = _fields(default_config())
    fields = _fields(config)
    assert set(fields) <= set(defaults)
    for name, field in fields.items():
        assert config_type(field) == config_type(defaults[name]), name
    # A registry name (with a size) leaves the size fields None; a FAMILY/PATCH name sets them.
    kwargs = config.model.kwargs
    sized = config.model.name in MODEL_NAMES
    assert [kwargs[f] is None for f in SIZE_FIELDS] == [sized] * 3, config.model.name
    model = model_from_config(config)
    if not sized:
        assert [getattr(model, f) for f in SIZE_FIELDS] == [kwargs[f] for f in SIZE_FIELDS]


def config_type(field):
    """The type ml_collections checks an override of `field` against."""
    return field.get_type() if hasattr(field, "get_type") else type(field)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: os.path.basename(p))
def test_an_override_of_a_missing_field_is_one_config_error_in_every_variant(path):
    for overrides in ({"model.kwargs.hiden_size": 64}, ["model.kwargs.hiden_size=64"],
                      {"model.size": 1}, ["trian.num_steps=2"]):
        name = next(iter(overrides)).split("=")[0]
        with pytest.raises(ConfigError, match=f"config override '{name}': the config has no "
                                              f"such field"):
            load_config_file(path, overrides)
    with pytest.raises(ConfigError, match="'model.kwargs.depth'.* to type <class 'int'>"):
        load_config_file(path, {"model.kwargs.depth": "deep"})  # typed though None
    file = path.split(":")[0]
    with pytest.raises(ConfigError, match=f"config '{file}:nope=1': variant argument 'nope=1'"):
        load_config_file(f"{file}:nope=1")


def test_shapes_demo_size_gpu_is_the_full_size_recipe():
    """The variant is the CPU demo with these flags: full-size clips, DiT3D-S/2, its own schedule."""
    flags = ["data.config=default", "model.kwargs.num_frames=16", "model.kwargs.input_size=32",
             "model.name=DiT3D-S/2", "model.kwargs.hidden_size=384", "model.kwargs.depth=12",
             "model.kwargs.num_heads=6", "data.global_batch_size=64", "train.num_steps=20000",
             "optim.lr=1e-3", "optim.warmup_steps=500", "train.checkpoint_every=2000",
             "sample.preview_every=1000"]
    demo = os.path.join(REPO, "configs", "shapes_demo.py")
    flagged, variant = load_config_file(demo, flags), load_config_file(demo + ":size=gpu")
    fields = [config.to_dict() for config in (flagged, variant)]
    for config_fields in fields:  # the flags set the size; the variant takes DiT3D-S/2's
        for name in SIZE_FIELDS:
            del config_fields["model"]["kwargs"][name]
    assert fields[0] == fields[1]
    a, b = model_from_config(flagged), model_from_config(variant)
    assert {f: getattr(a, f) for f in a.__dataclass_fields__ if f not in ("parent", "name")} == {
        f: getattr(b, f) for f in b.__dataclass_fields__ if f not in ("parent", "name")}
    assert load_config_file(demo + ":size=cpu").to_dict() == load_config_file(demo).to_dict()


def test_command_line_overrides_take_both_forms_and_load_as_in_process():
    argv = ["--workdir", "w", "--config.train.num_steps", "3", "--config.seed=2", "--verbose"]
    rest, overrides = split_overrides(argv)
    assert rest == ["--workdir", "w", "--verbose"]
    assert overrides == ["train.num_steps=3", "seed=2"]
    assert load_config_flags(TINY, overrides) == load_config_file(TINY, overrides)
    with pytest.raises(ConfigError, match=r"^--config.seed: expected a value"):
        split_overrides(["--config.seed"])
    with pytest.raises(ConfigError, match=r"^a --config override names no field .*\(--config."
                                          r"trian=1\): .*Did you mean \"train\""):
        load_config_flags(TINY, ["trian=1"])
    with pytest.raises(ConfigError, match=r"^--config 'nope.py': expected a configs/NAME.py"):
        load_config_flags("nope.py", [])
