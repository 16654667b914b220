# syntax=docker/dockerfile:1
#
# model-gateway image: ONNX model serving under gunicorn (`gateway serve`).
#
#   docker build -t model-gateway:local .
#   docker run --rm -p 8000:8000 model-gateway:local      # SQLite + embedded Redis, for a quick look
#
# Production settings (PostgreSQL, Redis, shared model store) come from the environment: see
# docker-compose.yml, deploy/kubernetes/ and docs/deployment.md.

# ---- build: the gateway wheel plus a wheel for every runtime dependency --------------------------
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Only what the package is built from (pyproject's readme is README.md, so it is needed too).
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY registry ./registry
COPY models ./models

# `pip wheel .` builds model-gateway and collects wheels for its runtime dependencies (not the
# dev extra), so the runtime stage installs offline and carries no build tools.
RUN pip wheel --wheel-dir /wheels .

# ---- runtime ---------------------------------------------------------------------------------
FROM python:3.11-slim AS runtime

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The wheels are bind-mounted from the build stage for this one step, so they never become a
# layer of the final image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels model-gateway

# A fixed numeric uid/gid so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
RUN groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid gateway --home-dir /srv --no-create-home \
            --shell /usr/sbin/nologin gateway \
 && mkdir -p /srv/model-store /srv/state \
 && chown -R gateway:gateway /srv

WORKDIR /srv

# GATEWAY_MODEL_STORE must be shared by every replica (a volume / ReadWriteMany PVC);
# GATEWAY_STATE_DIR is per process group (outcome spool, metrics files): never share it.
ENV GATEWAY_MODEL_STORE=/srv/model-store \
    GATEWAY_STATE_DIR=/srv/state \
    GATEWAY_BIND=0.0.0.0:8000

USER 10001:10001

EXPOSE 8000

# slim has no curl: ask /healthz with the interpreter that is there anyway.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]

# Exec form: `gateway` is PID 1, receives SIGTERM and forwards it to gunicorn, whose
# graceful_timeout (20 s) lets workers finish requests and flush outcomes.
CMD ["gateway", "serve", "--bind", "0.0.0.0:8000", "--workers", "2"]
