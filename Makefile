# The README's commands. `make run` and `make test` create .venv when it is missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed

# Stage commands in dvc.yaml call `seq2seq`; keep the venv first on PATH for them.
export PATH := $(BIN):$(PATH)
export DO_NOT_TRACK := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120
# Prefect's local state (its SQLite database) stays inside the repo's ignored .state/.
export PREFECT_HOME ?= $(CURDIR)/.state/prefect

.PHONY: install run test check format bench clean joey-venv

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# constraints.txt pins torch to the CPU build and the versions measured to work here.
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,scale]'
	touch $(STAMP)

run: install
	$(BIN)/seq2seq pipeline

check: install
	$(BIN)/ruff check .

test: check
	$(BIN)/python -m pytest -n auto --dist loadfile --durations=25

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/decode_speed.py
	$(BIN)/python bench/pipeline_overhead.py

# Joey NMT 2.3.0 for the side-by-side benchmarks, in its own ignored venv. Joey needs
# importlib_metadata and sentencepiece 0.2.0 (0.2.3 dropped the SetVocabulary it calls);
# torch stays the pinned CPU build. bench/joey_train.py patches ReduceLROnPlateau(verbose=).
JOEY_VENV := bench/.cache/joey-venv
joey-venv: $(JOEY_VENV)/.installed

$(JOEY_VENV)/.installed: constraints.txt
	test -x $(JOEY_VENV)/bin/python || $(PYTHON) -m venv $(JOEY_VENV)
	$(JOEY_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(JOEY_VENV)/bin/python -m pip install --quiet -c constraints.txt joeynmt==2.3.0 \
		importlib_metadata sentencepiece==0.2.0
	touch $@

clean:
	rm -rf data/prepared data/vocab models reports mlflow.db mlartifacts .state

# Scheduled runs (prefect.yaml): `make prefect-server`, then `make deploy` and `make worker`
# in a second terminal; or `make serve-flows` instead of deploy + worker. These four talk to
# the local server; set PREFECT_API_URL (or PREFECT_PORT) to use another one.
PREFECT_PORT ?= 4200
PREFECT_POOL ?= seq2seq-process
# The directory the deployments' pull step moves flow runs into: this clone. `deploy` writes
# it into the deployments; `worker` supplies it to deployments made without it.
SEQ2SEQ_PROJECT_DIR ?= $(CURDIR)
PREFECT_TARGETS := prefect-server deploy worker serve-flows
$(PREFECT_TARGETS): export PREFECT_API_URL ?= http://127.0.0.1:$(PREFECT_PORT)/api

.PHONY: $(PREFECT_TARGETS)

prefect-server: install
	mkdir -p $(PREFECT_HOME)
	$(BIN)/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT)

deploy: install
	$(BIN)/prefect work-pool inspect $(PREFECT_POOL) >/dev/null 2>&1 \
		|| $(BIN)/prefect work-pool create $(PREFECT_POOL) --type process
	SEQ2SEQ_PROJECT_DIR=$(SEQ2SEQ_PROJECT_DIR) $(BIN)/prefect --no-prompt deploy --all

worker: install
	SEQ2SEQ_PROJECT_DIR=$(SEQ2SEQ_PROJECT_DIR) \
		$(BIN)/prefect worker start --pool $(PREFECT_POOL) --type process

serve-flows: install
	$(BIN)/python -m flows.deploy

# The scale-out services of docs/scaling.md on 127.0.0.1, one process each, for trying them:
# PostgreSQL, an S3 server (moto), the MLflow server (PostgreSQL + S3 artifacts), the Prefect
# server (PostgreSQL) and a process worker in this clone, each behind credentials generated on
# the first start (.state/stack/secrets/, mode 0600; docs/security.md). `make stack` writes
# one env file per role (worker, maintainer, reader; 0600) and prints their paths, never a
# secret; `make stack-down` stops exactly those processes. Logs and pids: .state/stack/.
# tests/services.py is the same code tests/integration/test_scale_out.py starts them with.
STACK_STATE := $(CURDIR)/.state/stack
.PHONY: stack stack-down

stack: install
	$(BIN)/python -m tests.services up --state $(STACK_STATE) --repo $(CURDIR) \
		--pool $(PREFECT_POOL)

stack-down:
	$(BIN)/python -m tests.services down --state $(STACK_STATE)
