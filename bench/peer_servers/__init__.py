"""Peer model servers for `bench.versus`: each file runs in its own virtualenv (see
bench/README.md), importing only its server's package, numpy and onnxruntime, never ours."""
