# Serving image: FastAPI + onnxruntime + numpy, never TensorFlow (DESIGN.md section 1).
#
# CPU build, from the repository root (the default base is python:3.11-slim):
#   docker build -f deploy/serve.Dockerfile -t digits-serving:latest .
#
# GPU build: pick a CUDA 12 + cuDNN 9 runtime base (what the onnxruntime-gpu wheels link against). When the
# base has no python3 it is installed from the distribution, so a stock nvidia/cuda image works as is:
#   docker build -f deploy/serve.Dockerfile -t digits-serving:gpu \
#       --build-arg BASE_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 .
#   docker run --rm --gpus all -p 8000:8000 \
#       -e SERVE_PROVIDERS=CUDAExecutionProvider,CPUExecutionProvider digits-serving:gpu
# (docker-compose.gpu.yml does the same for `docker compose up`.)
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS base
# python:3.11-slim already has python3; a CUDA base gets the distribution's python3 + venv. The package
# versions follow whichever base is chosen, so they cannot be pinned here.
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /home/app --create-home --shell /usr/sbin/nologin app \
    && install -d -o 10001 -g 10001 /feedback

FROM base AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
# Dependencies first, from a stub package, so editing service/ does not re-download onnxruntime-gpu.
# The versions are bounded by pyproject.toml, the single place they are declared.
RUN mkdir service && touch service/__init__.py \
    && /opt/venv/bin/pip install --no-cache-dir . \
    && /opt/venv/bin/pip uninstall --yes digits-serving \
    && rm -rf service build ./*.egg-info
COPY service ./service
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps .

FROM base AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SERVE_MODEL_REPOSITORY=/models
COPY --from=builder /opt/venv /opt/venv
# The reference models are the default repository. A volume mounted at /models replaces them; a new, empty
# named volume is seeded with them by Docker (see docker-compose.yml). Owned by the app user so a trainer
# running as the same uid can publish into a volume seeded from here.
COPY --chown=10001:10001 models /models
# /feedback (created above, owned by the app user) is where a mounted volume receives client feedback
# when SERVE_FEEDBACK_DIR points there; a new named volume takes its ownership from it.
USER 10001:10001
WORKDIR /home/app
# 8000: HTTP (KServe V2 REST, metrics, demo page); 8001: KServe V2 gRPC (SERVE_GRPC_PORT).
EXPOSE 8000 8001
# No curl in the slim image: the standard library is enough (urlopen raises on any non-2xx answer).
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2)"]
# The service drains in-flight requests for SERVE_DRAIN_SECONDS on SIGTERM; exec form keeps python as the
# process that receives it.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "service", "--host", "0.0.0.0", "--port", "8000"]
