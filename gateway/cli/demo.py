"""`gateway demo`: from an empty directory to a serving gateway with the example models.

Idempotent: a second run finds the versions already registered (by sha256) and re-uses them;
it replaces the demo's tokens, since a token is only ever shown once.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from gateway.services import Services, build_services
from gateway.settings import Settings
from registry import service, tokens
from registry.db import Database
from registry.errors import GatewayError
from registry.migrate import upgrade
from registry.records import PolicyRecord
from registry.store import Store

MODEL = "digits"
DEMO_TOKENS = {"ops": "demo-ops", "analyst": "demo-analyst", "app": "demo-app",
               "feedback": "demo-feedback"}
SCENARIOS = ("promote", "rollback")
DEMO_STEPS = [10, 25, 50, 100]


def register_examples(db: Database, store: Store, models_dir: Path,
                      max_bytes: int) -> dict[str, int]:
    """Build the example models and register each once; returns example name -> version."""
    from models.examples import build_examples, dataset_info

    existing: dict[str, int] = {}
    for model in service.list_models(db):
        if model["model"] == MODEL:
            existing = {v["sha256"]: v["version"] for v in model["versions"]}
    numbers: dict[str, int] = {}
    for example in build_examples(models_dir):
        data = example.path.read_bytes()
        digest = service_sha256(data)
        if digest in existing:
            numbers[example.name] = existing[digest]
            continue
        metadata: dict[str, Any] = {
            "description": example.description,
            "dataset": dataset_info(),
            "params": example.params,
            "metrics": example.metrics,
        }
        if example.parent is not None:
            metadata["parent_version"] = numbers[example.parent]
        record = service.register_version(db, store, MODEL, data, metadata, "demo", max_bytes)
        numbers[example.name] = record["version"]
    return numbers


def evaluate_examples(db: Database, store: Store, models_dir: Path,
                      numbers: dict[str, int], max_bytes: int) -> None:
    """Evaluate each example on the held-out split once (re-runs skip versions that already
    have an evaluation on it), so `models show`, the gate and drift have data from the start."""
    from gateway.lifecycle.datasets import load_dataset
    from gateway.lifecycle.evaluation import evaluate
    from models.examples import TEST_FILE
    from registry.evaluations import latest_evaluation

    dataset = load_dataset(models_dir / TEST_FILE, max_bytes)
    for version in numbers.values():
        if latest_evaluation(db, MODEL, version, dataset.sha256) is None:
            evaluate(db, store, MODEL, version, dataset, "demo")


def service_sha256(data: bytes) -> str:
    from registry.store import sha256_hex

    return sha256_hex(data)


def fresh_demo_tokens(db: Database) -> dict[str, str]:
    out = {}
    active = {t["name"] for t in tokens.list_tokens(db) if t["revoked_at"] is None}
    for role, name in DEMO_TOKENS.items():
        if name in active:
            tokens.revoke_token(db, name, "demo")
        out[role] = tokens.create_token(db, role, name, "demo")
    return out


def predict_curl(base: str, token: str, row: Any) -> str:
    """A one-line curl a person can paste: the row's 64 pixel values as JSON."""
    pixels = ", ".join(f"{float(v):g}" for v in row)
    body = f'{{"model": "{MODEL}", "inputs": [[{pixels}]]}}'
    return (f"curl -s -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' "
            f"-d '{body}' {base}/predict")


def demo_policy(services: Services, numbers: dict[str, int]) -> PolicyRecord:
    """All traffic to logreg (the champion) with forest as a 100% shadow, set once (re-runs
    keep the policy a person may have changed since); the rollout takes it from there."""
    from registry.traffic import live_policy

    current = live_policy(services.db, MODEL)
    if current is not None:
        return current
    body = {"weights": {str(numbers["logreg"]): 100},
            "shadow": {str(numbers["forest"]): 100},
            "reason": "demo: logreg serves, forest shadows every request"}
    return services.traffic.set(MODEL, body, "demo", None)


def demo_rollout(services: Services, candidate: int, scenario: str, min_samples: int
                 ) -> dict[str, Any] | None:
    """Start the progressive rollout of `candidate` over the champion, unless this directory's
    demo already ran one (a re-run shows it instead of starting over)."""
    from registry import rollouts as rollouts_sql

    existing = rollouts_sql.current(services.db, MODEL)
    if existing is not None:
        return None
    why = ("a better model, expected to be promoted step by step" if scenario == "promote"
           else "a retrained mlp with a label bug, expected to be rolled back")
    return dict(services.rollouts.start(MODEL, {
        "candidate": str(candidate), "steps": DEMO_STEPS, "min_samples": min_samples,
        "metric": "accuracy", "reason": f"demo: {why}"}, "demo"))


def run_demo(settings: Settings, workdir: Path, serve_after: bool, bind: str, *,
             traffic: bool = True, scenario: str = "promote", min_samples: int = 100) -> None:
    started = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url)
    services = build_services(settings, background=False)
    db, store = services.db, services.store
    models_dir = workdir / "demo-models"
    numbers = register_examples(db, store, models_dir, settings.max_model_bytes)
    if scenario == "rollback":
        numbers["mlp_flawed"] = register_flawed(db, store, models_dir, numbers,
                                                settings.max_model_bytes)
    evaluate_examples(db, store, models_dir, numbers, settings.max_model_bytes)
    if not _has_alias(db, "champion"):  # a re-run keeps the champion a rollout moved
        service.set_alias(db, MODEL, "champion", numbers["logreg"], "demo", "demo setup")
    candidate = numbers["mlp_flawed" if scenario == "rollback" else "mlp"]
    service.set_alias(db, MODEL, "challenger", candidate, "demo", "demo setup")
    demo_policy(services, numbers)
    rollout = demo_rollout(services, candidate, scenario, min_samples)
    demo_tokens = fresh_demo_tokens(db)
    services.close()
    from models.examples import load_test_split

    X, y = load_test_split(models_dir)
    row, label = X[0], int(y[0])
    took = time.monotonic() - started
    print(f"\nmodel-gateway demo: registered {MODEL} versions "
          f"{', '.join(f'{n}={v}' for n, v in numbers.items())} in {took:.1f} s")
    print("\nTokens (shown once; each run of the demo replaces them):")
    for role, token in demo_tokens.items():
        print(f"  {role:8s} {token}")
    base = f"http://{bind}"
    print(f"\nOpen the dashboard: {base}/dashboard (sign in with the analyst or ops token).")
    if rollout is not None:
        print(f"A progressive rollout of v{candidate} over the champion v{numbers['logreg']} "
              f"runs now (steps {','.join(map(str, DEMO_STEPS))}%, {min_samples} labelled "
              f"outcomes per step), forest v{numbers['forest']} shadowing every request.")
    else:
        print(f"This directory's demo rollout already ran: see `gateway rollout status "
              f"{MODEL}` (or start again from an empty --dir).")
    if traffic and serve_after:
        print(f"A simulated application sends the held-out digits at {settings.demo_rate:g} "
              "requests/s and labels most answers a few seconds later (--no-traffic: none).")
    print("\nPredict the first digit of the held-out test split "
          f"(its true label is {label}):")
    print(f"  {predict_curl(base, demo_tokens['app'], row)}")
    print("\nWatch and steer (from the .demo directory):")
    print(f"  ../.venv/bin/gateway rollout status {MODEL}")
    print(f"  ../.venv/bin/gateway rollout pause {MODEL}      (resume, abort)")
    print(f"  ../.venv/bin/gateway traffic show {MODEL}")
    print(f"  ../.venv/bin/gateway traffic history {MODEL}")
    print(f"  ../.venv/bin/gateway analytics compare {MODEL}")
    print(f"  ../.venv/bin/gateway models show {MODEL} {numbers['mlp']}      (its evaluation on "
          "the held-out split)")
    print(f"  curl -s -H 'Authorization: Bearer {demo_tokens['ops']}' {base}/admin/models")
    if not serve_after:
        return
    from gateway.cli.demo_traffic import SimulatedApplication
    from gateway.cli.serve import serve

    simulator = None
    port = bind.rsplit(":", 1)[-1]
    if traffic and not port.isdigit():
        print(f"no simulated application: it needs a TCP port to call, and --bind is {bind}")
    elif traffic:
        simulator = SimulatedApplication(int(port), demo_tokens["app"], demo_tokens["feedback"],
                                         X, y, settings.demo_rate, MODEL)
        simulator.start()
    print(f"\nserving on {base} (Ctrl-C stops the gateway and the simulated application)\n",
          flush=True)
    try:
        serve(settings, bind=bind, workers=2,
              on_stop=simulator.stop if simulator is not None else None)
    finally:
        if simulator is not None:
            simulator.stop()
            counts = simulator.counts
            print(f"simulated application: {counts.answered} answered, {counts.failed} "
                  f"failed, {counts.labelled} labelled", flush=True)


def _has_alias(db: Database, alias: str) -> bool:
    try:
        service.get_version(db, MODEL, alias)
    except GatewayError:
        return False
    return True


def register_flawed(db: Database, store: Store, models_dir: Path, numbers: dict[str, int],
                    max_bytes: int) -> int:
    """The rollback scenario's candidate (models.examples.FLAWED), a child of mlp."""
    from models.examples import build_flawed, dataset_info

    example = build_flawed(models_dir)
    data = example.path.read_bytes()
    for model in service.list_models(db):
        for version in model["versions"] if model["model"] == MODEL else []:
            if version["sha256"] == service_sha256(data):
                return int(version["version"])
    record = service.register_version(db, store, MODEL, data, {
        "description": example.description, "dataset": dataset_info(),
        "params": example.params, "metrics": example.metrics,
        "parent_version": numbers["mlp"]}, "demo", max_bytes)
    return record["version"]
