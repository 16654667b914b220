"""KServe's Python model server (`kserve.ModelServer`, uvicorn) serving ONNX files with
onnxruntime over the V2 (Open Inference) protocol: the peer a KServe user would write.

    .bench-peers/kserve/bin/python bench/peer_servers/kserve_onnx.py \
        --http_port 8080 --workers 2 --model digits=/path/logreg.onnx --model mlp=/path/mlp.onnx

One intra-op thread per session, as the gateway and the floors run; `predict` is synchronous,
which KServe calls on its event loop (the fastest way for sub-millisecond models).
"""

from __future__ import annotations

import argparse
from typing import Any

import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
from kserve import model_server as kserve_server
from kserve.utils.utils import from_np_dtype, generate_uuid


def session(path: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


class OnnxModel(Model):  # type: ignore[misc]
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        self.load()

    def load(self) -> bool:
        self.session = session(self.path)
        self.names = [o.name for o in self.session.get_outputs()]
        self.ready = True
        return True

    def __getstate__(self) -> dict[str, Any]:
        """`--workers 2` pickles models into spawned processes: send the path, not the
        session, and load it again there."""
        state = dict(self.__dict__)
        state.pop("session", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.load()

    def predict(self, payload: InferRequest, headers: dict[str, str] | None = None,
                response_headers: dict[str, str] | None = None) -> InferResponse:
        feeds = {i.name: i.as_numpy() for i in payload.inputs}
        outputs = []
        for name, value in zip(self.names, self.session.run(self.names, feeds), strict=True):
            out = InferOutput(name=name, shape=list(value.shape),
                              datatype=from_np_dtype(value.dtype))
            out.set_data_from_numpy(value, binary_data=False)
            outputs.append(out)
        return InferResponse(response_id=payload.id or generate_uuid(), model_name=self.name,
                             infer_outputs=outputs)


def main() -> None:
    parser = argparse.ArgumentParser(parents=[kserve_server.parser])
    parser.add_argument("--model", action="append", required=True, help="name=path.onnx")
    args: Any = parser.parse_args()
    models = [OnnxModel(*spec.split("=", 1)) for spec in args.model]
    ModelServer(http_port=args.http_port, workers=args.workers, enable_grpc=False,
                enable_docs_url=False).start(models)


if __name__ == "__main__":
    main()
