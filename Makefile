# Every target installs what it needs into .venv first, so on a fresh machine
#   make run DATA_DIR=../shared/data/tlc      (or plain `make run` to download from the TLC site)
#   make test
# are the whole set-up.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
DATA_DIR ?=
RUN_ARGS ?=
PYTEST_ARGS ?=
# Two pytest workers (pytest-xdist), a test module to each at a time: the suite is mostly waiting on
# real servers and pipeline subprocesses, so two workers on 2 cores take ~21 min where one takes ~31.
# TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
IMAGE ?= docker.io/taxi-mlops/pipeline:0.1.0
PREDICTOR_IMAGE ?= docker.io/taxi-mlops/predictor:0.1.0
# Local kind cluster (README "Run on kind"); the KFP UI port is the hostPort in kind-config.yaml.
KFP_UI_PORT ?= 8880
SUBMIT_ARGS ?=

.PHONY: install run test lint format compile bench image clean help cluster-up cluster-down port-forward submit

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-13s %s\n", $$1, $$2}'

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

install: $(BIN)/.installed ## create .venv and install the project with its test tools

run: install ## train -> evaluate -> register locally (DATA_DIR=folder of TLC parquet files, else download)
	$(BIN)/taxi-mlops run $(if $(DATA_DIR),--data-dir $(DATA_DIR)) $(RUN_ARGS)

test: install ## run the test suite
	$(BIN)/python -m pytest $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadscope) $(PYTEST_ARGS)

lint: install ## ruff lint + format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install ## apply ruff's formatting and safe fixes
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

compile: install ## compile the training pipeline to training_pipeline.yaml
	$(BIN)/taxi-mlops compile -o training_pipeline.yaml

bench: install ## vectorize+train benchmark against the course's reference implementation
	$(BIN)/python bench/bench_vectorize_train.py $(if $(DATA_DIR),--data-dir $(DATA_DIR))

image: ## build the pipeline and predictor images (needs Docker)
	docker build -t $(IMAGE) .
	docker build -f serving/Dockerfile --build-arg PIPELINE_IMAGE=$(IMAGE) -t $(PREDICTOR_IMAGE) .

cluster-up: ## kind cluster with KFP, KServe, MinIO, MLflow; builds and loads the images (needs Docker, kind)
	scripts/cluster/up.sh

cluster-down: ## delete the kind cluster (keeps the generated S3 credentials file)
	scripts/cluster/down.sh

port-forward: ## MLflow :5000, MinIO S3 :9000 (+ KFP UI :8880, console :9001 if not on NodePorts)
	scripts/cluster/port-forward.sh

submit: install ## compile the pipeline and start a KFP run on the kind cluster (SUBMIT_ARGS=...)
	$(BIN)/taxi-mlops submit --host http://localhost:$(KFP_UI_PORT) $(SUBMIT_ARGS)

clean: ## remove local run state (MLflow db, artifacts, KFP outputs)
	rm -rf .taxi-mlops training_pipeline.yaml
