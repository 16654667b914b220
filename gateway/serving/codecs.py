"""Wire payloads <-> numpy arrays, checked against a model version's recorded signature.

Two request forms come in: the gateway's own `/predict` JSON (nested lists keyed by input name)
and the Open Inference Protocol (KServe V2 / Triton) with its binary tensor data extension. Both
end up as C-contiguous arrays of exactly the dtype the model declares, or as `InvalidInput` with
a message a person can act on; nothing else may escape, whatever the caller sends.

No Flask here: the HTTP layer hands over parsed JSON or raw bytes and gets arrays back, so the
codecs can be tested (and fuzzed) without a server. Element-wise work is left to numpy and
C-level builtins (`set(map(type, ...))`, `itertools.chain`), never to Python loops, because the
codecs sit on the hot path of every inference request.
"""

from __future__ import annotations

import math
import reprlib
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import chain
from operator import countOf
from typing import Any

import numpy as np
import orjson

from registry.errors import GatewayError, InvalidInput

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
_LIST_ONLY = {list}
# Largest finite magnitude per float datatype.
_FLOAT_MAX = {name: float(np.finfo(dt).max) for name, dt in V2_TO_NUMPY.items() if dt.kind == "f"}
_MAX_DATA_NESTING = 32
_MAX_ID_LENGTH = 128


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


@dataclass
class RequestedOutput:
    name: str
    binary: bool


@dataclass
class V2Request:
    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[RequestedOutput] | None
    binary_output_default: bool
    parameters: dict[str, Any]


# --------------------------------------------------------------------------- messages


def _fmt_shape(dims: Iterable[int]) -> str:
    return "[" + ", ".join(map(str, dims)) + "]"


def _json_name(value: Any) -> str:
    """Name a value's JSON type, because callers think in JSON, not Python."""
    name = _LEAF_NAMES.get(type(value))
    if name is not None:
        return "a number" if name == "number" else f"an {name}" if name[0] in "ao" else f"a {name}"
    return f"a {type(value).__name__}"


def _names(names: Iterable[Any]) -> str:
    return ", ".join(repr(n) for n in names)


# --------------------------------------------------------------------------- shapes


def _check_shape(spec: TensorSpec, dims: Sequence[int], limits: Limits) -> int:
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
            f"input {spec.name!r} expects shape {_fmt_shape(want)}, got {_fmt_shape(dims)}"
        )
    return InvalidInput(
        f"input {spec.name!r} has an empty dimension (shape {_fmt_shape(dims)}); "
        "every dimension needs at least one element"
    )


def _check_total(total: int, limits: Limits) -> None:
    if total > limits.max_elements:
        raise InvalidInput(
            f"the request has {total} elements across its inputs; the limit is "
            f"{limits.max_elements}"
        )


# --------------------------------------------------------------------------- values


def _within(flat: np.ndarray, datatype: str) -> bool:
    """Whether every element is finite and no larger in magnitude than `datatype` can hold.

    abs + max: NaN propagates through max and compares False. Cheaper-looking tricks (a dot
    product, a sum) overflow on huge finite values and make numpy warn, and OpenBLAS hands
    big dot products to its thread pool, which costs milliseconds on a busy host.
    """
    return bool(np.abs(flat).max() <= _FLOAT_MAX[datatype])


def _leaf_types(leaves: list[Any]) -> set[type]:
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
            f"shape {_fmt_shape(spec.shape)}"
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


def _to_array(leaves: list[Any], types: set[type], spec: TensorSpec,
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
    if wide is None or not _within(wide, spec.datatype):
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


# --------------------------------------------------------------------------- /predict form


def _require_supported(spec: TensorSpec) -> None:
    """Refuse BYTES/BF16 inputs before looking at their values (the dtype lookup raises)."""
    spec.dtype  # noqa: B018


def _json_inputs_by_name(inputs: Any, specs: Sequence[TensorSpec]) -> dict[Any, Any]:
    if type(inputs) is list:
        if len(specs) != 1:
            raise InvalidInput(
                f"this model has {len(specs)} inputs ({_names(s.name for s in specs)}): pass "
                '"inputs" as an object mapping each input name to its nested list'
            )
        return {specs[0].name: inputs}
    if type(inputs) is not dict:
        raise InvalidInput(
            '"inputs" must be an object mapping input names to nested lists, got '
            f"{_json_name(inputs)}"
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
        problems.append(f"unknown input {_names(sorted(map(str, unknown)))}")
    if missing:
        problems.append(f"missing input {_names(missing)}")
    raise InvalidInput(f"{'; '.join(problems)}; this model's inputs are {_names(expected)}")


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
            f"input {spec.name!r} must be a nested list of shape {_fmt_shape(spec.shape)}, "
            f"got {_json_name(value)}"
        )
    dims = _nested_dims(value, rank)
    if len(dims) > rank:
        raise InvalidInput(
            f"input {spec.name!r} expects shape {_fmt_shape(spec.shape)}, got "
            f"{_fmt_shape(dims)[:-1]}, ...] (too many nested levels)"
        )
    if dims and dims[-1] == 0 and len(dims) < rank:
        raise InvalidInput(
            f"input {spec.name!r} has an empty list (shape {_fmt_shape(dims)}); every "
            "dimension needs at least one element"
        )
    shape = tuple(dims)
    return shape, _check_shape(spec, shape, limits)


def _flatten_rectangular(value: Any, spec: TensorSpec, shape: tuple[int, ...]) -> list[Any]:
    """Flatten level by level, checking every list at a level has the length the shape says."""
    if not shape:
        return [value]
    level: list[Any] = value
    for size in shape[1:]:
        if len(level) == 1:  # a single row: `_nested_dims` already saw it is a list of `size`
            level = level[0]
            continue
        if set(map(type, level)) != _LIST_ONLY or set(map(len, level)) != {size}:
            raise InvalidInput(
                f"input {spec.name!r} is not rectangular: expected every list at that level to "
                f"hold {size} items (shape {_fmt_shape(shape)} read from the first elements)"
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
        _require_supported(spec)
        shape, count = _nested_shape(by_name[spec.name], spec, limits)
        shapes.append(shape)
        total += count
    _check_total(total, limits)
    result: dict[str, np.ndarray] = {}
    for spec, shape in zip(specs, shapes, strict=True):
        leaves = _flatten_rectangular(by_name[spec.name], spec, shape)
        result[spec.name] = _to_array(leaves, _leaf_types(leaves), spec, shape)
    return result


# --------------------------------------------------------------------------- V2 request


def _split_body(body: Any, header_length: Any) -> tuple[memoryview, memoryview | None]:
    """Split at Inference-Header-Content-Length without copying the binary section."""
    if not isinstance(body, bytes | bytearray | memoryview):
        raise InvalidInput("the request body must be bytes")
    view = memoryview(body)
    if view.ndim != 1 or view.itemsize != 1:
        view = memoryview(view.tobytes())
    if header_length is None:
        return view, None
    if type(header_length) is not int or not 0 < header_length <= len(view):
        raise InvalidInput(
            f"Inference-Header-Content-Length is {header_length!r}, but it must be between 1 and "
            f"the body size ({len(view)} bytes)"
        )
    return view[:header_length], view[header_length:]


def _parse_header(header: memoryview) -> dict[str, Any]:
    try:
        doc = orjson.loads(header)
    except (orjson.JSONDecodeError, ValueError, TypeError) as exc:
        raise InvalidInput(f"the inference request is not valid JSON: {exc}") from None
    if type(doc) is not dict:
        raise InvalidInput(
            f"the inference request must be a JSON object with \"inputs\", got {_json_name(doc)}"
        )
    return doc


def _object(value: Any, what: str) -> dict[str, Any]:
    if type(value) is not dict:
        raise InvalidInput(f"{what} must be an object, got {_json_name(value)}")
    return value


def _flag(value: Any, what: str) -> bool:
    if type(value) is not bool:
        raise InvalidInput(f"{what} must be true or false, got {_json_name(value)}")
    return value


def _request_id(doc: dict[str, Any]) -> str | None:
    if "id" not in doc:
        return None
    value = doc["id"]
    if type(value) is not str:
        raise InvalidInput(f'"id" must be a string, got {_json_name(value)}')
    if len(value) > _MAX_ID_LENGTH:
        raise InvalidInput(f'"id" must be at most {_MAX_ID_LENGTH} characters, got {len(value)}')
    return value


def _v2_shape(value: Any, name: str) -> tuple[int, ...]:
    if type(value) is not list or not set(map(type, value)) <= {int} or (value and min(value) < 0):
        raise InvalidInput(
            f"input {name!r} needs \"shape\": a list of non-negative integers, got "
            f"{reprlib.repr(value)}"
        )
    return tuple(value)


def _from_v2_data(data: Any, spec: TensorSpec, shape: tuple[int, ...], count: int) -> np.ndarray:
    """`data` is flat row-major, though nested lists are accepted and flattened (Triton does)."""
    if type(data) is not list:
        raise InvalidInput(f'input {spec.name!r} "data" must be a list, got {_json_name(data)}')
    leaves: list[Any] = data
    types = _leaf_types(leaves)
    depth = 0
    while list in types:
        depth += 1
        if len(types) != 1 or depth > _MAX_DATA_NESTING:
            problem = "mixes nested lists with values" if len(types) != 1 else "is nested too deep"
            raise InvalidInput(f'input {spec.name!r} "data" {problem}; send it flat, row-major')
        leaves = list(chain.from_iterable(leaves))
        types = _leaf_types(leaves)
    if len(leaves) != count:
        raise InvalidInput(
            f'input {spec.name!r} has {len(leaves)} values in "data", but shape '
            f"{_fmt_shape(shape)} needs {count}"
        )
    return _to_array(leaves, types, spec, shape)


def _from_binary(binary: memoryview, offset: int, size: Any, spec: TensorSpec,
                 shape: tuple[int, ...], count: int) -> tuple[np.ndarray, int]:
    """Take the next `size` raw little-endian bytes; copy them so arrays are aligned, writable
    and independent of the request body whatever the header length was."""
    dtype = spec.dtype
    need = count * dtype.itemsize
    if type(size) is not int or size != need:
        raise InvalidInput(
            f"input {spec.name!r} has binary_data_size {reprlib.repr(size)}, but shape "
            f"{_fmt_shape(shape)} of {spec.datatype} needs {need} bytes"
        )
    end = offset + size
    if end > len(binary):
        raise InvalidInput(
            f"the binary data ends early: input {spec.name!r} needs bytes {offset}..{end} of the "
            f"binary section, which has only {len(binary)}"
        )
    chunk = binary[offset:end]
    if dtype.kind == "b":
        raw = np.frombuffer(chunk, dtype=np.uint8)
        if raw.max() > 1:
            raise InvalidInput(
                f"input {spec.name!r} (BOOL) binary data must be one byte per element, 0 or 1"
            )
        return raw.astype(np.bool_).reshape(shape), end
    arr = np.frombuffer(chunk, dtype=dtype.newbyteorder("<")).astype(dtype)
    if dtype.kind == "f" and not _within(arr, spec.datatype):
        raise InvalidInput(
            f"input {spec.name!r} ({spec.datatype}) binary data holds a value that is not finite "
            "(NaN or infinity)"
        )
    return arr.reshape(shape), end


def _v2_input_params(entry: dict[str, Any], name: str) -> Any:
    """Return binary_data_size (or None), refusing extension features the gateway lacks."""
    params = _object(entry.get("parameters", {}), f'input {name!r} "parameters"')
    if "shared_memory_region" in params:
        raise InvalidInput(f"input {name!r}: shared memory is not supported by this gateway")
    return params.get("binary_data_size")


def _decode_v2_inputs(raw: Any, binary: memoryview | None, specs: Sequence[TensorSpec],
                      limits: Limits) -> dict[str, np.ndarray]:
    if type(raw) is not list:
        raise InvalidInput(f'"inputs" must be a list of tensors, got {_json_name(raw)}')
    by_name = {s.name: s for s in specs}
    arrays: dict[str, np.ndarray] = {}
    offset = total = 0
    for i, entry in enumerate(raw):
        if type(entry) is not dict or type(entry.get("name")) is not str:
            raise InvalidInput(f'inputs[{i}] must be an object with a string "name"')
        name = entry["name"]
        spec = by_name.get(name)
        if spec is None:
            raise InvalidInput(
                f"unknown input {name!r}; this model's inputs are {_names(by_name)}"
            )
        if name in arrays:
            raise InvalidInput(f"input {name!r} is given twice")
        datatype = entry.get("datatype")
        if datatype != spec.datatype:
            got = datatype if type(datatype) is str else _json_name(datatype)
            raise InvalidInput(f"input {name!r} expects datatype {spec.datatype}, got {got}")
        _require_supported(spec)
        shape = _v2_shape(entry.get("shape"), name)
        count = _check_shape(spec, shape, limits)
        total += count
        _check_total(total, limits)
        size = _v2_input_params(entry, name)
        has_data = "data" in entry
        if size is not None and has_data:
            raise InvalidInput(f'input {name!r} has both "data" and binary_data_size; send one')
        if size is not None:
            if binary is None:
                raise InvalidInput(
                    f"input {name!r} has binary_data_size but the request has no binary section "
                    "(the Inference-Header-Content-Length header is missing)"
                )
            arrays[name], offset = _from_binary(binary, offset, size, spec, shape, count)
        elif has_data:
            arrays[name] = _from_v2_data(entry["data"], spec, shape, count)
        else:
            raise InvalidInput(f'input {name!r} needs "data" or parameters.binary_data_size')
    missing = [s.name for s in specs if s.name not in arrays]
    if missing:
        raise InvalidInput(
            f"missing input {_names(missing)}; this model's inputs are {_names(by_name)}"
        )
    if binary is not None and offset != len(binary):
        raise InvalidInput(
            f"the binary section has {len(binary)} bytes but the inputs' binary_data_size add up "
            f"to {offset}"
        )
    return arrays


def _decode_v2_outputs(doc: dict[str, Any], output_names: Sequence[str],
                       binary_default: bool) -> list[RequestedOutput] | None:
    raw = doc.get("outputs")
    if raw is None or raw == []:
        return None
    if type(raw) is not list:
        raise InvalidInput(f'"outputs" must be a list, got {_json_name(raw)}')
    requested: list[RequestedOutput] = []
    seen: set[str] = set()
    for i, entry in enumerate(raw):
        if type(entry) is not dict or type(entry.get("name")) is not str:
            raise InvalidInput(f'outputs[{i}] must be an object with a string "name"')
        name = entry["name"]
        if name not in output_names:
            raise InvalidInput(
                f"unknown output {name!r}; this model's outputs are {_names(output_names)}"
            )
        if name in seen:
            raise InvalidInput(f"output {name!r} is requested twice")
        seen.add(name)
        params = _object(entry.get("parameters", {}), f'output {name!r} "parameters"')
        for feature in ("classification", "shared_memory_region"):
            if feature in params:
                raise InvalidInput(f"output {name!r}: {feature} is not supported by this gateway")
        binary = _flag(params.get("binary_data", binary_default),
                       f"output {name!r} parameters.binary_data")
        requested.append(RequestedOutput(name=name, binary=binary))
    return requested


def decode_v2_request(body: bytes, header_length: int | None, specs: Sequence[TensorSpec],
                      output_names: Sequence[str], limits: Limits) -> V2Request:
    """Open Inference Protocol request, JSON form plus the binary tensor data extension."""
    header, binary = _split_body(body, header_length)
    doc = _parse_header(header)
    request_id = _request_id(doc)
    parameters = _object(doc.get("parameters", {}), 'request "parameters"')
    binary_default = _flag(parameters.get("binary_data_output", False),
                           "parameters.binary_data_output")
    if "inputs" not in doc:
        raise InvalidInput('the inference request needs "inputs"')
    inputs = _decode_v2_inputs(doc["inputs"], binary, specs, limits)
    return V2Request(
        id=request_id,
        inputs=inputs,
        outputs=_decode_v2_outputs(doc, output_names, binary_default),
        binary_output_default=binary_default,
        parameters=parameters,
    )


# --------------------------------------------------------------------------- responses


def _v2_datatype(arr: np.ndarray) -> str:
    dtype = arr.dtype
    name = NUMPY_TO_V2.get(dtype) or NUMPY_TO_V2.get(dtype.newbyteorder("="))
    if name is not None:
        return name
    if dtype.kind in "OUS":
        return "BYTES"
    raise GatewayError(f"the model returned dtype {dtype}, which has no V2 datatype")


def _texts(arr: np.ndarray) -> list[str]:
    """String outputs are rare and small (labels): a Python loop is acceptable here only."""
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
            for v in arr.ravel().tolist()]


def _orjson_ready(arr: np.ndarray) -> np.ndarray:
    """orjson serialises only native-endian, C-contiguous arrays of plain numeric types."""
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if arr.dtype == np.float16:  # older orjson releases lack float16
        arr = arr.astype(np.float32)
    return np.ascontiguousarray(arr)


def _wire_bytes(arr: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":  # the extension's encoding: 4-byte little-endian length + bytes
        encoded = [t.encode() for t in _texts(arr)]
        return b"".join(struct.pack("<I", len(b)) + b for b in encoded)
    return arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


def encode_v2_response(model_name: str, version: int, request_id: str | None,
                       outputs: dict[str, np.ndarray], requested: list[RequestedOutput] | None,
                       binary_default: bool) -> tuple[bytes, dict[str, str]]:
    """Returns (body, headers). Headers include Content-Type (application/json, or
    application/octet-stream when any binary output) and Inference-Header-Content-Length when
    binary parts follow."""
    selection = ([(name, binary_default) for name in outputs] if requested is None
                 else [(r.name, r.binary) for r in requested])
    entries: list[dict[str, Any]] = []
    parts: list[bytes] = []
    for name, binary in selection:
        arr = np.asarray(outputs[name])
        datatype = _v2_datatype(arr)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
        if binary:
            raw = _wire_bytes(arr, datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            parts.append(raw)
        else:
            entry["data"] = _texts(arr) if datatype == "BYTES" else _orjson_ready(arr.ravel())
        entries.append(entry)
    header: dict[str, Any] = {"model_name": model_name, "model_version": str(version)}
    if request_id is not None:
        header["id"] = request_id
    header["outputs"] = entries
    text = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    if not parts:
        return text, {"Content-Type": "application/json"}
    return b"".join([text, *parts]), {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(text)),
    }


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
            result[name] = np.array(_texts(arr), dtype=object).reshape(arr.shape).tolist()
        elif arr.ndim == 0:
            result[name] = _orjson_ready(arr.reshape(1))[0]
        else:
            result[name] = _orjson_ready(arr)
    return result
