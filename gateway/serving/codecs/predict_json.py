"""The gateway's own `/predict` JSON: nested lists keyed by input name, in and out."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import chain
from typing import Any

import numpy as np

from gateway.serving.codecs.tensors import (
    LIST_ONLY,
    Limits,
    TensorSpec,
    check_shape,
    check_total,
    fmt_shape,
    json_name,
    leaf_types,
    names_list,
    orjson_ready,
    require_supported,
    texts_of,
    to_array,
)
from registry.errors import InvalidInput


def _json_inputs_by_name(inputs: Any, specs: Sequence[TensorSpec]) -> dict[Any, Any]:
    if type(inputs) is list:
        if len(specs) != 1:
            raise InvalidInput(
                f"this model has {len(specs)} inputs ({names_list(s.name for s in specs)}): pass "
                '"inputs" as an object mapping each input name to its nested list'
            )
        return {specs[0].name: inputs}
    if type(inputs) is not dict:
        raise InvalidInput(
            '"inputs" must be an object mapping input names to nested lists, got '
            f"{json_name(inputs)}"
        )
    return inputs


def _check_names(given: Iterable[Any], specs: Sequence[TensorSpec]) -> None:
    expected = [s.name for s in specs]
    given_set = set(given)
    if given_set == set(expected):
        return
    unknown = [n for n in given_set if n not in expected]
    missing = [n for n in expected if n not in given_set]
    problems = []
    if unknown:
        problems.append(f"unknown input {names_list(sorted(map(str, unknown)))}")
    if missing:
        problems.append(f"missing input {names_list(missing)}")
    raise InvalidInput(f"{'; '.join(problems)}; this model's inputs are {names_list(expected)}")


def _nested_dims(value: Any, max_rank: int) -> list[int]:
    """Read a nested list's shape down its first elements (rectangularity is checked later).

    Stops one level past the spec's rank: deeper nesting is already a mismatch, and a
    self-referencing list from a Python caller must not loop forever.
    """
    dims: list[int] = []
    node = value
    while type(node) is list and len(dims) <= max_rank:
        dims.append(len(node))
        if not node:
            break
        node = node[0]
    return dims


def _nested_shape(value: Any, spec: TensorSpec, limits: Limits) -> tuple[tuple[int, ...], int]:
    rank = len(spec.shape)
    if rank and type(value) is not list:
        raise InvalidInput(
            f"input {spec.name!r} must be a nested list of shape {fmt_shape(spec.shape)}, "
            f"got {json_name(value)}"
        )
    dims = _nested_dims(value, rank)
    if len(dims) > rank:
        raise InvalidInput(
            f"input {spec.name!r} expects shape {fmt_shape(spec.shape)}, got "
            f"{fmt_shape(dims)[:-1]}, ...] (too many nested levels)"
        )
    if dims and dims[-1] == 0 and len(dims) < rank:
        raise InvalidInput(
            f"input {spec.name!r} has an empty list (shape {fmt_shape(dims)}); every "
            "dimension needs at least one element"
        )
    shape = tuple(dims)
    return shape, check_shape(spec, shape, limits)


def _flatten_rectangular(value: Any, spec: TensorSpec, shape: tuple[int, ...]) -> list[Any]:
    """Flatten level by level, checking every list at a level has the length the shape says."""
    if not shape:
        return [value]
    level: list[Any] = value
    for size in shape[1:]:
        if len(level) == 1:  # a single row: `_nested_dims` already saw it is a list of `size`
            level = level[0]
            continue
        if set(map(type, level)) != LIST_ONLY or set(map(len, level)) != {size}:
            raise InvalidInput(
                f"input {spec.name!r} is not rectangular: expected every list at that level to "
                f"hold {size} items (shape {fmt_shape(shape)} read from the first elements)"
            )
        level = list(chain.from_iterable(level))
    return level


def decode_json_inputs(inputs: Any, specs: Sequence[TensorSpec],
                       limits: Limits) -> dict[str, np.ndarray]:
    """/predict form: `inputs` is a dict input-name -> nested list, or (only when the model has
    exactly one input) a nested list."""
    by_name = _json_inputs_by_name(inputs, specs)
    if len(by_name) != len(specs) or any(s.name not in by_name for s in specs):
        _check_names(by_name.keys(), specs)
    # Shapes and limits first, for every input, so an oversized request costs no conversion.
    shapes = []
    total = 0
    for spec in specs:
        require_supported(spec)
        shape, count = _nested_shape(by_name[spec.name], spec, limits)
        shapes.append(shape)
        total += count
    check_total(total, limits)
    result: dict[str, np.ndarray] = {}
    for spec, shape in zip(specs, shapes, strict=True):
        leaves = _flatten_rectangular(by_name[spec.name], spec, shape)
        result[spec.name] = to_array(leaves, leaf_types(leaves), spec, shape)
    return result



def outputs_for_json(outputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """Make arrays orjson-serialisable with OPT_SERIALIZE_NUMPY (C-contiguous; convert float16
    to float32, etc.).

    Values are arrays, except 0-d outputs (numpy scalars: orjson refuses 0-d arrays) and
    string outputs (nested lists of str: orjson has no numpy string support).
    """
    result: dict[str, Any] = {}
    for name, value in outputs.items():
        arr = np.asarray(value)
        if arr.dtype.kind in "OUS":
            result[name] = np.array(texts_of(arr), dtype=object).reshape(arr.shape).tolist()
        elif arr.ndim == 0:
            result[name] = orjson_ready(arr.reshape(1))[0]
        else:
            result[name] = orjson_ready(arr)
    return result
