"""Example ONNX models for the gateway, built reproducibly from bundled data (no downloads)."""
