"""Peak memory of storing and loading a large model, by store: is anything held twice?

Each case runs in a fresh process (`--case`), so its peak resident set (`ru_maxrss`) is its
own. A process first reads the model's bytes (as a registration holds the upload), records
its peak, then stores them (`put`) and records the peak again; a second process, with nothing
in memory, loads the stored artifact as the runtime does (`load_path` + an onnxruntime
session), against a baseline process that loads the original file the same way. Reported: the
growth of the peak, in MiB. A sealed artifact is decrypted into a memfd, whose pages are
kernel memory (like a plain file's page cache), not in the resident set.

    .venv/bin/python -m bench.store_memory [--mib 300]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

MIB = 1024 * 1024


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def store_for(kind: str, work: Path, key: str | None):
    from registry.model_cache import ModelCache
    from registry.object_store import S3Store
    from registry.sealing import Keyring
    from registry.store import ArtifactStore

    keyring = Keyring(bytes.fromhex(key)) if key else Keyring()
    if kind == "local":
        return ArtifactStore(work / "local", keyring)
    cache = ModelCache(work / f"cache-{uuid.uuid4().hex}", 2**40)  # cold for every process
    return S3Store(f"s3://{os.environ['BENCH_BUCKET']}/{work.name}", cache, keyring)


def case(args: argparse.Namespace) -> dict[str, float]:
    import onnxruntime as ort

    work = Path(args.work)
    if args.case == "put":
        data = (work.parent / "model.onnx").read_bytes()  # as a registration holds the upload
        held = peak_mib()
        sha = store_for(args.kind, work, args.key).put(data)
        (work / "sha").write_text(sha)
        return {"before": held, "after": peak_mib()}
    sha = (work / "sha").read_text()
    before = peak_mib()
    if args.case == "load-file":
        ort.InferenceSession(str(work.parent / "model.onnx"), providers=["CPUExecutionProvider"])
    else:
        with store_for(args.kind, work, args.key).load_path(sha) as path:
            ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return {"before": before, "after": peak_mib()}


def run(work: Path, kind: str, key: str | None, which: str, mib: int) -> dict[str, float]:
    argv = [sys.executable, "-m", "bench.store_memory", "--case", which, "--kind", kind,
            "--work", str(work), "--mib", str(mib)] + (["--key", key] if key else [])
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=300)
    parser.add_argument("--case", choices=["put", "load", "load-file"])
    parser.add_argument("--kind", choices=["local", "s3"], default="local")
    parser.add_argument("--work")
    parser.add_argument("--key")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(case(args)))
        return

    from tests.s3_server import SeaweedS3

    root = Path(tempfile.mkdtemp(prefix="mgw-store-mem-"))
    server = SeaweedS3(root / "seaweed").start()
    try:
        os.environ.update(server.env())
        bucket = f"mem-{uuid.uuid4().hex[:8]}"
        server.client().create_bucket(Bucket=bucket)
        os.environ["BENCH_BUCKET"] = bucket
        key = os.urandom(32).hex()
        # built in a process of its own: Linux keeps the peak across fork and exec, so the
        # builder's peak must not be the parent of the measured processes
        subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                        "from bench.store_load import big_model; "
                        "Path(sys.argv[1]).write_bytes(big_model(int(sys.argv[2])))",
                        str(root / "model.onnx"), str(args.mib)], check=True)
        print(f"model: {args.mib} MiB; peaks in MiB; growth = peak - what was in memory before")
        print("| case | before | peak | growth |")
        print("| --- | ---: | ---: | ---: |")
        for kind, sealed in (("local", None), ("local", key), ("s3", None), ("s3", key)):
            work = root / f"{kind}-{'sealed' if sealed else 'plain'}"
            work.mkdir()
            label = f"{kind}, {'encrypted' if sealed else 'plain'}"
            put = run(work, kind, sealed, "put", args.mib)
            load = run(work, kind, sealed, "load", args.mib)
            print(f"| store ({label}), model held | {put['before']:.0f} | {put['after']:.0f} "
                  f"| {put['after'] - put['before']:.0f} |")
            print(f"| load ({label}{', cold cache' if kind == 's3' else ''}) | "
                  f"{load['before']:.0f} | {load['after']:.0f} | "
                  f"{load['after'] - load['before']:.0f} |")
        base = run(root / "local-plain", "local", None, "load-file", args.mib)
        print(f"| onnxruntime on the original file (baseline) | {base['before']:.0f} | "
              f"{base['after']:.0f} | {base['after'] - base['before']:.0f} |")
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
