"""The Open Inference Protocol (KServe V2 / Triton HTTP), JSON and binary tensor data."""

from __future__ import annotations

import reprlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import orjson

from gateway.serving.codecs.tensors import (
    MAX_DATA_NESTING,
    MAX_ID_LENGTH,
    NUMPY_TO_V2,
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
    within_range,
)
from registry.errors import GatewayError, InvalidInput


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
            f"the inference request must be a JSON object with \"inputs\", got {json_name(doc)}"
        )
    return doc


def _object(value: Any, what: str) -> dict[str, Any]:
    if type(value) is not dict:
        raise InvalidInput(f"{what} must be an object, got {json_name(value)}")
    return value


def _flag(value: Any, what: str) -> bool:
    if type(value) is not bool:
        raise InvalidInput(f"{what} must be true or false, got {json_name(value)}")
    return value


def _request_id(doc: dict[str, Any]) -> str | None:
    if "id" not in doc:
        return None
    value = doc["id"]
    if type(value) is not str:
        raise InvalidInput(f'"id" must be a string, got {json_name(value)}')
    if len(value) > MAX_ID_LENGTH:
        raise InvalidInput(f'"id" must be at most {MAX_ID_LENGTH} characters, got {len(value)}')
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
        raise InvalidInput(f'input {spec.name!r} "data" must be a list, got {json_name(data)}')
    leaves: list[Any] = data
    types = leaf_types(leaves)
    depth = 0
    while list in types:
        depth += 1
        if len(types) != 1 or depth > MAX_DATA_NESTING:
            problem = "mixes nested lists with values" if len(types) != 1 else "is nested too deep"
            raise InvalidInput(f'input {spec.name!r} "data" {problem}; send it flat, row-major')
        leaves = list(chain.from_iterable(leaves))
        types = leaf_types(leaves)
    if len(leaves) != count:
        raise InvalidInput(
            f'input {spec.name!r} has {len(leaves)} values in "data", but shape '
            f"{fmt_shape(shape)} needs {count}"
        )
    return to_array(leaves, types, spec, shape)


def _from_binary(binary: memoryview, offset: int, size: Any, spec: TensorSpec,
                 shape: tuple[int, ...], count: int) -> tuple[np.ndarray, int]:
    """Take the next `size` raw little-endian bytes; copy them so arrays are aligned, writable
    and independent of the request body whatever the header length was."""
    dtype = spec.dtype
    need = count * dtype.itemsize
    if type(size) is not int or size != need:
        raise InvalidInput(
            f"input {spec.name!r} has binary_data_size {reprlib.repr(size)}, but shape "
            f"{fmt_shape(shape)} of {spec.datatype} needs {need} bytes"
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
    if dtype.kind == "f" and not within_range(arr, spec.datatype):
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
        raise InvalidInput(f'"inputs" must be a list of tensors, got {json_name(raw)}')
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
                f"unknown input {name!r}; this model's inputs are {names_list(by_name)}"
            )
        if name in arrays:
            raise InvalidInput(f"input {name!r} is given twice")
        datatype = entry.get("datatype")
        if datatype != spec.datatype:
            got = datatype if type(datatype) is str else json_name(datatype)
            raise InvalidInput(f"input {name!r} expects datatype {spec.datatype}, got {got}")
        require_supported(spec)
        shape = _v2_shape(entry.get("shape"), name)
        count = check_shape(spec, shape, limits)
        total += count
        check_total(total, limits)
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
            f"missing input {names_list(missing)}; this model's inputs are {names_list(by_name)}"
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
        raise InvalidInput(f'"outputs" must be a list, got {json_name(raw)}')
    requested: list[RequestedOutput] = []
    seen: set[str] = set()
    for i, entry in enumerate(raw):
        if type(entry) is not dict or type(entry.get("name")) is not str:
            raise InvalidInput(f'outputs[{i}] must be an object with a string "name"')
        name = entry["name"]
        if name not in output_names:
            raise InvalidInput(
                f"unknown output {name!r}; this model's outputs are {names_list(output_names)}"
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


def _v2_datatype(arr: np.ndarray) -> str:
    dtype = arr.dtype
    name = NUMPY_TO_V2.get(dtype) or NUMPY_TO_V2.get(dtype.newbyteorder("="))
    if name is not None:
        return name
    if dtype.kind in "OUS":
        return "BYTES"
    raise GatewayError(f"the model returned dtype {dtype}, which has no V2 datatype")


def _wire_bytes(arr: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":  # the extension's encoding: 4-byte little-endian length + bytes
        encoded = [t.encode() for t in texts_of(arr)]
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
            entry["data"] = texts_of(arr) if datatype == "BYTES" else orjson_ready(arr.ravel())
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
