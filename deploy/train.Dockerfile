# Training image: TensorFlow + tf2onnx + onnx; publishes new model versions into /models.
#
#   docker build -f deploy/train.Dockerfile -t digits-training:latest .
#   docker run --rm -v "$PWD/../shared/data:/data:ro" -v digits-serving_models:/models digits-training:latest
#
# GPU build: --build-arg TF_CUDA=true adds tensorflow[and-cuda] (CUDA 12 and cuDNN as pip wheels, which
# TensorFlow finds by itself), so the slim base is enough; run it with --gpus all (docker-compose.gpu.yml
# sets both). BASE_IMAGE: as in serve.Dockerfile, python:3.11-slim or any Debian-like image with python3.
# Training data is never baked in: mount it read-only at /data (DATA_DIR).
ARG BASE_IMAGE=python:3.11-slim

# One stage: nothing is compiled, so a builder stage would only copy the 2.7 GB environment once more.
FROM ${BASE_IMAGE}
ARG TF_CUDA=false
# hadolint ignore=DL3008
RUN if ! python3 -c "import ensurepip" 2>/dev/null; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /home/app --create-home --shell /usr/sbin/nologin app \
    && install -d -o 10001 -g 10001 /models /data /feedback
# The trainer serves nothing, so the package is installed without its C extensions (and no compiler).
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DIGITS_SERVING_BUILD_H2=0
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
# Dependencies first, from stub packages, so editing the code does not re-download TensorFlow. Versions
# are bounded by pyproject.toml; the and-cuda variant repeats its tensorflow bound.
RUN mkdir service training && touch service/__init__.py training/__init__.py \
    && set -- ".[train]" \
    && if [ "$TF_CUDA" = "true" ]; then set -- "$@" "tensorflow[and-cuda]>=2.21,<2.22"; fi \
    && /opt/venv/bin/pip install --no-cache-dir "$@" \
    && /opt/venv/bin/pip uninstall --yes digits-serving \
    && rm -rf service training build ./*.egg-info
COPY service ./service
COPY training ./training
# The sources are installed into the environment; their copy goes.
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps . && rm -rf /src/*
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    DATA_DIR=/data \
    MPLBACKEND=Agg
# Same uid as the serving image, so both can share one model volume.
USER 10001:10001
WORKDIR /home/app
ENTRYPOINT ["python", "-m", "training"]
# Publishing goes through the promotion guard: exit status 3 (and no new version) when accuracy regresses
# by more than --max-regression points against the newest version. Add --force to override.
CMD ["train", "--data-dir", "/data", "--dataset", "mnist", "--preset", "cnn", "--epochs", "3", \
     "--name", "mnist-cnn", "--publish", "/models"]
