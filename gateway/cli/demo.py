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
from registry.migrate import upgrade
from registry.records import PolicyRecord
from registry.store import Store

MODEL = "digits"
DEMO_TOKENS = {"ops": "demo-ops", "analyst": "demo-analyst", "app": "demo-app"}


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
    """90/10 between logreg and mlp with forest as a 100% shadow, set once (re-runs keep the
    policy a person may have changed since)."""
    from registry.traffic import live_policy

    current = live_policy(services.db, MODEL)
    if current is not None:
        return current
    body = {"weights": {str(numbers["logreg"]): 90, str(numbers["mlp"]): 10},
            "shadow": {str(numbers["forest"]): 100}, "reason": "demo: 10% canary of mlp"}
    return services.traffic.set(MODEL, body, "demo", None)


def run_demo(settings: Settings, workdir: Path, serve_after: bool, bind: str) -> None:
    started = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url)
    services = build_services(settings, background=False)
    db, store = services.db, services.store
    numbers = register_examples(db, store, workdir / "demo-models", settings.max_model_bytes)
    evaluate_examples(db, store, workdir / "demo-models", numbers, settings.max_model_bytes)
    service.set_alias(db, MODEL, "champion", numbers["logreg"], "demo", "demo setup")
    service.set_alias(db, MODEL, "challenger", numbers["mlp"], "demo", "demo setup")
    policy = demo_policy(services, numbers)
    demo_tokens = fresh_demo_tokens(db)
    services.close()
    from models.examples import load_test_split

    X, y = load_test_split(workdir / "demo-models")
    row, label = X[0], int(y[0])
    took = time.monotonic() - started
    print(f"\nmodel-gateway demo: registered {MODEL} versions "
          f"{', '.join(f'{n}={v}' for n, v in numbers.items())} in {took:.1f} s")
    print("\nTokens (shown once; each run of the demo replaces them):")
    for role, token in demo_tokens.items():
        print(f"  {role:8s} {token}")
    base = f"http://{bind}"
    print("\nPredict the first digit of the held-out test split "
          f"(its true label is {label}):")
    print(f"  {predict_curl(base, demo_tokens['app'], row)}")
    print(f"\nTraffic: revision {policy['revision']}, weights {policy['weights']} "
          f"(logreg 90% / mlp 10%), shadow {policy['shadow']} (forest sees a copy of every "
          "routed request). Change it with:")
    print(f"  ../.venv/bin/gateway traffic show {MODEL}")
    print(f"  ../.venv/bin/gateway traffic set {MODEL} {numbers['logreg']}=50 "
          f"{numbers['mlp']}=50 --shadow {numbers['forest']}=100 --reason 'widen the canary'")
    print(f"  ../.venv/bin/gateway traffic rollback {MODEL} --reason 'back to 90/10'")
    print(f"  ../.venv/bin/gateway traffic history {MODEL}")
    print("\nOther things to try:")
    print(f"  curl -s -H 'Authorization: Bearer {demo_tokens['ops']}' {base}/admin/models")
    print("  ../.venv/bin/gateway models list      (from the .demo directory)")
    print(f"  ../.venv/bin/gateway models show {MODEL} {numbers['mlp']}      (its evaluation on "
          "the held-out split)")
    print(f"  ../.venv/bin/gateway models quantize {MODEL} {numbers['mlp']}  (an INT8 copy, "
          "evaluated beside it)")
    print(f"  ../.venv/bin/gateway rollout start {MODEL} --candidate {numbers['mlp']} "
          "--min-samples 50   (moves on labelled feedback; docs/lifecycle.md)")
    if serve_after:
        from gateway.cli.serve import serve

        print(f"\nserving on {base} (Ctrl-C to stop)\n", flush=True)
        serve(settings, bind=bind, workers=2)
