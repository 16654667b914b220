"""model-gateway: serve ONNX model versions behind a traffic policy and compare them on outcomes.

Deliberately imports nothing: gunicorn's master loads `gateway.web.gunicorn_conf` from this package,
and onnxruntime imported in the master before fork leaves workers that abort at exit.
"""
