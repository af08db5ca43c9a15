"""A model + params on disk: `DIR/model.json` (family and every module field) and `DIR/params`
(an orbax checkpoint). Written by `convert_torch_weights.py`, read by `sample.py` and by training's
`config.init_from`.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax.numpy as jnp
import orbax.checkpoint as ocp

from dit3d_jax.models import FAMILIES
from dit3d_jax.models.dit import DiT
from dit3d_jax.utils.cli import one_line

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def model_spec(model: DiT) -> dict:
    """JSON-able description: {"family": "DiT3D", "fields": {...}} (dtype stored by name)."""
    fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
              if f.name not in ("parent", "name")}
    fields["dtype"] = jnp.dtype(fields["dtype"]).name
    family = next(k for k, cls in FAMILIES.items() if type(model) is cls)
    return {"family": family, "fields": fields}


def model_from_spec(spec: dict, **overrides: Any) -> DiT:
    """Inverse of `model_spec`; overrides (e.g. dtype, attn_impl) replace stored fields."""
    fields = dict(spec["fields"], **overrides)
    if isinstance(fields.get("dtype"), str):
        fields["dtype"] = DTYPES[fields["dtype"]]
    return FAMILIES[spec["family"]](**fields)


def save_params_and_spec(directory: str, params: Any, spec_name: str, spec: dict) -> None:
    """Writes DIR/params (orbax) then DIR/`spec_name` (the JSON spec, last: a directory without
    it is incomplete); DIR must not hold params yet."""
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(directory, "params"), params)
    checkpointer.wait_until_finished()
    with open(os.path.join(directory, spec_name), "w") as f:
        json.dump(spec, f, indent=2)


def save_exported(directory: str, model: DiT, params: Any) -> None:
    """Writes DIR/params and DIR/model.json; DIR must not hold params yet."""
    save_params_and_spec(directory, params, "model.json", model_spec(model))


def load_exported(directory: str, **overrides: Any) -> tuple[DiT, Any]:
    """Reads what `save_exported` wrote -> (model, params). FileNotFoundError when a file is
    missing, ValueError when the params do not read back (truncated, unreadable files)."""
    directory = os.path.abspath(directory)
    spec_path = os.path.join(directory, "model.json")
    if not os.path.exists(spec_path):
        raise FileNotFoundError(f"checkpoint: {directory} has no model.json (expected the output "
                                f"of convert_torch_weights.py)")
    with open(spec_path) as f:
        model = model_from_spec(json.load(f), **overrides)
    params_dir = os.path.join(directory, "params")
    if not os.path.isdir(params_dir):
        raise FileNotFoundError(f"checkpoint: {directory} has model.json but no params/ (expected "
                                f"the output of convert_torch_weights.py)")
    try:
        params = ocp.StandardCheckpointer().restore(params_dir)
    except Exception as err:  # pylint: disable=broad-except  # truncated, missing, unreadable
        raise ValueError(f"checkpoint: {params_dir} does not restore: {one_line(err)}") from err
    return model, params
