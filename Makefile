# The two commands that matter: `make run` and `make test`. Each sets up what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 0.0.0.0
PORT   ?= 8000
DATA_DIR ?= ../shared/data

SERVE_STAMP := $(VENV)/.serve-installed
DEV_STAMP   := $(VENV)/.dev-installed

.PHONY: run test test-deploy lint format protos train bench bench-grpc bench-tracing bench-soak bench-models bench-preprocess bench-threads schema system-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(SERVE_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[train,dev]'
	touch $@ $(SERVE_STAMP)

## run: serve the models in models/ on $(HOST):$(PORT)
run: $(SERVE_STAMP)
	$(BIN)/python -m service --host $(HOST) --port $(PORT)

## test: lint, type-check and run the whole test suite (installs system packages when root)
test: $(DEV_STAMP) system-deps
	$(BIN)/ruff check service training tests bench tools
	$(BIN)/ruff format --check service training tests bench tools
	$(BIN)/mypy
	DATA_DIR=$(DATA_DIR) $(BIN)/python -m pytest

## test-deploy: build the images and run the compose stack in Docker (root; starts and stops its own dockerd)
test-deploy: $(DEV_STAMP)
	bash tools/system-deps.sh deploy
	DATA_DIR=$(DATA_DIR) $(BIN)/python -m pytest -m docker tests/deploy
	@cat test-artifacts/deploy-measurements.json

lint: $(DEV_STAMP)
	$(BIN)/ruff check service training tests bench tools
	$(BIN)/ruff format --check service training tests bench tools
	$(BIN)/mypy

format: $(DEV_STAMP)
	$(BIN)/ruff format service training tests bench tools
	$(BIN)/ruff check --fix service training tests bench tools

## protos: regenerate service/grpc/generated/ from service/grpc/protos/ (pinned grpcio-tools)
protos: $(DEV_STAMP)
	$(BIN)/python tools/gen_protos.py

system-deps:
	bash tools/system-deps.sh

## train: train one model (override DATASET, PRESET, NAME, EPOCHS)
DATASET ?= mnist
PRESET  ?= cnn
NAME    ?= $(DATASET)-$(PRESET)
EPOCHS  ?= 3
train: $(DEV_STAMP)
	$(BIN)/python -m training train --data-dir $(DATA_DIR) --dataset $(DATASET) --preset $(PRESET) \
		--name $(NAME) --epochs $(EPOCHS) --publish models/

## bench: serving throughput and latency vs a naive baseline and raw onnxruntime
bench: $(DEV_STAMP) system-deps
	$(BIN)/python -m bench.serving

## bench-grpc: gRPC beside HTTP JSON and binary, one service process, c = 1, 16, 64
bench-grpc: $(DEV_STAMP) system-deps
	$(BIN)/python -m bench.protocols

## bench-tracing: c=64 with tracing off (and off in BASELINE_TREE when given), at a 1 % sampler and at 100 %
bench-tracing: $(DEV_STAMP) system-deps
	$(BIN)/python -m bench.tracing $(if $(BASELINE_TREE),--baseline-tree $(BASELINE_TREE))

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

## bench-models: retrain the shipped reference models into a scratch repository and compare accuracy
bench-models: $(DEV_STAMP)
	DATA_DIR=$(DATA_DIR) $(BIN)/python -m bench.reference_models

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis bench/results test-artifacts
