"""load_config_file: a configs/*.py file (with :arg) and its overrides, as train.py's --config
flag gives them: typed, locked, and a misspelt or mistyped override is an error naming it."""
import functools
import os
import textwrap

import pytest

from dit3d_jax.train.config import default_config, load_config_file

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(REPO, "configs", "tiny.py")


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
