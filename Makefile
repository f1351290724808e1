# The two commands that matter: `make run` and `make test`. Each sets up what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 0.0.0.0
PORT   ?= 8000
DATA_DIR ?= ../shared/data

SERVE_STAMP := $(VENV)/.serve-installed
TRAIN_STAMP := $(VENV)/.train-installed
DEV_STAMP   := $(VENV)/.dev-installed

.DEFAULT_GOAL := help
.PHONY: help run train-deps docs docs-serve docs-gen models test test-deploy lint format protos train bench bench-gpu bench-grpc bench-compute bench-staging bench-tracing bench-soak bench-models bench-preprocess bench-threads schema system-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The package compiles four C extensions (service/grpc/_h2.c, the gRPC front end over libnghttp2;
# service/grpc/_wire.c, plain ModelInfer messages without message objects; service/http/_leaves.c, JSON
# tensor numbers packed in one pass; service/core/_finite.c, the finite-value check of decoded inputs): nghttp2's header and a compiler come first
# (tools/system-deps.sh build), and editing any C source rebuilds them.
BUILD_INPUTS := pyproject.toml setup.py service/grpc/_h2.c service/grpc/_wire.c service/http/_leaves.c \
	service/core/_finite.c

$(SERVE_STAMP): $(BUILD_INPUTS) | $(BIN)/python
	bash tools/system-deps.sh build
	$(BIN)/pip install -q -e .
	touch $@

$(TRAIN_STAMP): $(BUILD_INPUTS) | $(BIN)/python
	bash tools/system-deps.sh build
	$(BIN)/pip install -q -e '.[train]'
	touch $@ $(SERVE_STAMP)

$(DEV_STAMP): $(BUILD_INPUTS) | $(BIN)/python
	bash tools/system-deps.sh build
	$(BIN)/pip install -q -e '.[train,dev]'
	touch $@ $(SERVE_STAMP) $(TRAIN_STAMP)

## help: list these targets (the default)
help:
	@sed -n 's/^## \([a-z-]*\): /\1\t/p' $(MAKEFILE_LIST) | awk -F'\t' '{printf "  make %-17s %s\n", $$1, $$2}'

## run: serve models/ on http://localhost:8000 and gRPC on 8001; new versions are picked up every 2 s
# A development server should show what was just trained without a restart; the service's own default
# (SERVE_POLL_INTERVAL_S=0, no polling) is for deployments, which set it explicitly.
run: export SERVE_POLL_INTERVAL_S ?= 2
run: $(SERVE_STAMP)
	$(BIN)/python -m service --host $(HOST) --port $(PORT)

## train-deps: install what training needs (TensorFlow, tf2onnx; make test installs it too)
train-deps: $(TRAIN_STAMP)

## docs: build the docs site into site/ with warnings as errors (also part of make test)
docs: $(DEV_STAMP)
	$(BIN)/python -m tools.gen_docs --check
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

## docs-serve: serve the docs site offline on http://127.0.0.1:8002
docs-serve: $(DEV_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --dev-addr 127.0.0.1:8002

## docs-gen: regenerate the settings and metrics reference pages from the code
docs-gen: $(DEV_STAMP)
	$(BIN)/python -m tools.gen_docs

## test: lint, type-check and run the whole test suite (installs system packages when root)
test: $(DEV_STAMP) system-deps
	$(BIN)/ruff check service training tests bench tools
	$(BIN)/ruff format --check service training tests bench tools
	$(BIN)/mypy
	$(BIN)/python -m tools.gen_docs --check
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet
	DATA_DIR=$(DATA_DIR) $(BIN)/python -m pytest

## test-deploy: build the images and run the compose stack in Docker (root; starts and stops its own dockerd)
test-deploy: $(DEV_STAMP)
	bash tools/system-deps.sh deploy
	DATA_DIR=$(DATA_DIR) $(BIN)/python -m pytest -m docker tests/deploy
	@cat test-artifacts/deploy-measurements.json

## lint: ruff check, ruff format --check and mypy (also part of make test)
lint: $(DEV_STAMP)
	$(BIN)/ruff check service training tests bench tools
	$(BIN)/ruff format --check service training tests bench tools
	$(BIN)/mypy

## format: apply ruff formatting and fixes
format: $(DEV_STAMP)
	$(BIN)/ruff format service training tests bench tools
	$(BIN)/ruff check --fix service training tests bench tools

## protos: regenerate service/grpc/generated/ from service/grpc/protos/ (pinned grpcio-tools)
protos: $(DEV_STAMP)
	$(BIN)/python tools/gen_protos.py

## system-deps: install the system programs the tests drive (Prometheus, Chromium, hey, wrk, h2load; root)
system-deps:
	bash tools/system-deps.sh

## train: train one model (override DATASET, PRESET, NAME, EPOCHS)
DATASET ?= mnist
PRESET  ?= cnn
NAME    ?= $(DATASET)-$(PRESET)
EPOCHS  ?= 3
train: $(TRAIN_STAMP)
	$(BIN)/python -m training train --data-dir $(DATA_DIR) --dataset $(DATASET) --preset $(PRESET) \
		--name $(NAME) --epochs $(EPOCHS) --publish models/

## bench: serving throughput and latency vs a naive baseline and raw onnxruntime
bench: $(DEV_STAMP) system-deps
	$(BIN)/python -m bench.serving

## bench-gpu: on a machine with an NVIDIA GPU: prove CUDA is used, then the service vs raw onnxruntime CUDA
bench-gpu:
	bash bench/gpu.sh

## bench-grpc: gRPC beside HTTP JSON and binary, one service process, c = 1, 16, 64
bench-grpc: $(DEV_STAMP) system-deps
	$(BIN)/python -m bench.protocols

## bench-compute: SERVE_COMPUTE thread and process side by side, two service processes, c=64
bench-compute: $(DEV_STAMP) system-deps
	$(BIN)/python -m bench.sidebyside --name compute --a SERVE_COMPUTE=thread --b SERVE_COMPUTE=process

## bench-staging: SERVE_BATCH_STAGING off and on (thread compute) side by side, two service processes, c=64
bench-staging: $(DEV_STAMP) system-deps
	$(BIN)/python -m bench.sidebyside --name staging --a SERVE_COMPUTE=thread \
		--b SERVE_COMPUTE=thread SERVE_BATCH_STAGING=true

## bench-tracing: c=64 with tracing off (and off in BASELINE_TREE when given), at a 1 % sampler and at 100 %
bench-tracing: $(DEV_STAMP) system-deps
	$(BIN)/python -m bench.tracing $(if $(BASELINE_TREE),--baseline-tree $(BASELINE_TREE))

## bench-soak: fixed-rate load for 10 minutes while the trainer publishes new versions
bench-soak: $(DEV_STAMP) system-deps
	$(BIN)/python -m bench.soak

## bench-preprocess: photo-like MNIST digits through /classify (accuracy per kind) and preprocessing cost
bench-preprocess: $(DEV_STAMP)
	DATA_DIR=$(DATA_DIR) $(BIN)/python -m bench.preprocess

## bench-threads: intra-op thread budget per process, shared or divided among two busy models
bench-threads: $(DEV_STAMP)
	$(BIN)/python -m bench.threads

## schema: regenerate docs/metadata.schema.json from service/contract.py (a test checks it is current)
schema: $(DEV_STAMP)
	$(BIN)/python -m service.contract > docs/metadata.schema.json

## models: retrain the shipped reference models and ship them with their training artifact (train/model.keras)
models: $(DEV_STAMP)
	DATA_DIR=$(DATA_DIR) $(BIN)/python -m bench.reference_models --install

## bench-models: retrain the shipped reference models into a scratch repository and compare accuracy
bench-models: $(DEV_STAMP)
	DATA_DIR=$(DATA_DIR) $(BIN)/python -m bench.reference_models

## clean: remove .venv, caches, bench results and the built docs site
clean:
	rm -rf site $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis bench/results test-artifacts
