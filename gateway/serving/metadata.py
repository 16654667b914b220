"""Model metadata as the Open Inference Protocol describes it: name, versions, platform, and the
signature of the version a request would reach (or of the version asked for)."""

from __future__ import annotations

from typing import Any

from gateway.serving.catalog import Catalog, VersionInfo
from gateway.serving.dataplane import DataPlane

PLATFORM = "onnxruntime_onnx"


def _tensors(specs: Any) -> list[dict[str, Any]]:
    return [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in specs]


def _describe(version: VersionInfo, versions: list[int]) -> dict[str, Any]:
    return {"name": version.model, "versions": [str(v) for v in versions],
            "platform": PLATFORM, "inputs": _tensors(version.inputs),
            "outputs": _tensors(version.outputs)}


def model_metadata(catalog: Catalog, dataplane: DataPlane, name: str, ref: str | None
                   ) -> dict[str, Any]:
    """`ref` None: the model, with the signature of the version its traffic reaches and every
    live version; else that one version."""
    if ref is None:
        entry = catalog.model(name)
        live = [n for n, v in sorted(entry.versions.items()) if v.stage != "archived"]
        return _describe(dataplane.choose(name, None).version, live)
    version, _ = catalog.version(name, ref)
    return _describe(version, [version.version])
