"""Micro-batching: merged runs on real onnxruntime sessions, settings via CLI and admin API,
and a served gateway merging concurrent requests."""

from __future__ import annotations

import http.client
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import orjson
import pytest
from onnx import TensorProto, helper, numpy_helper

from bench.mlp import build_mlp
from gateway.cli.main import main as cli_main
from gateway.serving.batching import Batcher, BatchSettings, merge_refusal
from gateway.serving.catalog import VersionInfo
from gateway.serving.codecs.tensors import TensorSpec
from gateway.serving.runtime import ModelRuntime
from registry import service
from registry.inspect_onnx import inspect_model, session_options
from registry.store import ArtifactStore
from tests.conftest import bearer, error_of, server_env
from tests.onnx_factory import add_constant_model
from tests.server import gateway_server

pytestmark = pytest.mark.timeout(120)


# -- real models -----------------------------------------------------------------------------

def _model(nodes, inputs, outputs, inits=()) -> bytes:
    graph = helper.make_graph(nodes, "t", inputs, outputs, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def gather_model() -> bytes:
    """y = table[idx]: an index out of range fails the run, whatever the other rows hold."""
    table = numpy_helper.from_array(np.arange(40, dtype=np.float32).reshape(10, 4), "table")
    return _model([helper.make_node("Gather", ["table", "idx"], ["y"], axis=0)],
                  [helper.make_tensor_value_info("idx", TensorProto.INT64, ["N"])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [table])


def two_output_model() -> bytes:
    """y = relu(x), z = -x, x float [N, W] with both dimensions free."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "W"])
    return _model([helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["x"], ["z"])],
                  [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "W"]),
                        helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", "W"])])


def column_sum_model() -> bytes:
    """y = sum of x over the batch: one row whatever N is (not a batch dimension)."""
    axes = numpy_helper.from_array(np.array([0], dtype=np.int64), "axes")
    return _model([helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=1)],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [axes])


def centred_model() -> bytes:
    """y = x - mean of x over the batch: [N, 4], but each row depends on the others."""
    return _model([helper.make_node("ReduceMean", ["x"], ["m"], axes=[0], keepdims=1),
                   helper.make_node("Sub", ["x", "m"], ["y"])],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])


def fixed_batch_model() -> bytes:
    return _model([helper.make_node("Relu", ["x"], ["y"])],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])


def _session(data: bytes | Path) -> ort.InferenceSession:
    source = str(data) if isinstance(data, Path) else data
    return ort.InferenceSession(source, sess_options=session_options(1),
                                providers=["CPUExecutionProvider"])


def _specs(data: bytes) -> tuple[list[TensorSpec], list[TensorSpec]]:
    signature = inspect_model(data)
    return ([TensorSpec.from_record(r) for r in signature.inputs],
            [TensorSpec.from_record(r) for r in signature.outputs])


@pytest.fixture(scope="module")
def mlp_bytes(tmp_path_factory) -> bytes:
    return build_mlp(tmp_path_factory.mktemp("mlp") / "mlp.onnx").read_bytes()


class CountingSession:
    """A real session that records how many rows each `run` got and can hold the first run
    until released, so that followers queue up behind it deterministically."""

    def __init__(self, session: ort.InferenceSession, hold_first: bool = False) -> None:
        self.session = session
        self.rows: list[int] = []
        self.running = threading.Event()
        self.release = threading.Event()
        if not hold_first:
            self.release.set()
        self._lock = threading.Lock()

    def get_outputs(self) -> Any:
        return self.session.get_outputs()

    def run(self, names: list[str], feed: dict[str, np.ndarray]) -> list[Any]:
        with self._lock:
            self.rows.append(next(iter(feed.values())).shape[0])
        self.running.set()
        self.release.wait()
        return self.session.run(names, feed)


def _wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def _queue_behind_a_held_run(batcher: Batcher, session: CountingSession,
                             feeds: list[dict[str, np.ndarray]], outputs=None):
    """Start feeds[0] (its run is held), queue the others behind it in order, then release."""
    results: list[Any] = [None] * len(feeds)

    def call(i: int) -> None:
        try:
            results[i] = batcher.run(feeds[i], outputs[i] if outputs else None)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=call, args=(0,))]
    threads[0].start()
    session.running.wait(10)
    for i in range(1, len(feeds)):
        threads.append(threading.Thread(target=call, args=(i,)))
        threads[-1].start()
        _wait_for(lambda i=i: batcher.queued == i)
    session.release.set()
    for thread in threads:
        thread.join(10)
    return results


# -- the batcher -----------------------------------------------------------------------------

@pytest.mark.parametrize("max_wait_us", [0, 2000])
def test_merged_results_equal_each_request_run_alone(mlp_bytes, max_wait_us):
    direct = _session(mlp_bytes)
    counting = CountingSession(_session(mlp_bytes))
    requests_per_run: list[int] = []
    batcher = Batcher(counting, BatchSettings(64, max_wait_us), requests_per_run.append)
    rng = np.random.default_rng(1)
    feeds = [rng.standard_normal((1 + i % 3, 512)).astype(np.float32) for i in range(480)]
    got: dict[int, np.ndarray] = {}
    barrier = threading.Barrier(16)

    def worker(first: int) -> None:
        barrier.wait()
        for i in range(first, len(feeds), 16):
            got[i] = batcher.run({"input": feeds[i]}, ["logits"])["logits"]

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(got) == len(feeds)
    for i, x in enumerate(feeds):
        (expected,) = direct.run(["logits"], {"input": x})
        assert got[i].shape == expected.shape
        np.testing.assert_allclose(got[i], expected, rtol=1e-6, atol=1e-6)
    assert sum(requests_per_run) == len(feeds)
    assert len(counting.rows) == len(requests_per_run) < len(feeds)  # fewer runs than requests
    assert max(requests_per_run) > 1
    assert max(counting.rows) <= 64


def test_queued_requests_merge_into_runs_of_at_most_max_batch_rows(mlp_bytes):
    counting = CountingSession(_session(mlp_bytes), hold_first=True)
    requests_per_run: list[int] = []
    batcher = Batcher(counting, BatchSettings(4), requests_per_run.append)
    rng = np.random.default_rng(2)
    # the first is held; then six one-row requests, a 3-row, a 1-row and a 6-row (more rows
    # than max_batch)
    sizes = [1] + [1] * 6 + [3, 1, 6]
    feeds = [{"input": rng.standard_normal((n, 512)).astype(np.float32)} for n in sizes]
    results = _queue_behind_a_held_run(batcher, counting, feeds)
    # the held one; four ones; two ones and the later one (the 3 would make 5); the 3; the 6,
    # whole and alone
    assert counting.rows == [1, 4, 3, 3, 6]
    assert sum(requests_per_run) == len(feeds)
    direct = _session(mlp_bytes)
    for feed, result in zip(feeds, results, strict=True):
        np.testing.assert_allclose(result["logits"], direct.run(None, feed)[0], rtol=1e-6,
                                   atol=1e-6)


def test_only_requests_of_the_same_shape_and_outputs_merge():
    counting = CountingSession(_session(two_output_model()), hold_first=True)
    batcher = Batcher(counting, BatchSettings(64))
    widths = [4, 4, 4, 3, 4, 4, 3]
    outputs = [None, None, ["y"], None, ["y", "z"], ["y"], None]
    feeds = [{"x": np.full((1, w), -i, dtype=np.float32)} for i, w in enumerate(widths)]
    results = _queue_behind_a_held_run(batcher, counting, feeds, outputs)
    # the held one; 1 with 4 (all outputs, width 4); 2 with 5 (y); 3 with 6 (width 3)
    assert counting.rows == [1, 2, 2, 2]
    for i, result in enumerate(results):
        assert sorted(result) == sorted(outputs[i] or ["y", "z"])
        np.testing.assert_array_equal(result["y"], np.zeros((1, widths[i]), np.float32))
        if "z" in result:
            np.testing.assert_array_equal(result["z"], np.full((1, widths[i]), i, np.float32))


def test_a_bad_request_in_a_merged_run_gets_its_own_error():
    counting = CountingSession(_session(gather_model()), hold_first=True)
    batcher = Batcher(counting, BatchSettings(64))
    indices = [[1], [2, 3], [99], [4], [-50, 5]]  # 99 and -50 are out of the table's 10 rows
    feeds = [{"idx": np.array(i, dtype=np.int64)} for i in indices]
    results = _queue_behind_a_held_run(batcher, counting, feeds)
    # the held run; the four queued merged into 6 rows, which failed; each retried on its own
    assert counting.rows == [1, 6, 2, 1, 1, 2]
    table = np.arange(40, dtype=np.float32).reshape(10, 4)
    for i in (0, 1, 3):
        np.testing.assert_array_equal(results[i]["y"], table[indices[i]])
    for i in (2, 4):
        assert isinstance(results[i], Exception) and "out of data bounds" in str(results[i])
        assert f"idx={indices[i][0]}" in str(results[i])


def test_one_caller_runs_alone_and_never_waits(mlp_bytes):
    counting = CountingSession(_session(mlp_bytes))
    requests_per_run: list[int] = []
    batcher = Batcher(counting, BatchSettings(32, max_wait_us=100_000), requests_per_run.append)
    x = {"input": np.ones((1, 512), np.float32)}
    slowest = 0.0
    for _ in range(50):
        started = time.perf_counter()
        batcher.run(x, None)
        slowest = max(slowest, time.perf_counter() - started)
    assert counting.rows == [1] * 50 and requests_per_run == [1] * 50
    assert slowest < 0.05  # far below the 100 ms the settings would allow a leader to wait


def _requests_per_run(session: ort.InferenceSession, max_wait_us: int) -> list[int]:
    """Four callers that each spend 2 ms elsewhere (decoding, say) between their requests."""
    requests_per_run: list[int] = []
    batcher = Batcher(session, BatchSettings(32, max_wait_us), requests_per_run.append)
    x = {"input": np.ones((1, 512), np.float32)}

    def caller() -> None:
        for _ in range(40):
            batcher.run(x, None)
            time.sleep(0.002)

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sum(requests_per_run) == 160
    return requests_per_run


def test_a_leader_waits_for_callers_on_their_way_only_when_told_to(mlp_bytes):
    session = _session(mlp_bytes)
    without = _requests_per_run(session, 0)
    waiting = _requests_per_run(session, 50_000)
    # Callers come back every 2 ms while a run takes well under that: without a wait most
    # runs are alone; with one, a leader waits for the others (all four are rarely late).
    assert np.mean(waiting) > max(2.5, np.mean(without) + 0.5), (without, waiting)


@pytest.mark.parametrize("model, reason", [
    (column_sum_model, "fixed first dimension"),
    (centred_model, "depends on the other rows"),
    (fixed_batch_model, "no free first"),
])
def test_models_whose_outputs_are_not_per_row_are_refused(model, reason):
    data = model()
    inputs, outputs = _specs(data)
    refusal = merge_refusal(_session(data), inputs, outputs)
    assert refusal is not None and reason in refusal


def test_an_output_that_does_not_grow_with_the_batch_is_refused_by_the_probe():
    data = column_sum_model()
    inputs, outputs = _specs(data)
    unknown = [TensorSpec(o.name, o.datatype, (-1, 4)) for o in outputs]  # signature says N
    refusal = merge_refusal(_session(data), inputs, unknown)
    assert refusal is not None and "does not grow with the batch" in refusal


def test_mlp_and_gather_may_be_merged(mlp_bytes):
    for data in (mlp_bytes, gather_model()):
        assert merge_refusal(_session(data), *_specs(data)) is None


def _version(store: ArtifactStore, data: bytes, model: str, batching) -> VersionInfo:
    sha = store.put(data)
    inputs, outputs = _specs(data)
    return VersionInfo(model, 1, sha, len(data), tuple(inputs), tuple(outputs), "registered",
                       batching)


def _observed(runtime: ModelRuntime, model: str) -> tuple[float, float]:
    """(runs, requests) from the runtime's batch-size histogram."""
    samples = {s.name: s.value for metric in runtime.batch_sizes.collect()
               for s in metric.samples if s.labels.get("model") == model}
    return samples.get("gateway_batch_requests_count", 0), samples.get(
        "gateway_batch_requests_sum", 0)


def test_runtime_batches_only_models_with_settings_and_never_unsplittable_ones(tmp_path,
                                                                               mlp_bytes):
    store = ArtifactStore(tmp_path / "store")
    runtime = ModelRuntime(store, 8, 1 << 30, 1)
    off = _version(store, mlp_bytes, "mlp", None)
    on = _version(store, mlp_bytes, "mlp", BatchSettings(8))
    assert runtime.get(off).batcher is None
    batched = runtime.get(on)
    assert batched.batcher is not None and runtime.get(on) is batched
    assert runtime.get(off).session is batched.session  # one session, loaded once
    wider = runtime.get(_version(store, mlp_bytes, "mlp", BatchSettings(16)))
    assert wider.batcher is not None and wider.batcher.settings.max_batch == 16
    x = np.ones((2, 512), np.float32)
    np.testing.assert_allclose(wider.run({"input": x}, None)["logits"],
                               runtime.get(off).run({"input": x}, None)["logits"], atol=1e-6)
    assert _observed(runtime, "mlp") == (1, 1)
    refused = _version(store, column_sum_model(), "sums", BatchSettings(8))
    assert runtime.get(refused).batcher is None
    assert "fixed first dimension" in runtime.merge_refusals[refused.sha256]
    runtime.close()


# -- settings: CLI and admin API, on both databases ------------------------------------------

def _register(settings, db, name: str, data: bytes) -> None:
    service.register_version(db, ArtifactStore(settings.model_store), name, data, None, "tests",
                             max_bytes=64 << 20)  # the MLP is 10 MB


def _batching_audits(db, model: str) -> list[dict[str, Any]]:
    return [e for e in service.list_audit(db, model=model) if e["action"] == "model.batching"]


def test_cli_sets_shows_and_refuses_batching_settings(cli, capsys, settings, db):
    _register(settings, db, "m", add_constant_model(1.0))
    for argv, says in [
        (["--max-batch", "0"], "max_batch must be an integer from 1 to 4096"),
        (["--max-batch", "4097"], "from 1 to 4096"),
        (["--max-batch", "eight"], "--max-batch must be an integer"),
        (["--max-batch", "8", "--max-wait-us", "100001"], "max_wait_us must be an integer "
                                                          "from 0 to 100000"),
        (["--max-batch", "8", "--max-wait-us", "-1"], "from 0 to 100000"),
        (["--off", "--max-wait-us", "5"], "--off takes no --max-wait-us"),
    ]:
        status, out, err = cli(capsys, "models", "batching", "m", *argv, "--reason", "r")
        assert status == 2 and out == "" and says in err
        assert len(err.strip().splitlines()) == 1, err
    status, _, err = cli(capsys, "models", "batching", "nope", "--max-batch", "8", "--reason", "r")
    assert status == 2 and "unknown_model" in err and len(err.strip().splitlines()) == 1
    assert service.get_batching(db, "m")["enabled"] is False and not _batching_audits(db, "m")

    status, out, _ = cli(capsys, "models", "batching", "m", "--max-batch", "32",
                         "--max-wait-us", "500", "--reason", "merge under load", "--json")
    assert status == 0
    assert orjson.loads(out) == {"model": "m", "enabled": True, "max_batch": 32,
                                 "max_wait_us": 500}
    status, out, _ = cli(capsys, "models", "show", "m")
    assert status == 0 and "micro-batching on, up to 32 rows per run, max wait 500 us" in out
    status, out, _ = cli(capsys, "models", "show", "m", "--json")
    assert orjson.loads(out)["batching"] == {"max_batch": 32, "max_wait_us": 500}
    status, out, _ = cli(capsys, "models", "show", "m", "1", "--json")
    assert orjson.loads(out)["batching"] == {"max_batch": 32, "max_wait_us": 500}
    status, out, _ = cli(capsys, "models", "batching", "m", "--max-batch", "8", "--reason", "r")
    assert status == 0 and "up to 8 rows per run, max wait 0 us" in out
    status, out, _ = cli(capsys, "models", "batching", "m", "--off", "--reason", "done")
    assert status == 0 and "micro-batching off" in out
    status, out, _ = cli(capsys, "models", "show", "m", "1")
    assert "  micro-batching: off" in out
    audits = _batching_audits(db, "m")
    assert [a["detail"]["to"] for a in audits] == [None, {"max_batch": 8, "max_wait_us": 0},
                                                   {"max_batch": 32, "max_wait_us": 500}]
    assert audits[0]["reason"] == "done" and audits[0]["actor"].startswith("cli")


def test_admin_api_sets_and_refuses_batching_settings(client, app, settings, db, ops,
                                                      role_tokens):
    _register(settings, db, "m", add_constant_model(1.0))
    url = "/admin/models/m/batching"
    assert client.get(url, headers=ops).get_json() == {
        "model": "m", "enabled": False, "max_batch": None, "max_wait_us": None}
    for body in [{"max_batch": 0}, {"max_batch": 4097}, {"max_batch": "8"}, {"max_batch": True},
                 {"max_batch": 8.0}, {"max_batch": 8, "max_wait_us": -1},
                 {"max_batch": 8, "max_wait_us": 100_001}, {"max_batch": 8, "extra": 1},
                 {"enabled": False, "max_batch": 8}, {"enabled": "no"}, {},
                 {"max_batch": 8, "reason": 5}, [8]]:
        response = client.put(url, json=body, headers=ops)
        assert response.status_code == 400, body
        assert error_of(response)["code"] == "invalid_input"
    assert client.put("/admin/models/nope/batching", json={"max_batch": 8},
                      headers=ops).status_code == 404
    assert client.put(url, json={"max_batch": 8},
                      headers=bearer(role_tokens["app"])).status_code == 403
    assert client.get(url, headers=ops).get_json()["enabled"] is False
    assert not _batching_audits(db, "m")

    response = client.put(url, json={"max_batch": 16, "max_wait_us": 250, "reason": "load"},
                          headers=ops)
    assert response.status_code == 200
    assert response.get_json() == {"model": "m", "enabled": True, "max_batch": 16,
                                   "max_wait_us": 250}
    assert client.get(url, headers=ops).get_json()["max_batch"] == 16
    listed = client.get("/admin/models", headers=ops).get_json()["models"]
    assert listed[0]["batching"] == {"max_batch": 16, "max_wait_us": 250}
    catalog = app.extensions["mgw"].catalog
    catalog.reload()
    assert catalog.model("m").batching == BatchSettings(16, 250)
    assert catalog.version("m", 1)[0].batching == BatchSettings(16, 250)
    response = client.put(url, json={"enabled": False, "reason": "off again"}, headers=ops)
    assert response.status_code == 200 and response.get_json()["enabled"] is False
    catalog.reload()
    assert catalog.model("m").batching is None and catalog.version("m", 1)[0].batching is None
    audits = _batching_audits(db, "m")
    assert [a["reason"] for a in audits] == ["off again", "load"]


# -- a served gateway ------------------------------------------------------------------------

def _scrape(base: str) -> dict[str, float]:
    conn = http.client.HTTPConnection(base.removeprefix("http://"), timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    out = {"runs": 0.0, "requests": 0.0}
    for line in text.splitlines():
        if 'model="mlp"' in line and line.startswith("gateway_batch_requests_count"):
            out["runs"] += float(line.rsplit(" ", 1)[1])
        if 'model="mlp"' in line and line.startswith("gateway_batch_requests_sum"):
            out["requests"] += float(line.rsplit(" ", 1)[1])
    return out


def _predict_all(base: str, token: str, rows: np.ndarray, threads: int) -> dict[int, Any]:
    answers: dict[int, Any] = {}

    def worker(first: int) -> None:
        conn = http.client.HTTPConnection(base.removeprefix("http://"), timeout=30)
        for i in range(first, len(rows), threads):
            conn.request("POST", "/predict", body=orjson.dumps(
                {"model": "mlp", "inputs": {"input": rows[i:i + 1].tolist()}}),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
            response = conn.getresponse()
            answers[i] = (response.status, orjson.loads(response.read()))
        conn.close()

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(60)
    return answers


@pytest.fixture
def sqlite_settings(tmp_path, redis_prefix):
    """Serving does not depend on the database kind (the settings are tested on both)."""
    from gateway.settings import Settings
    from registry.migrate import upgrade
    from tests.conftest import REDIS_URL

    url = f"sqlite:///{tmp_path / 'served.db'}"
    upgrade(url)
    return Settings(database_url=url, model_store=tmp_path / "store", redis_url=REDIS_URL,
                    redis_prefix=redis_prefix, state_dir=tmp_path / "state")


def test_served_gateway_merges_concurrent_requests_after_the_cli_turns_batching_on(
        sqlite_settings, mlp_bytes, tmp_path, monkeypatch, capsys):
    from registry import tokens
    from registry.db import Database

    settings = sqlite_settings
    db = Database(settings.database_url)
    _register(settings, db, "mlp", mlp_bytes)
    token = tokens.create_token(db, "app", "served", "tests")
    db.dispose()
    rng = np.random.default_rng(3)
    rows = rng.standard_normal((400, 512)).astype(np.float32)
    (expected,) = _session(mlp_bytes).run(["logits"], {"input": rows})
    # merging needs several requests in one worker at once: threads, not the sync default
    env = {**server_env(settings), "GATEWAY_WORKER_CLASS": "gthread", "GATEWAY_THREADS": "8"}
    with gateway_server(env, workers=2, cwd=tmp_path) as base:
        assert _scrape(base)["runs"] == 0
        for key, value in server_env(settings).items():
            monkeypatch.setenv(key, value)
        assert cli_main(["models", "batching", "mlp", "--max-batch", "32", "--reason",
                         "served test"]) == 0
        deadline = time.monotonic() + 10  # both workers reload within a poll (0.5 s)
        while _scrape(base)["runs"] == 0:
            assert time.monotonic() < deadline, "batching never reached the gateway"
            _predict_all(base, token, rows[:4], 1)
        time.sleep(1.0)
        before = _scrape(base)
        answers = _predict_all(base, token, rows, 16)
        after = _scrape(base)
    assert len(answers) == len(rows)
    for i, (status, body) in answers.items():
        assert status == 200, body
        np.testing.assert_allclose(np.array(body["outputs"]["logits"], np.float32),
                                   expected[i:i + 1], rtol=1e-5, atol=1e-5)
    runs, requests = after["runs"] - before["runs"], after["requests"] - before["requests"]
    print(f"{requests:.0f} requests in {runs:.0f} runs")
    assert requests == len(rows)  # every request went through a batcher...
    assert runs < requests * 0.9  # ...and many shared a run with others
