"""model-gateway: serve ONNX model versions behind a traffic policy and compare them on outcomes."""

from gateway.app import create_app

__all__ = ["create_app"]
