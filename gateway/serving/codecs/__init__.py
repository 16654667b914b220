"""Wire payloads <-> numpy arrays, checked against a model version's recorded signature.

Two request forms come in: the gateway's own `/predict` JSON (nested lists keyed by input name)
and the Open Inference Protocol (KServe V2 / Triton) with its binary tensor data extension. Both
end up as C-contiguous arrays of exactly the dtype the model declares, or as `InvalidInput` with
a message a person can act on; nothing else may escape, whatever the caller sends.

Three modules: `tensors` (datatypes, limits, the shape and value checks both forms share),
`predict_json` and `v2`. No Flask here: the HTTP layer hands over parsed JSON or raw bytes and
gets arrays back, so the codecs can be tested (and fuzzed) without a server. Element-wise work
is left to numpy and C-level builtins (`set(map(type, ...))`, `itertools.chain`), never to
Python loops, because the codecs sit on the hot path of every inference request.
"""
