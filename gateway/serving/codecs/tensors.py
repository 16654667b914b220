"""Tensors checked against a model version's signature: the datatypes, the limits, and the
shape and value checks that both request forms share; no Flask here (see `gateway.serving.codecs`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from operator import countOf
from typing import Any

import numpy as np

from registry.errors import InvalidInput

V2_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "BOOL": np.dtype(np.bool_),
}
NUMPY_TO_V2: dict[np.dtype[Any], str] = {dtype: name for name, dtype in V2_TO_NUMPY.items()}

# Datatypes the registry can record but the codecs cannot turn into arrays for onnxruntime.
_UNSUPPORTED = {
    "BYTES": "BYTES tensors are not supported as inputs by this gateway",
    "BF16": "BF16 tensors are not supported as inputs by this gateway (numpy has no bfloat16)",
}

# How each datatype's values are written in JSON: floats, integers or booleans.
_FLOAT, _INT, _BOOL = "float", "integer", "boolean"
_KIND = {name: _FLOAT if dt.kind == "f" else _BOOL if dt.kind == "b" else _INT
         for name, dt in V2_TO_NUMPY.items()}

# Python leaf types as JSON names; the fast path only ever meets the first few.
_LEAF_NAMES: dict[type, str] = {
    float: "number", int: "number", bool: "boolean", str: "string", type(None): "null",
    list: "array", dict: "object",
}
_NUMBER_TYPES = frozenset({int, float})
_BOOL_TYPES = frozenset({bool})
LIST_ONLY = {list}
# Largest finite magnitude per float datatype.
_FLOAT_MAX = {name: float(np.finfo(dt).max) for name, dt in V2_TO_NUMPY.items() if dt.kind == "f"}
MAX_DATA_NESTING = 32
MAX_ID_LENGTH = 128


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model version, as the registry recorded it."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> TensorSpec:
        return cls(
            name=str(record["name"]),
            datatype=str(record["datatype"]),
            shape=tuple(int(d) for d in record["shape"]),
        )

    @property
    def dtype(self) -> np.dtype[Any]:
        """The numpy dtype; raises InvalidInput for datatypes a caller cannot feed us."""
        dtype = V2_TO_NUMPY.get(self.datatype)
        if dtype is None:
            reason = _UNSUPPORTED.get(self.datatype, f"datatype {self.datatype} is not supported")
            raise InvalidInput(f"input {self.name!r}: {reason}")
        return dtype


@dataclass(frozen=True)
class Limits:
    """Caps that keep one request from monopolising a worker's memory and CPU."""

    max_batch: int = 1024
    max_elements: int = 4_000_000


# --------------------------------------------------------------------------- messages


def fmt_shape(dims: Iterable[int]) -> str:
    return "[" + ", ".join(map(str, dims)) + "]"


def json_name(value: Any) -> str:
    """Name a value's JSON type, because callers think in JSON, not Python."""
    name = _LEAF_NAMES.get(type(value))
    if name is not None:
        return "a number" if name == "number" else f"an {name}" if name[0] in "ao" else f"a {name}"
    return f"a {type(value).__name__}"


def names_list(names: Iterable[Any]) -> str:
    return ", ".join(repr(n) for n in names)


# --------------------------------------------------------------------------- shapes


def check_shape(spec: TensorSpec, dims: Sequence[int], limits: Limits) -> int:
    """Refuse a shape the model cannot take; return its element count for the request cap."""
    want = spec.shape
    if len(dims) != len(want):
        raise _shape_error(spec, dims)
    for got, fixed in zip(dims, want, strict=True):
        if got < 1 or (got != fixed and fixed >= 0):
            raise _shape_error(spec, dims)
    if dims and dims[0] > limits.max_batch:
        raise InvalidInput(
            f"input {spec.name!r} has a batch of {dims[0]} rows; the limit is {limits.max_batch}"
        )
    count = math.prod(dims)
    if count > limits.max_elements:
        raise InvalidInput(
            f"input {spec.name!r} has {count} elements; the limit per request is "
            f"{limits.max_elements}"
        )
    return count


def _shape_error(spec: TensorSpec, dims: Sequence[int]) -> InvalidInput:
    """A mismatch with the signature if there is one, else the empty dimension."""
    want = spec.shape
    if len(dims) != len(want) or any(f >= 0 and g != f for g, f in zip(dims, want, strict=True)):
        return InvalidInput(
            f"input {spec.name!r} expects shape {fmt_shape(want)}, got {fmt_shape(dims)}"
        )
    return InvalidInput(
        f"input {spec.name!r} has an empty dimension (shape {fmt_shape(dims)}); "
        "every dimension needs at least one element"
    )


def check_total(total: int, limits: Limits) -> None:
    if total > limits.max_elements:
        raise InvalidInput(
            f"the request has {total} elements across its inputs; the limit is "
            f"{limits.max_elements}"
        )


# --------------------------------------------------------------------------- values


def within_range(flat: np.ndarray, datatype: str) -> bool:
    """Whether every element is finite and no larger in magnitude than `datatype` can hold.

    abs + max: NaN propagates through max and compares False. Cheaper-looking tricks (a dot
    product, a sum) overflow on huge finite values and make numpy warn, and OpenBLAS hands
    big dot products to its thread pool, which costs milliseconds on a busy host.
    """
    return bool(np.abs(flat).max() <= _FLOAT_MAX[datatype])


def leaf_types(leaves: list[Any]) -> set[type]:
    """The distinct leaf types; counting the first one's type skips hashing in the usual case."""
    if leaves:
        first = type(leaves[0])
        if countOf(map(type, leaves), first) == len(leaves):
            return {first}
    return set(map(type, leaves))


def _leaf_kinds(types: set[type]) -> set[str]:
    """Classify leaf types, also numpy scalars or subclasses a Python caller might pass."""
    kinds = set()
    for t in types:  # over the distinct types, not the elements
        if issubclass(t, bool | np.bool_):
            kinds.add(_BOOL)
        elif issubclass(t, int | np.integer):
            kinds.add(_INT)
        elif issubclass(t, float | np.floating):
            kinds.add(_FLOAT)
        else:
            kinds.add(_LEAF_NAMES.get(t, t.__name__))
    return kinds


def _bad_leaves(spec: TensorSpec, kinds: set[str]) -> InvalidInput:
    label = f"input {spec.name!r} ({spec.datatype})"
    if "array" in kinds:
        return InvalidInput(
            f"{label} is not rectangular: its nested lists are ragged or nested deeper than "
            f"shape {fmt_shape(spec.shape)}"
        )
    if _KIND[spec.datatype] == _BOOL:
        return InvalidInput(f"{label} accepts only true/false, got {_kind_list(kinds - {_BOOL})}")
    if "string" in kinds:
        return InvalidInput(f"{label} must hold numbers, got a string (write 0.5, not \"0.5\")")
    if _BOOL in kinds:
        return InvalidInput(
            f"{label} must hold numbers, got a boolean (true/false is only for BOOL inputs)"
        )
    return InvalidInput(
        f"{label} must hold numbers, got {_kind_list(kinds - {_INT, _FLOAT})}"
    )


def _kind_list(kinds: set[str]) -> str:
    return " and ".join(sorted(kinds)) or "something else"


def to_array(leaves: list[Any], types: set[type], spec: TensorSpec,
              shape: tuple[int, ...]) -> np.ndarray:
    """Convert flat JSON leaves to the spec's dtype, refusing anything numpy would coerce."""
    kind = _KIND.get(spec.datatype)
    dtype = spec.dtype  # raises for BYTES/BF16
    if kind == _BOOL:
        if not types <= _BOOL_TYPES and _leaf_kinds(types) != {_BOOL}:
            raise _bad_leaves(spec, _leaf_kinds(types))
        return np.array(leaves, dtype=dtype).reshape(shape)
    kinds: set[str] | None = None
    if not types <= _NUMBER_TYPES:
        kinds = _leaf_kinds(types)
        if not kinds <= {_INT, _FLOAT}:
            raise _bad_leaves(spec, kinds)
    if kind == _FLOAT:
        return _to_float_array(leaves, spec, dtype).reshape(shape)
    has_floats = float in types if kinds is None else _FLOAT in kinds
    return _to_int_array(leaves, spec, dtype, has_floats).reshape(shape)


def _to_float_array(leaves: list[Any], spec: TensorSpec, dtype: np.dtype[Any]) -> np.ndarray:
    """Convert through float64 and range-check before narrowing: a cast that overflows would
    only warn (or need a costly np.errstate), and 1e39 must be refused for FP32, not become inf.
    """
    try:
        wide = np.array(leaves, dtype=np.float64)
    except (OverflowError, ValueError, TypeError):
        wide = None
    if wide is None or not within_range(wide, spec.datatype):
        raise InvalidInput(
            f"input {spec.name!r} ({spec.datatype}) holds a value that is not a finite "
            f"{spec.datatype} number (magnitude above {_FLOAT_MAX[spec.datatype]:.6g}, "
            "infinite or NaN)"
        )
    return wide if dtype.itemsize == 8 else wide.astype(dtype)


def _to_int_array(leaves: list[Any], spec: TensorSpec, dtype: np.dtype[Any],
                  has_floats: bool) -> np.ndarray:
    """numpy range-checks Python numbers itself, but truncates 1.5 silently: compare to catch it."""
    try:
        arr = np.array(leaves, dtype=dtype)
        integral = not has_floats or bool(
            (np.array(leaves, dtype=np.float64) == arr.astype(np.float64)).all()
        )
    except (OverflowError, ValueError, TypeError):
        info = np.iinfo(dtype)
        raise InvalidInput(
            f"input {spec.name!r} ({spec.datatype}) takes integers in [{info.min}, {info.max}]; "
            "a value is out of that range"
        ) from None
    if not integral:
        raise InvalidInput(
            f"input {spec.name!r} ({spec.datatype}) takes integers; a value has a fractional part"
        )
    return arr





def require_supported(spec: TensorSpec) -> None:
    """Refuse BYTES/BF16 inputs before looking at their values (the dtype lookup raises)."""
    spec.dtype  # noqa: B018



def texts_of(arr: np.ndarray) -> list[str]:
    """String outputs are rare and small (labels): a Python loop is acceptable here only."""
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
            for v in arr.ravel().tolist()]


def orjson_ready(arr: np.ndarray) -> np.ndarray:
    """orjson serialises only native-endian, C-contiguous arrays of plain numeric types."""
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if arr.dtype == np.float16:  # older orjson releases lack float16
        arr = arr.astype(np.float32)
    return np.ascontiguousarray(arr)
