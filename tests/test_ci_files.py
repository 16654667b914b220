"""The CI/CD pipelines users copy (`deploy/ci/`), checked by parsing: each file is valid for its
format, keeps the token in the CI's secrets, and calls `gateway deliver` with a command line
the real `gateway` parser accepts. They were not run on GitHub, GitLab or Jenkins here."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from gateway.cli.deliver import cmd_deliver
from gateway.cli.main import build_parser

CI = Path(__file__).resolve().parents[1] / "deploy" / "ci"


def parse_deliver(command: str) -> Any:
    """The `gateway deliver ...` line, with the shell's substitutions filled in, parsed by the
    gateway's own argument parser."""
    command = command.replace("\\\n", " ").replace('"$(cat metadata.json)"', "'{}'")
    command = command.replace('"$MODEL_NAME"', "digits")
    argv = shlex.split(command)
    assert argv[:2] == ["gateway", "deliver"], argv
    args = build_parser().parse_args(argv[1:])
    assert args.func is cmd_deliver
    assert args.name == "digits" and args.file == "model.onnx" and args.dataset == "holdout.npz"
    assert args.timeout > 0 and args.steps == "5,25,50,100"
    return args


def test_the_github_workflow() -> None:
    doc = yaml.safe_load((CI / "github-actions.yml").read_text())
    triggers = doc.get("on", doc.get(True))  # YAML 1.1 reads a bare `on` as true
    assert "push" in triggers and "workflow_dispatch" in triggers
    job = doc["jobs"]["deliver"]
    assert job["env"]["GATEWAY_URL"] == "${{ secrets.GATEWAY_URL }}"
    assert job["env"]["GATEWAY_TOKEN"] == "${{ secrets.GATEWAY_TOKEN }}"
    runs = [step["run"] for step in job["steps"] if "run" in step]
    (deliver,) = [r for r in runs if "gateway deliver" in r]
    parse_deliver(" ".join(deliver.split()))
    assert any("sha256" in r and "metadata.json" in r for r in runs)  # data versioning


def test_the_gitlab_pipeline() -> None:
    doc = yaml.safe_load((CI / "gitlab-ci.yml").read_text())
    assert doc["stages"] == ["train", "deliver"]
    assert set(doc["train"]["artifacts"]["paths"]) == {"model.onnx", "holdout.npz",
                                                        "metadata.json"}
    deliver = doc["deliver"]
    assert deliver["needs"] == ["train"] and deliver["stage"] == "deliver"
    (line,) = [s for s in deliver["script"] if "gateway deliver" in s]
    parse_deliver(" ".join(line.split()))
    assert "GATEWAY_TOKEN" not in doc.get("variables", {})  # a masked CI/CD variable


def test_the_jenkinsfile() -> None:
    text = (CI / "Jenkinsfile").read_text()
    code = re.sub(r"//.*", "", text)
    assert code.count("{") == code.count("}") and code.strip().startswith("pipeline {")
    assert "credentials('gateway-token')" in code and "stage('Deliver')" in code
    blocks = re.findall(r"sh '''(.*?)'''", code, re.S)
    (deliver,) = [b for b in blocks if "gateway deliver" in b]
    parse_deliver(deliver.strip())


def test_no_file_holds_a_token() -> None:
    for path in CI.iterdir():
        assert "mgw_" not in path.read_text(), path
