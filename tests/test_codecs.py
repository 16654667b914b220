"""Wire codecs: round trips, a real client's requests and responses, refusals, and fuzzing.

The property tests are the point: whatever a caller sends, the codecs answer with arrays that
match the signature or with InvalidInput, never with another exception (which would be a 500).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gateway.serving.codecs.predict_json import decode_json_inputs, outputs_for_json
from gateway.serving.codecs.tensors import NUMPY_TO_V2, V2_TO_NUMPY, Limits, TensorSpec
from gateway.serving.codecs.v2 import (
    RequestedOutput,
    V2Request,
    decode_v2_request,
    encode_v2_response,
)
from registry.errors import InvalidInput

FP32 = [TensorSpec("input", "FP32", (-1, 64))]
INT64 = [TensorSpec("ids", "INT64", (-1, 3))]
UINT8 = [TensorSpec("pixels", "UINT8", (-1, 2, 2))]
BOOL = [TensorSpec("mask", "BOOL", (-1, 4))]
TWO = [TensorSpec("a", "FP32", (-1, 2)), TensorSpec("b", "INT32", (-1,))]
BYTES = [TensorSpec("text", "BYTES", (-1,))]
OUTPUTS = ["label", "probabilities"]
LIMITS = Limits()
SMALL = Limits(max_batch=4, max_elements=100)

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def _v2(inputs: list[dict[str, Any]], binary: bytes = b"",
        **extra: Any) -> tuple[bytes, int | None]:
    header = orjson.dumps({"inputs": inputs, **extra})
    return header + binary, (len(header) if binary else None)


def _decode(body: bytes, header_length: int | None, specs=FP32, limits=LIMITS) -> V2Request:
    return decode_v2_request(body, header_length, specs, OUTPUTS, limits)


def _check_array(arr: np.ndarray, spec: TensorSpec) -> None:
    assert arr.dtype == spec.dtype
    assert arr.flags.c_contiguous
    assert arr.ndim == len(spec.shape)
    assert all(want < 0 or got == want for got, want in zip(arr.shape, spec.shape, strict=True))
    assert all(got >= 1 for got in arr.shape)
    if arr.dtype.kind == "f":
        assert np.isfinite(arr).all()


# --------------------------------------------------------------------------- specs


def test_tensor_spec_from_registry_record():
    spec = TensorSpec.from_record({"name": "input", "datatype": "FP32", "shape": [-1, 64]})
    assert spec == TensorSpec("input", "FP32", (-1, 64))
    assert spec.dtype == np.float32


def test_datatype_tables_are_inverse():
    assert {NUMPY_TO_V2[dtype] for dtype in V2_TO_NUMPY.values()} == set(V2_TO_NUMPY)
    assert V2_TO_NUMPY["BOOL"] == np.bool_ and "BYTES" not in V2_TO_NUMPY


# --------------------------------------------------------------------------- /predict form


def test_json_fp32_round_trip():
    values = [[float(i) / 7 for i in range(64)], [-1e-3] * 64]
    arr = decode_json_inputs({"input": values}, FP32, LIMITS)["input"]
    np.testing.assert_array_equal(arr, np.array(values, dtype=np.float32))
    assert arr.dtype == np.float32 and arr.flags.c_contiguous and arr.flags.writeable


def test_json_single_input_model_takes_a_bare_list():
    values = [[1] * 64]  # integers are fine for float inputs
    arr = decode_json_inputs(values, FP32, LIMITS)["input"]
    np.testing.assert_array_equal(arr, np.ones((1, 64), dtype=np.float32))


def test_json_integer_inputs_are_exact_at_the_limits():
    values = [[2**63 - 1, -(2**63), 0], [1.0, 2.0, 3]]  # integral floats are accepted
    arr = decode_json_inputs({"ids": values}, INT64, LIMITS)["ids"]
    assert arr.dtype == np.int64
    assert arr.tolist() == [[2**63 - 1, -(2**63), 0], [1, 2, 3]]


def test_json_uint8_bool_and_two_inputs():
    pixels = decode_json_inputs({"pixels": [[[0, 255], [7, 8]]]}, UINT8, LIMITS)["pixels"]
    assert pixels.dtype == np.uint8 and pixels.shape == (1, 2, 2)
    mask = decode_json_inputs({"mask": [[True, False, True, True]]}, BOOL, LIMITS)["mask"]
    assert mask.dtype == np.bool_ and mask.tolist() == [[True, False, True, True]]
    both = decode_json_inputs({"b": [1, 2, 3], "a": [[0.5, 1], [2, 3], [4, 5]]}, TWO, LIMITS)
    assert both["a"].dtype == np.float32 and both["b"].dtype == np.int32
    assert both["b"].tolist() == [1, 2, 3]


def test_json_shape_message_names_the_input_and_both_shapes():
    with pytest.raises(InvalidInput) as err:
        decode_json_inputs({"input": [[0.0] * 63]}, FP32, LIMITS)
    assert err.value.message == "input 'input' expects shape [-1, 64], got [1, 63]"


# --------------------------------------------------------------------------- V2 requests


def test_v2_json_and_binary_requests_decode_to_identical_arrays():
    arr = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    json_body, _ = _v2([{"name": "input", "shape": [2, 64], "datatype": "FP32",
                         "data": arr.ravel().tolist()}])
    bin_body, length = _v2([{"name": "input", "shape": [2, 64], "datatype": "FP32",
                             "parameters": {"binary_data_size": arr.nbytes}}], arr.tobytes())
    from_json = _decode(json_body, None).inputs["input"]
    from_binary = _decode(bin_body, length).inputs["input"]
    np.testing.assert_array_equal(from_json, arr)
    assert from_binary.tobytes() == arr.tobytes()
    for decoded in (from_json, from_binary):
        assert decoded.dtype == np.float32 and decoded.flags.c_contiguous
        assert decoded.flags.writeable and decoded.flags.aligned


def test_v2_mixed_binary_and_json_inputs_with_odd_offsets():
    mask = np.array([[True, False, False, True]])
    ids = np.array([[1, -2, 2**40]], dtype=np.int64)
    body, length = _v2(
        [{"name": "mask", "shape": [1, 4], "datatype": "BOOL",
          "parameters": {"binary_data_size": 4}},
         {"name": "ids", "shape": [1, 3], "datatype": "INT64",
          "parameters": {"binary_data_size": 24}}],
        mask.tobytes() + ids.tobytes(),
    )
    specs = [BOOL[0], INT64[0]]
    request = decode_v2_request(body, length, specs, OUTPUTS, LIMITS)
    np.testing.assert_array_equal(request.inputs["mask"], mask)
    np.testing.assert_array_equal(request.inputs["ids"], ids)
    assert request.inputs["ids"].flags.aligned  # it followed a 4-byte tensor


def test_v2_nested_data_is_flattened_and_request_fields_are_read():
    body, _ = _v2([{"name": "a", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4]]},
                   {"name": "b", "shape": [2], "datatype": "INT32", "data": [5, 6]}],
                  id="req-1", parameters={"binary_data_output": True},
                  outputs=[{"name": "probabilities"},
                           {"name": "label", "parameters": {"binary_data": False}}])
    request = decode_v2_request(body, None, TWO, OUTPUTS, LIMITS)
    assert request.id == "req-1" and request.binary_output_default is True
    assert request.outputs == [RequestedOutput("probabilities", True),
                               RequestedOutput("label", False)]
    assert request.inputs["a"].tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert request.parameters == {"binary_data_output": True}


def test_v2_without_outputs_means_all_outputs_in_json():
    body, _ = _v2([{"name": "b", "shape": [1], "datatype": "INT32", "data": [1]},
                   {"name": "a", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}])
    request = decode_v2_request(body, None, TWO, OUTPUTS, LIMITS)
    assert request.outputs is None and request.binary_output_default is False
    assert request.id is None


# --------------------------------------------------------------------------- responses


def _split_response(body: bytes, headers: dict[str, str]) -> tuple[dict[str, Any], bytes]:
    length = int(headers.get("Inference-Header-Content-Length", len(body)))
    return orjson.loads(body[:length]), body[length:]


def test_encode_binary_outputs_are_bit_exact():
    probs = np.random.default_rng(1).random((3, 10)).astype(np.float32)
    label = np.array([3, 1, 4], dtype=np.int64)
    body, headers = encode_v2_response("digits", 2, "r1", {"label": label, "probabilities": probs},
                                       None, True)
    assert headers["Content-Type"] == "application/octet-stream"
    header, rest = _split_response(body, headers)
    assert header["model_name"] == "digits" and header["model_version"] == "2"
    assert header["id"] == "r1"
    assert [o["name"] for o in header["outputs"]] == ["label", "probabilities"]
    sizes = [o["parameters"]["binary_data_size"] for o in header["outputs"]]
    assert sizes == [label.nbytes, probs.nbytes] and len(rest) == sum(sizes)
    assert np.frombuffer(rest[:24], "<i8").tolist() == label.tolist()
    assert rest[24:] == probs.astype("<f4").tobytes()


def test_encode_json_outputs_in_requested_order():
    probs = np.array([[0.1, 0.2, 0.7]], dtype=np.float32)
    outputs = {"label": np.array([2]), "probabilities": probs}
    requested = [RequestedOutput("probabilities", False), RequestedOutput("label", False)]
    body, headers = encode_v2_response("digits", 1, None, outputs, requested, True)
    assert headers == {"Content-Type": "application/json"}
    header = orjson.loads(body)
    assert "id" not in header
    first, second = header["outputs"]
    assert first == {"name": "probabilities", "datatype": "FP32", "shape": [1, 3],
                     "data": [0.1, 0.2, 0.7]}
    assert np.array_equal(np.array(first["data"], dtype=np.float32), probs.ravel())
    assert second == {"name": "label", "datatype": "INT64", "shape": [1], "data": [2]}


def test_encode_mixed_binary_and_json_and_odd_dtypes():
    outputs = {"half": np.array([[0.5, 1.5]], dtype=np.float16),
               "big_endian": np.array([1.0, 2.0], dtype=">f8"),
               "strided": np.arange(12, dtype=np.int32).reshape(3, 4)[:, ::2],
               "names": np.array(["cat", "dög"], dtype=object)}
    requested = [RequestedOutput("half", False), RequestedOutput("big_endian", True),
                 RequestedOutput("strided", False), RequestedOutput("names", True)]
    body, headers = encode_v2_response("m", 1, None, outputs, requested, False)
    header, rest = _split_response(body, headers)
    half, big, strided, names = header["outputs"]
    assert half["datatype"] == "FP16" and half["data"] == [0.5, 1.5]
    assert big["datatype"] == "FP64" and rest[:16] == np.array([1.0, 2.0], "<f8").tobytes()
    assert strided["shape"] == [3, 2] and strided["data"] == [0, 2, 4, 6, 8, 10]
    assert names["datatype"] == "BYTES"
    assert rest[16:] == b"\x03\x00\x00\x00cat\x04\x00\x00\x00d\xc3\xb6g"


def test_outputs_for_json_makes_every_array_serialisable():
    outputs = {"half": np.array([0.5], dtype=np.float16), "scalar": np.array(2.5),
               "transposed": np.arange(6, dtype=np.int64).reshape(2, 3).T,
               "swapped": np.array([1, 2], dtype=">i4"), "labels": np.array([["a", "b"]])}
    ready = outputs_for_json(outputs)
    assert ready["half"].dtype == np.float32
    text = orjson.dumps(ready, option=orjson.OPT_SERIALIZE_NUMPY)
    assert orjson.loads(text) == {"half": [0.5], "scalar": 2.5,
                                  "transposed": [[0, 3], [1, 4], [2, 5]], "swapped": [1, 2],
                                  "labels": [["a", "b"]]}


# --------------------------------------------------------------------------- tritonclient


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_request_bodies_decode(binary: bool):
    arr = np.random.default_rng(2).random((2, 64)).astype(np.float32)
    infer_input = triton.InferInput("input", [2, 64], "FP32")
    infer_input.set_data_from_numpy(arr, binary_data=binary)
    outputs = [triton.InferRequestedOutput("probabilities", binary_data=not binary)]
    body, header_length = triton.InferenceServerClient.generate_request_body(
        [infer_input], outputs=outputs, request_id="abc")
    assert (header_length is None) is not binary
    request = decode_v2_request(body, header_length, FP32, OUTPUTS, LIMITS)
    assert request.id == "abc"
    assert request.outputs == [RequestedOutput("probabilities", not binary)]
    np.testing.assert_array_equal(request.inputs["input"], arr)
    assert request.inputs["input"].dtype == np.float32


def test_tritonclient_default_outputs_ask_for_binary():
    infer_input = triton.InferInput("input", [1, 64], "FP32")
    infer_input.set_data_from_numpy(np.zeros((1, 64), dtype=np.float32))
    body, header_length = triton.InferenceServerClient.generate_request_body([infer_input])
    request = decode_v2_request(body, header_length, FP32, OUTPUTS, LIMITS)
    assert request.outputs is None and request.binary_output_default is True


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_parses_our_responses(binary: bool):
    outputs: dict[str, np.ndarray] = {"label": np.array([7, 2], dtype=np.int64),
               "probabilities": np.random.default_rng(3).random((2, 10)).astype(np.float32),
               "flags": np.array([[True, False]]),
               "half": np.array([0.1, 65504], dtype=np.float16)}
    body, headers = encode_v2_response("digits", 3, "xyz", outputs, None, binary)
    length = headers.get("Inference-Header-Content-Length")
    result = triton.InferenceServerClient.parse_response_body(
        body, header_length=int(length) if length else None)
    assert result.get_response()["model_version"] == "3"
    assert result.get_response()["id"] == "xyz"
    for name, arr in outputs.items():
        got = result.as_numpy(name)
        assert got.dtype == arr.dtype and got.shape == arr.shape
        np.testing.assert_array_equal(got, arr)  # exact both ways: orjson prints shortest f32


# --------------------------------------------------------------------------- refusals

_FP32_ROW = [0.5] * 64


def _json_case(inputs: Any, specs=FP32, limits=LIMITS):
    return lambda: decode_json_inputs(inputs, specs, limits)


def _v2_case(inputs: Any, binary: bytes = b"", specs=FP32, limits=LIMITS, header_length=...,
             **extra: Any):
    doc = {"inputs": inputs, **extra}
    header = orjson.dumps(doc)
    length = (len(header) if binary else None) if header_length is ... else header_length
    return lambda: decode_v2_request(header + binary, length, specs, OUTPUTS, limits)


def _fp32(shape=(1, 64), **fields: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": "input", "shape": list(shape), "datatype": "FP32",
                             "data": [0.5] * math.prod(shape)}
    entry.update(fields)
    return {k: v for k, v in entry.items() if v is not None}


def _binary_fp32(values: np.ndarray, size: int | None = None) -> dict[str, Any]:
    return _fp32(values.shape, data=None,
                 parameters={"binary_data_size": values.nbytes if size is None else size})


_ONE_ROW = np.zeros((1, 64), dtype=np.float32)
_NAN_ROW = np.array([[np.nan] + [0.0] * 63], dtype=np.float32)

MALFORMED: dict[str, tuple[Any, str]] = {
    # /predict form
    "json wrong rank": (_json_case({"input": _FP32_ROW}), "expects shape [-1, 64], got [64]"),
    "json too deep": (_json_case({"input": [[_FP32_ROW]]}), "expects shape [-1, 64]"),
    "json wrong fixed dim": (_json_case({"input": [[0.5] * 63]}), "got [1, 63]"),
    "json zero batch": (_json_case({"input": []}), "empty"),
    "json empty row": (_json_case({"input": [[]]}), "got [1, 0]"),
    "json ragged": (_json_case({"input": [_FP32_ROW, [0.5] * 63]}), "not rectangular"),
    "json row not a list": (_json_case({"input": [_FP32_ROW, 0.5]}), "not rectangular"),
    "json deeper in a later row": (_json_case({"input": [[0.5] * 63 + [[1]]]}), "rectangular"),
    "json string": (_json_case({"input": [["x"] + _FP32_ROW[1:]]}), "got a string"),
    "json numeric string": (_json_case({"input": [["0.5"] + _FP32_ROW[1:]]}), '"0.5"'),
    "json bool mixed": (_json_case({"input": [[1, True] + _FP32_ROW[2:]]}), "boolean"),
    "json null": (_json_case({"input": [[None] + _FP32_ROW[1:]]}), "null"),
    "json object leaf": (_json_case({"input": [[{}] + _FP32_ROW[1:]]}), "object"),
    "json missing input": (_json_case({}), "missing input 'input'"),
    "json extra input": (_json_case({"input": [_FP32_ROW], "other": [1]}), "unknown input"),
    "json inputs a string": (_json_case("0.5"), "got a string"),
    "json inputs null": (_json_case(None), "got a null"),
    "json value not a list": (_json_case({"input": 0.5}), "must be a nested list"),
    "json 1e39 in FP32": (_json_case({"input": [[1e39] + _FP32_ROW[1:]]}), "not a finite FP32"),
    "json inf": (_json_case({"input": [[math.inf] + _FP32_ROW[1:]]}), "not a finite"),
    "json nan": (_json_case({"input": [[math.nan] + _FP32_ROW[1:]]}), "not a finite"),
    "json huge python int": (_json_case({"input": [[10**400] + _FP32_ROW[1:]]}), "finite"),
    "json 1.5 into INT64": (_json_case({"ids": [[1, 1.5, 2]]}, INT64), "fractional"),
    "json 2**70 into INT64": (_json_case({"ids": [[1, 2**70, 2]]}, INT64), "out of that range"),
    "json 1e20 float into INT64": (_json_case({"ids": [[1, 1e20, 2]]}, INT64), "range"),
    "json 300 into UINT8": (_json_case({"pixels": [[[300, 0], [0, 0]]]}, UINT8), "[0, 255]"),
    "json -1 into UINT8": (_json_case({"pixels": [[[-1, 0], [0, 0]]]}, UINT8), "[0, 255]"),
    "json number into BOOL": (_json_case({"mask": [[1, 0, 1, 0]]}, BOOL), "only true/false"),
    "json list for two inputs": (_json_case([[1, 2]], TWO), "has 2 inputs"),
    "json BYTES": (_json_case({"text": ["a"]}, BYTES), "BYTES tensors are not supported"),
    "json batch over limit": (_json_case({"input": [_FP32_ROW] * 5}, limits=SMALL), "limit"),
    "json elements over limit": (_json_case({"input": [_FP32_ROW] * 2}, limits=SMALL), "limit"),
    "json total over limit": (
        _json_case({"a": [[1, 2]] * 3, "b": [1] * 4}, TWO, Limits(max_elements=9)), "across"),
    # Open Inference Protocol
    "v2 wrong datatype": (_v2_case([_fp32(datatype="FP64")]), "expects datatype FP32, got FP64"),
    "v2 wrong rank": (_v2_case([_fp32((64,))]), "got [64]"),
    "v2 wrong fixed dim": (_v2_case([_fp32((1, 63))]), "got [1, 63]"),
    "v2 zero dim": (_v2_case([_fp32((0, 64))]), "empty dimension"),
    "v2 negative dim": (_v2_case([{**_fp32(), "shape": [-1, 64]}]), "non-negative"),
    "v2 shape not a list": (_v2_case([{**_fp32(), "shape": "1,64"}]), "shape"),
    "v2 data length mismatch": (_v2_case([_fp32(data=[0.5] * 63)]), "63 values"),
    "v2 data string": (_v2_case([_fp32(data=["0.5"] * 64)]), "string"),
    "v2 data bool": (_v2_case([_fp32(data=[True] * 64)]), "boolean"),
    "v2 data mixed nesting": (_v2_case([_fp32(data=[[0.5] * 63, 0.5])]), "mixes"),
    "v2 data not a list": (_v2_case([_fp32(data=0.5)]), "must be a list"),
    "v2 1.5 into INT64": (_v2_case([{"name": "ids", "shape": [1, 3], "datatype": "INT64",
                                     "data": [1, 1.5, 2]}], specs=INT64), "fractional"),
    "v2 missing input": (_v2_case([], specs=TWO), "missing input 'a', 'b'"),
    "v2 unknown input": (_v2_case([_fp32(), _fp32(name="other")]), "unknown input 'other'"),
    "v2 duplicate input": (_v2_case([_fp32(), _fp32()]), "given twice"),
    "v2 inputs not a list": (_v2_case({"input": _fp32()}), '"inputs" must be a list'),
    "v2 input without name": (_v2_case([{"shape": [1, 64]}]), "string \"name\""),
    "v2 no data": (_v2_case([_fp32(data=None)]), "needs \"data\""),
    "v2 binary size mismatch": (
        _v2_case([_binary_fp32(_ONE_ROW, 255)], _ONE_ROW.tobytes()[:255]), "needs 256 bytes"),
    "v2 binary ends early": (
        _v2_case([_binary_fp32(_ONE_ROW)], _ONE_ROW.tobytes()[:200]), "ends early"),
    "v2 leftover binary bytes": (
        _v2_case([_binary_fp32(_ONE_ROW)], _ONE_ROW.tobytes() + b"\0"), "257 bytes"),
    "v2 binary without header length": (
        _v2_case([_binary_fp32(_ONE_ROW)], _ONE_ROW.tobytes(), header_length=None), "not valid"),
    "v2 data and binary both": (
        _v2_case([_fp32(parameters={"binary_data_size": 256})], _ONE_ROW.tobytes()), "both"),
    "v2 NaN in binary": (_v2_case([_binary_fp32(_NAN_ROW)], _NAN_ROW.tobytes()), "not finite"),
    "v2 binary bool not 0/1": (
        _v2_case([{"name": "mask", "shape": [1, 4], "datatype": "BOOL",
                   "parameters": {"binary_data_size": 4}}], b"\0\1\2\0", specs=BOOL), "0 or 1"),
    "v2 header length too big": (_v2_case([_fp32()], header_length=10**6), "between 1 and"),
    "v2 header length negative": (_v2_case([_fp32()], header_length=-1), "between 1 and"),
    "v2 header length zero": (_v2_case([_fp32()], header_length=0), "between 1 and"),
    "v2 batch over limit": (_v2_case([_fp32((5, 64))], limits=SMALL), "limit is 4"),
    "v2 elements over limit": (_v2_case([_fp32((2, 64))], limits=SMALL), "limit"),
    "v2 unknown requested output": (
        _v2_case([_fp32()], outputs=[{"name": "logits"}]), "outputs are 'label'"),
    "v2 output binary_data not bool": (
        _v2_case([_fp32()], outputs=[{"name": "label", "parameters": {"binary_data": 1}}]),
        "true or false"),
    "v2 classification": (
        _v2_case([_fp32()], outputs=[{"name": "label", "parameters": {"classification": 2}}]),
        "classification"),
    "v2 shared memory": (
        _v2_case([_fp32(data=None, parameters={"shared_memory_region": "r"})]), "shared memory"),
    "v2 id not a string": (_v2_case([_fp32()], id=7), '"id" must be a string'),
    "v2 id too long": (_v2_case([_fp32()], id="x" * 129), "at most 128"),
    "v2 parameters not an object": (_v2_case([_fp32()], parameters=[1]), "must be an object"),
    "v2 binary_data_output not bool": (
        _v2_case([_fp32()], parameters={"binary_data_output": "yes"}), "true or false"),
    "v2 BYTES input": (
        _v2_case([{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}],
                 specs=BYTES), "BYTES tensors are not supported"),
}


@pytest.mark.parametrize("case", list(MALFORMED), ids=list(MALFORMED))
def test_malformed_input_is_refused_with_a_useful_message(case: str):
    call, fragment = MALFORMED[case]
    with pytest.raises(InvalidInput) as err:
        call()
    assert fragment in err.value.message, err.value.message


@pytest.mark.parametrize("body", [b"", b"not json", b"[1, 2]", b'{"inputs": NaN}', b"\xff\xfe",
                                  b'{"inputs": [1e400]}', b"null"])
def test_header_that_is_not_a_json_object_is_refused(body: bytes):
    with pytest.raises(InvalidInput):
        _decode(body, None)


def test_header_length_splits_off_a_non_json_header():
    body = b'{"inputs": []}' + b"\0" * 8
    with pytest.raises(InvalidInput, match="not valid JSON"):
        _decode(body, 4)


# --------------------------------------------------------------------------- properties

_scalars = (st.none() | st.booleans() | st.integers()
            | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=4))
_json_like = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=4), children, max_size=4),
    max_leaves=40,
)
_numbers = (st.integers(-300, 300) | st.floats(allow_nan=True, allow_infinity=True)
            | st.sampled_from([0, 1, 255, 256, -1, 2**63, 2**64, 1e39, 0.5, True, False]))
# Near-miss tensors: nested lists of mostly numbers, so the value checks run, not just shapes.
_tensors = st.recursive(_numbers | _scalars, lambda c: st.lists(c, min_size=1, max_size=4),
                        max_leaves=24)

PROPERTY_SPECS = [
    [TensorSpec("x", "FP32", (-1, 3))],
    [TensorSpec("x", "INT8", (-1, 2))],
    [TensorSpec("x", "UINT8", (2, -1))],
    [TensorSpec("x", "BOOL", (-1,))],
    [TensorSpec("x", "FP16", (-1, 2))],
    [TensorSpec("x", "UINT64", (-1,))],
    [TensorSpec("x", "FP64", ())],
    [TensorSpec("x", "INT64", (-1,)), TensorSpec("y", "FP32", (-1, 1))],
    BYTES,
]


def _check_result(arrays: dict[str, np.ndarray], specs: list[TensorSpec],
                  limits: Limits = LIMITS) -> None:
    assert list(arrays) == [s.name for s in specs] or set(arrays) == {s.name for s in specs}
    for spec in specs:
        _check_array(arrays[spec.name], spec)
        if spec.shape:
            assert arrays[spec.name].shape[0] <= limits.max_batch
    assert sum(a.size for a in arrays.values()) <= limits.max_elements


@pytest.mark.parametrize("specs", PROPERTY_SPECS, ids=lambda s: "+".join(x.datatype for x in s))
@SETTINGS
@given(data=st.data())
def test_decode_json_inputs_never_raises_anything_else(specs: list[TensorSpec], data):
    value = data.draw(_json_like | _tensors)
    names = [s.name for s in specs] + ["other"]
    inputs = data.draw(st.sampled_from([
        value, {specs[0].name: value},
        {n: data.draw(_tensors) for n in names[:len(specs)]},
        data.draw(st.dictionaries(st.sampled_from(names), _tensors, max_size=3)),
    ]))
    limits = data.draw(st.sampled_from([LIMITS, Limits(max_batch=2, max_elements=5)]))
    try:
        arrays = decode_json_inputs(inputs, specs, limits)
    except InvalidInput as exc:
        assert exc.message
        return
    _check_result(arrays, specs, limits)
    for spec in specs:
        raw = inputs[spec.name] if isinstance(inputs, dict) else inputs
        expected = np.array(raw, dtype=np.float64 if spec.dtype.kind == "f" else spec.dtype)
        np.testing.assert_array_equal(arrays[spec.name], expected.astype(spec.dtype))


@SETTINGS
@given(body=st.binary(max_size=200), header_length=st.none() | st.integers(-10, 250))
def test_decode_v2_arbitrary_bytes(body: bytes, header_length: int | None):
    try:
        request = _decode(body, header_length)
    except InvalidInput:
        return
    _check_result(request.inputs, FP32)


@SETTINGS
@given(doc=st.dictionaries(st.sampled_from(["id", "inputs", "outputs", "parameters", "x"]),
                           _json_like, max_size=5),
       tail=st.binary(max_size=16), header_length=st.none() | st.integers(-2, 400))
def test_decode_v2_arbitrary_json_objects(doc: dict[str, Any], tail: bytes,
                                          header_length: int | None):
    body = json.dumps(doc, allow_nan=True).encode() + tail
    try:
        request = _decode(body, header_length)
    except InvalidInput:
        return
    _check_result(request.inputs, FP32)


_DATATYPES = ["FP32", "FP16", "INT64", "INT8", "UINT8", "UINT64", "BOOL", "BYTES", "FP64"]
_v2_entry = st.fixed_dictionaries(
    {"name": st.sampled_from(["x", "y", "z"]),
     "datatype": st.sampled_from(_DATATYPES) | _scalars,
     "shape": st.lists(st.integers(-1, 3), max_size=3) | _json_like},
    optional={
        "data": st.lists(_numbers, max_size=9) | _tensors | _json_like,
        "parameters": st.fixed_dictionaries(
            {}, optional={"binary_data_size": st.integers(-1, 40) | _scalars,
                          "shared_memory_region": st.text(max_size=2)}) | _json_like,
    },
)
_v2_output = st.fixed_dictionaries(
    {"name": st.sampled_from(OUTPUTS + ["nope"]) | _scalars},
    optional={"parameters": st.fixed_dictionaries(
        {}, optional={"binary_data": st.booleans() | _scalars}) | _json_like})
_v2_doc = st.fixed_dictionaries(
    {"inputs": st.lists(_v2_entry, max_size=3) | _json_like},
    optional={"id": st.text(max_size=3) | _scalars,
              "parameters": st.fixed_dictionaries(
                  {}, optional={"binary_data_output": st.booleans() | _scalars}) | _json_like,
              "outputs": st.lists(_v2_output, max_size=3) | _json_like},
)
V2_PROPERTY_SPECS = [
    [TensorSpec("x", "FP32", (-1, 2))],
    [TensorSpec("x", "INT8", (-1,)), TensorSpec("y", "BOOL", (2,))],
    [TensorSpec("x", "UINT64", (-1,)), TensorSpec("y", "FP16", (-1, -1))],
    [TensorSpec("x", "FP64", ()), TensorSpec("z", "BYTES", (-1,))],
]


@pytest.mark.parametrize("specs", V2_PROPERTY_SPECS,
                         ids=lambda s: "+".join(x.datatype for x in s))
@SETTINGS
@given(doc=_v2_doc, tail=st.binary(max_size=48), data=st.data())
def test_decode_v2_structured_requests(specs: list[TensorSpec], doc: dict[str, Any],
                                       tail: bytes, data):
    header = json.dumps(doc, allow_nan=True).encode()
    header_length = data.draw(st.sampled_from([None, len(header), len(header) - 1]))
    try:
        request = decode_v2_request(header + tail, header_length, specs, OUTPUTS, LIMITS)
    except InvalidInput:
        return
    _check_result(request.inputs, specs)
    assert request.outputs is None or all(o.name in OUTPUTS for o in request.outputs)


def _nest(flat: list[Any], dims: list[int]) -> Any:
    if not dims:
        return flat[0]
    step = len(flat) // dims[0]
    return [_nest(flat[i * step:(i + 1) * step], dims[1:]) for i in range(dims[0])]


def _valid_leaf(spec: TensorSpec) -> st.SearchStrategy[Any]:
    if spec.datatype not in V2_TO_NUMPY:
        return st.text(max_size=3)
    if spec.dtype.kind == "b":
        return st.booleans()
    if spec.dtype.kind == "f":
        width = 8 * min(spec.dtype.itemsize, 4) if spec.dtype.itemsize < 8 else 64
        return (st.floats(width=width, allow_nan=False, allow_infinity=False)  # type: ignore[arg-type]
                | st.integers(-1000, 1000))
    info = np.iinfo(spec.dtype)
    return st.integers(int(info.min), int(info.max)) | st.integers(0, 9).map(float)


@st.composite
def _near_valid(draw: st.DrawFn, spec: TensorSpec) -> tuple[list[int], list[Any]]:
    """A tensor that fits the spec, then, half of the time, one thing broken about it."""
    dims = [draw(st.integers(1, 3)) if d < 0 else d for d in spec.shape]
    flat = draw(st.lists(_valid_leaf(spec), min_size=math.prod(dims), max_size=math.prod(dims)))
    if draw(st.booleans()):
        flaw = draw(st.sampled_from(["leaf", "dim", "extra"]))
        if flaw == "leaf":
            flat[draw(st.integers(0, len(flat) - 1))] = draw(_numbers | _json_like)
        elif flaw == "dim" and dims:
            dims[draw(st.integers(0, len(dims) - 1))] += draw(st.sampled_from([-1, 1]))
        else:
            flat.append(draw(_valid_leaf(spec)))
    return dims, flat


@pytest.mark.parametrize("specs", PROPERTY_SPECS, ids=lambda s: "+".join(x.datatype for x in s))
@SETTINGS
@given(data=st.data())
def test_decode_json_inputs_near_valid(specs: list[TensorSpec], data):
    inputs = {}
    for spec in specs:
        dims, flat = data.draw(_near_valid(spec))
        size = math.prod(dims)
        if size <= 0 or len(flat) < size:
            inputs[spec.name] = flat
            continue
        nested = _nest(flat, dims)
        if len(flat) > size and dims:  # the extra element makes the last row ragged
            last = nested
            while isinstance(last[-1], list):
                last = last[-1]
            last.append(flat[-1])
        inputs[spec.name] = nested
    try:
        arrays = decode_json_inputs(inputs, specs, LIMITS)
    except InvalidInput:
        return
    _check_result(arrays, specs)
    for spec in specs:
        wide = np.float64 if spec.dtype.kind == "f" else spec.dtype
        np.testing.assert_array_equal(arrays[spec.name],
                                      np.array(inputs[spec.name], dtype=wide).astype(spec.dtype))


@pytest.mark.parametrize("specs", V2_PROPERTY_SPECS,
                         ids=lambda s: "+".join(x.datatype for x in s))
@SETTINGS
@given(data=st.data())
def test_decode_v2_near_valid(specs: list[TensorSpec], data):
    entries, binary = [], b""
    for spec in specs:
        dims, flat = data.draw(_near_valid(spec))
        entry: dict[str, Any] = {"name": spec.name, "datatype": spec.datatype, "shape": dims}
        if data.draw(st.booleans()) and spec.datatype in V2_TO_NUMPY:
            try:
                with np.errstate(all="ignore"):  # overflow to inf is a case worth sending
                    raw = np.array(flat, dtype=spec.dtype).tobytes()
            except (ValueError, TypeError, OverflowError):
                raw = b"\0" * len(flat)
            raw = raw[:data.draw(st.sampled_from([len(raw), len(raw), max(len(raw) - 1, 0)]))]
            entry["parameters"] = {"binary_data_size": len(raw)}
            binary += raw
        else:
            entry["data"] = flat
        entries.append(entry)
    entries = data.draw(st.permutations(entries))
    header = json.dumps({"inputs": entries}, allow_nan=True).encode()
    try:
        request = decode_v2_request(header + binary, len(header) if binary else None, specs,
                                    OUTPUTS, LIMITS)
    except InvalidInput:
        return
    _check_result(request.inputs, specs)


_roundtrip_dtypes = st.sampled_from([np.float32, np.float16, np.float64, np.int64, np.int8,
                                     np.uint8, np.uint64, np.bool_])


@SETTINGS
@given(data=st.data(), dtype=_roundtrip_dtypes, rows=st.integers(1, 4), cols=st.integers(1, 5))
def test_valid_arrays_round_trip_through_every_form(data, dtype, rows: int, cols: int):
    arr = data.draw(hnp.arrays(dtype, (rows, cols), elements={"allow_nan": False,
                                                              "allow_infinity": False}
                               if np.dtype(dtype).kind == "f" else None))
    spec = TensorSpec("x", NUMPY_TO_V2[np.dtype(dtype)], (-1, cols))
    from_json = decode_json_inputs({"x": arr.tolist()}, [spec], LIMITS)["x"]
    entry = {"name": "x", "shape": [rows, cols], "datatype": spec.datatype}
    json_body = orjson.dumps({"inputs": [{**entry, "data": arr.ravel().tolist()}]})
    bin_header = orjson.dumps(
        {"inputs": [{**entry, "parameters": {"binary_data_size": arr.nbytes}}]})
    from_v2 = decode_v2_request(json_body, None, [spec], ["x"], LIMITS).inputs["x"]
    from_bin = decode_v2_request(bin_header + arr.tobytes(), len(bin_header), [spec], ["x"],
                                 LIMITS).inputs["x"]
    for decoded in (from_json, from_v2, from_bin):
        assert decoded.dtype == arr.dtype
        np.testing.assert_array_equal(decoded, arr)
    for binary in (False, True):
        body, headers = encode_v2_response("m", 1, None, {"x": arr}, None, binary)
        length = headers.get("Inference-Header-Content-Length")
        result = triton.InferenceServerClient.parse_response_body(
            body, header_length=int(length) if length else None)
        np.testing.assert_array_equal(result.as_numpy("x"), arr)
