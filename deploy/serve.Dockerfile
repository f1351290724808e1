# Serving image: FastAPI + onnxruntime + numpy, never TensorFlow.
#
# From the repository root:
#   docker build -f deploy/serve.Dockerfile -t digits-serving:latest .                            # CPU
#   docker build -f deploy/serve.Dockerfile -t digits-serving:gpu --build-arg ONNXRUNTIME=gpu .   # NVIDIA
#   docker run --rm --gpus all -p 8000:8000 digits-serving:gpu
# (docker-compose.gpu.yml does the same for `docker compose up`.)
#
# ONNXRUNTIME picks the onnxruntime wheel, with pyproject.toml's version bound:
#   cpu (default)  onnxruntime: CPU only, the small image.
#   gpu            onnxruntime-gpu[cuda,cudnn]: the wheel's own extras bring the CUDA runtime, cuBLAS, cuFFT,
#                  cuRAND, NVRTC and cuDNN as pip wheels, of the CUDA major version that onnxruntime-gpu was
#                  built for (13 for 1.31), so the base needs no CUDA; only the host's NVIDIA driver
#                  (libcuda.so.1, mounted by the NVIDIA Container Toolkit) comes from outside. The wheels'
#                  library directories are registered with ldconfig, so the CUDA provider's dependencies
#                  resolve for any process in the image.
# BASE_IMAGE: python:3.11-slim, or any Debian-like image with python3 >= 3.11 (python3 and python3-venv are
# installed with apt-get when missing).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS base
# The package versions follow whichever base is chosen, so they cannot be pinned here. libnghttp2 is what
# the gRPC front end (service/grpc/_h2, compiled in the builder) frames HTTP/2 with.
# hadolint ignore=DL3008
RUN set -- libnghttp2-14 \
    && if ! python3 -c "import ensurepip" 2>/dev/null; then set -- "$@" python3 python3-venv; fi \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /home/app --create-home --shell /usr/sbin/nologin app \
    && install -d -o 10001 -g 10001 /feedback

FROM base AS builder
ARG ONNXRUNTIME=cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
# A compiler, libnghttp2's header and (where the base lacks them) Python's headers, for service/grpc/_h2.c,
# service/grpc/_wire.c, service/http/_leaves.c and service/core/_finite.c; none of them reaches the runtime
# stage.
# hadolint ignore=DL3008
RUN set -- gcc libc6-dev libnghttp2-dev \
    && if ! python3 -c "import os, sysconfig, sys; sys.exit(not os.path.exists(sysconfig.get_paths()['include'] + '/Python.h'))"; then set -- "$@" python3-dev; fi \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
# Dependencies first, so editing service/ does not re-download them. pyproject.toml is the one place their
# versions are declared; its onnxruntime requirement is swapped for the wheel ONNXRUNTIME names (both wheels
# provide the same `onnxruntime` module and must never be installed together).
RUN case "$ONNXRUNTIME" in \
        cpu) wheel="onnxruntime" ;; \
        gpu) wheel="onnxruntime-gpu[cuda,cudnn]" ;; \
        *) echo "ONNXRUNTIME must be cpu or gpu, not '$ONNXRUNTIME'" >&2; exit 2 ;; \
    esac \
    && python3 -c "import sys, tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; bound = next(d for d in deps if d.startswith('onnxruntime-gpu')).split(';')[0].removeprefix('onnxruntime-gpu'); print(*[d for d in deps if not d.startswith('onnxruntime')], sys.argv[1] + bound, sep='\n')" "$wheel" >requirements.txt \
    && /opt/venv/bin/pip install --no-cache-dir -r requirements.txt
COPY setup.py ./
COPY service ./service
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps .

FROM base AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SERVE_MODEL_REPOSITORY=/models
COPY --from=builder /opt/venv /opt/venv
# CUDA libraries from pip wheels live under site-packages/nvidia/*/lib (gpu only; nothing to do for cpu).
RUN dirs=$(find /opt/venv/lib -type d -path '*/site-packages/nvidia/*/lib') \
    && if [ -n "$dirs" ]; then echo "$dirs" >/etc/ld.so.conf.d/onnxruntime-cuda-wheels.conf && ldconfig; fi
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
