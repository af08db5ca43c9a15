"""The training configuration: every field and its default (configs/*.py start from here), the
parser of a config file's named variants, and a configs/*.py file loaded with overrides,
in-process or from an entry point's command line.

    config = load_config_file("configs/shapes_demo.py:size=gpu", {"train.num_steps": 20})
    argv, overrides = split_overrides(argv)           # an entry point: argparse reads argv
    config = load_config_flags(args.config, overrides)

Kept apart from the step so that the models, diffusion and the pure train step import without
ml_collections (a benchmark on a bare accelerator image needs no extra wheels for them).
"""
from __future__ import annotations

import ast
import os
import types
from typing import Any, Mapping, Optional, Sequence

import ml_collections
from absl import flags
from ml_collections import config_dict, config_flags
from ml_collections.config_flags import config_path

from dit3d_jax.train.sharding import DEFAULT_RULES

# The model size fields of model.kwargs: None takes them from a registry name ("DiT3D-S/2").
SIZE_FIELDS = ("hidden_size", "depth", "num_heads")


class ConfigError(ValueError):
    """The config, or what it points at (data, init_from, the workdir's checkpoints), cannot
    start a run: the user's to fix. train.py reports it as one `error:` line, exit status 2."""


def default_config() -> ml_collections.ConfigDict:
    """Every training field at DiT's defaults for DiT3D-S/2 (AdamW 1e-4, wd 0, EMA 0.9999, 1000
    linear-β steps, learned sigma) on 16×32×32×4 clips with MiniLM captions. Locked: a typo in an
    override is an error."""
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.model = ml_collections.ConfigDict()
    # A registry name FAMILY-SIZE/PATCH ("DiT3D-S/2") leaves the SIZE_FIELDS None (a value would
    # override its size); FAMILY/PATCH ("DiT3D/4") names no size and sets all three.
    c.model.name = "DiT3D-S/2"
    c.model.kwargs = ml_collections.ConfigDict(dict(
        **{field: config_dict.placeholder(int) for field in SIZE_FIELDS},
        num_frames=16, input_size=32, in_channels=4, text_dim=384, num_classes=1000,
        learn_sigma=True, temporal_every=1, frame_embedding=False, attn_impl="auto",
        scan_blocks=False, remat="none",
        # CFG dropout (train only): both conditions together with joint_dropout_prob, else each
        # with its own; the unconditional input gets 0.1 + 0.9·0.1·0.1 = 10.9% of the rows.
        joint_dropout_prob=0.1, class_dropout_prob=0.1, text_dropout_prob=0.1))
    c.compute_dtype = "auto"

    c.objective = ml_collections.ConfigDict(dict(
        name="gaussian", num_timesteps=1000, schedule="linear", predict="eps",
        t_sampling="uniform", ln_mean=0.0, ln_std=1.0))
    c.importance = ml_collections.ConfigDict(dict(enabled=True, history=10, uniform_prob=0.1))
    c.optim = ml_collections.ConfigDict(dict(
        lr=1e-4, weight_decay=0.0, b1=0.9, b2=0.999, warmup_steps=0, grad_clip=0.0,
        accum_steps=1, freeze="none"))
    c.ema_decay = 0.9999

    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
    c.sharding_rules = DEFAULT_RULES

    c.data = ml_collections.ConfigDict(dict(
        name="moving_shapes", config="default", data_dir="", path="", global_batch_size=256,
        text_encoder="minilm", text_max_length=32, worker_count=0, augment=False, seed=0))
    c.train = ml_collections.ConfigDict(dict(
        num_steps=400_000, log_every=100, checkpoint_every=5_000, keep_checkpoints=3))
    c.init_from = ""
    c.distributed = False
    # preview_*: a grid of preview_num samples from fixed prompts (() = the dataset's held-out
    # captions, else its first training captions) and noise, preview_steps sampler steps, every
    # preview_every steps (0 = never) in workdir/previews and TensorBoard (train/preview.py).
    c.sample = ml_collections.ConfigDict(dict(
        sampler="ddpm", steps=250, cfg_scale=4.0, preview_every=0, preview_num=4,
        preview_prompts=(), preview_steps=16))
    c.lock()
    return c


def parse_variant(arg: str, **spec: Any) -> types.SimpleNamespace:
    """The named variant a config file's get_config(arg) builds, big_vision style: `arg` is the
    text after ':' in `--config configs/NAME.py:arg`, comma-separated `key=value` items and bare
    `flag`s, e.g. "size=gpu" or "benchmark".

    spec: every key the file takes, with its default: a tuple of the allowed values (the first
    is the default) or False for a flag (given alone it is True; `flag=false` also works).
        parse_variant("size=gpu", size=("cpu", "gpu"), benchmark=False)
          -> namespace(size="gpu", benchmark=False)
    A key the file does not take, or a value it does not allow, is a ConfigError naming what
    the file takes.
    """
    unsupported = [key for key, default in spec.items()
                   if not (isinstance(default, tuple) or default is False)]
    if unsupported:
        raise TypeError(f"parse_variant: spec {unsupported}: expected a tuple of values or False")
    takes = ", ".join(f"{key}={'|'.join(default)}" if isinstance(default, tuple) else key
                      for key, default in spec.items())
    takes = f"any of: {takes}" if takes else "no argument (the file has one variant)"
    values = {key: default[0] if isinstance(default, tuple) else default
              for key, default in spec.items()}
    for item in (part.strip() for part in arg.split(",")):
        key, equals, value = (part.strip() for part in item.partition("="))
        allowed = spec.get(key)
        if isinstance(allowed, tuple) and value in allowed:
            values[key] = value
        elif allowed is False and (not equals or value.lower() in ("true", "false")):
            values[key] = value.lower() != "false"
        elif item:
            raise ConfigError(f"variant argument {item!r}: expected {takes}")
    return types.SimpleNamespace(**values)


def load_config_file(path: str, overrides: Mapping[str, Any] | Sequence[str] = ()
                     ) -> ml_collections.ConfigDict:
    """The locked config that `train.py --config=path --config.NAME=VALUE ...` trains, built
    in-process (a notebook, a test) by the same ml_collections config_flags code.

    path: "configs/NAME.py" or "configs/NAME.py:arg" (a named variant: arg is passed to
      get_config(arg), e.g. "configs/shapes_demo.py:size=gpu").
    overrides: {"model.kwargs.depth": 1} (Python values) or ["model.kwargs.depth=1"] (strings,
      parsed by the field's type as on the command line), applied in order.
    Raises ConfigError for an argument the file does not take, an override naming a field the
    config does not have, or a value of another type (an int for a float field is fine; a bool
    for a number is not); FileNotFoundError when there is no such file.
    """
    if isinstance(overrides, str):
        raise TypeError(f"load_config_file: overrides: expected a mapping or a list of "
                        f"NAME=VALUE strings, got the string {overrides!r}")
    file = path.split(":", 1)[0]
    if not os.path.isfile(file):
        raise FileNotFoundError(f"load_config_file: path {path!r}: no file {file!r}")
    try:
        config = _read_config_file(path)
    except ConfigError as err:
        raise ConfigError(f"config {path!r}: {err}") from None
    return _override(config, overrides)


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(argv without its config overrides, the overrides as "NAME=VALUE" strings in order): an
    entry point's `--config.NAME=VALUE` and `--config.NAME VALUE` arguments, which argparse
    cannot declare (the names are the config's). ConfigError for a trailing `--config.NAME`
    without its value."""
    rest, overrides = [], []
    args = iter(argv)
    for arg in args:
        if not arg.startswith("--config."):
            rest.append(arg)
            continue
        name, equals, value = arg[len("--config."):].partition("=")
        if not equals:
            value = next(args, None)
            if value is None:
                raise ConfigError(f"{arg}: expected a value (--config.NAME=VALUE)")
        overrides.append(f"{name}={value}")
    return rest, overrides


def parse_config_args(parser, argv: Sequence[str]) -> tuple[Any, ml_collections.ConfigDict]:
    """An entry point's command line: (parser.parse_args of argv without its `--config.NAME=VALUE`
    overrides, the config its `--config` names with those overrides applied). A ConfigError
    (`load_config_flags`) becomes the UsageError that ends the run in one line, exit status 2."""
    from dit3d_jax.utils.cli import UsageError  # pylint: disable=import-outside-toplevel
    try:
        argv, overrides = split_overrides(argv)
        args = parser.parse_args(argv)
        return args, load_config_flags(args.config, overrides)
    except ConfigError as err:
        raise UsageError(str(err)) from err


def load_config_flags(path: str, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    """load_config_file(path, overrides) for an entry point's `--config path` and its
    `--config.NAME=VALUE` overrides (`split_overrides`), with errors worded for the command
    line: a ConfigError naming the flag for a missing file, a variant the file does not take,
    an override naming no field of the config (with ml_collections' "Did you mean") or a value
    of another type."""
    file = path.split(":", 1)[0]
    if not os.path.isfile(file):
        raise ConfigError(f"--config {path!r}: expected a configs/NAME.py file, found no file "
                          f"{file!r}")
    try:
        config = _read_config_file(path)
    except ConfigError as err:
        raise ConfigError(f"--config {path!r}: {err}") from None
    for item in overrides:
        name = item.partition("=")[0]
        try:
            config_path.get_type(name, config)
        except (KeyError, AttributeError) as err:
            raise ConfigError(f"a --config override names no field of the config "
                              f"(--config.{item}): {unknown_field_message(err)}") from None
    return _override(config, overrides)


def _read_config_file(path: str) -> ml_collections.ConfigDict:
    """get_config(arg) of "configs/NAME.py[:arg]", locked, read by ml_collections' config_flags
    code; ConfigError (the cause alone) for an argument the file does not take."""
    try:
        config = _parse_config_flag(config_flags.DEFINE_config_file, None, [f"--config={path}"])
    except flags.Error as err:
        cause = config_error_in(err)
        if cause is None:
            raise
        raise cause from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise TypeError(f"load_config_file: path {path!r}: get_config() returned "
                        f"{type(config).__name__}, expected an ml_collections.ConfigDict")
    return config


def _override(config: ml_collections.ConfigDict,
              overrides: Mapping[str, Any] | Sequence[str]) -> ml_collections.ConfigDict:
    """config with `overrides` (load_config_file's) applied in order."""
    if isinstance(overrides, Mapping):
        for name, value in overrides.items():
            field_type = _field_type(config, name)
            if isinstance(value, bool) and field_type in (int, float):
                raise ConfigError(f"config override {name!r}: expected {field_type.__name__}, "
                                  f"got the bool {value!r}")
            try:
                config_path.set_value(name, config, value)
            except TypeError as err:
                raise ConfigError(f"config override {name!r}: {err}") from None
        return config

    args = []
    for item in overrides:
        name, equals, _ = str(item).partition("=")
        if not equals:
            raise ConfigError(f"config override {item!r}: expected NAME=VALUE")
        _field_type(config, name)
        args.append(f"--config.{item}")
    try:
        return _parse_config_flag(config_flags.DEFINE_config_dict, config, args)
    except flags.Error as err:  # names the flag: "flag --config.NAME=VALUE: ..."
        raise ConfigError(f"config override: {err}") from None


def config_error_in(err: Optional[BaseException]) -> Optional[ConfigError]:
    """The ConfigError (e.g. from parse_variant) that a flag-parsing error wraps, or None.
    config_flags re-raises what get_config() raised as an error of the same type whose message
    is a traceback: the first ConfigError raised, the innermost one, is the one to report."""
    found = None
    while err is not None:
        found = err if isinstance(err, ConfigError) else found
        err = err.__cause__ or err.__context__
    return found


def unknown_field_message(err: KeyError | AttributeError) -> str:
    """The error ml_collections raises for a field a config lacks, as one readable line (its
    KeyError messages arrive repr()-wrapped, at times inside an AttributeError, and put the
    'Did you mean' hint on a line of its own)."""
    while err.args and isinstance(err.args[0], (KeyError, AttributeError)):
        err = err.args[0]
    message = str(err.args[0] if err.args else err)
    while len(message) > 1 and message[0] == message[-1] and message[0] in "'\"":
        message = ast.literal_eval(message)
    return "; ".join(message.splitlines())


def _parse_config_flag(define, default, args: list[str]):
    """FLAGS.config after parsing `args` with a --config flag made by `define` (config_flags'
    DEFINE_config_file or DEFINE_config_dict) on flags of its own, not absl's global ones."""
    argv = ["load_config_file", *args]
    flag_values = flags.FlagValues()
    define("config", default, flag_values=flag_values, lock_config=True, sys_argv=argv)
    flag_values(argv)
    return flag_values.config


def _field_type(config: ml_collections.ConfigDict, name: str) -> type:
    """The type of config field `name` ("a.b.c"); a ConfigError naming it when there is none."""
    try:
        return config_path.get_type(name, config)
    except (KeyError, AttributeError) as err:
        raise ConfigError(f"config override {name!r}: the config has no such field: "
                          f"{unknown_field_message(err)}") from None
