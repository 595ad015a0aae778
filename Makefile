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
# the compiled decoding step's build (seq2seq_core/kernels/step_extension.py), keyed by its source hash
export SEQ2SEQ_EXTENSIONS_DIR ?= $(CURDIR)/.state/torch_extensions

.PHONY: install lock run test test-faults check format bench clean joey-venv

# requirements.lock: every package of `pip install -e '.[dev,scale]'`, pip and setuptools
# included, at one version each with the sha256 of its files. `make lock` makes it from
# pyproject.toml, constraints.txt and cve-floors.txt; `make install` installs exactly it.
LOCK := requirements.lock

install: $(STAMP)

$(STAMP): $(LOCK) pyproject.toml constraints.txt cve-floors.txt
	# A lock made from other inputs than today's pyproject.toml and constraints stops here.
	$(PYTHON) tests/lockfile.py verify $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# The locked pip first: the venv's bundled one is older and installs the rest slower.
	$(PYTHON) tests/lockfile.py entry pip > $(VENV)/pip.lock
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(VENV)/pip.lock
	# pip's hash-checking mode: each file must match a sha256 in the lock, or nothing installs.
	# --no-deps: the lock is the whole set (pip-compile resolved it; pip check proves it below).
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	# The project itself (editable installs carry no hash), built by the locked setuptools.
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	# The compiled decoding step (kernels/decode_step.cpp, ~30 s of g++) is built here, once,
	# so that neither `make run`'s first translation nor a test waits for it. Without a C++
	# compiler this logs one warning and decoding stays eager.
	$(BIN)/python -c 'from seq2seq_core.kernels import step_extension; step_extension.load()'
	touch $(STAMP)

# Re-resolve the lock after editing pyproject.toml, constraints.txt or cve-floors.txt.
# pip-compile keeps the versions already locked where they still fit; `make lock LOCK_ARGS=--upgrade` moves every
# package to its newest allowed release, `LOCK_ARGS='--upgrade-package mlflow'` one of them.
# pip-compile runs from its own ignored venv, so `make install` never needs it.
LOCK_TOOLS := .state/lock-tools
LOCK_ARGS ?=
lock:
	test -x $(LOCK_TOOLS)/bin/python || $(PYTHON) -m venv $(LOCK_TOOLS)
	$(LOCK_TOOLS)/bin/python -m pip install --quiet pip-tools==7.7.0
	# pip itself comes in on stdin: nothing depends on it, yet the lock pins the installer.
	printf 'pip\n' | CUSTOM_COMPILE_COMMAND='make lock' $(LOCK_TOOLS)/bin/pip-compile --quiet \
		--generate-hashes --allow-unsafe --strip-extras --extra dev --extra scale \
		--constraint constraints.txt --constraint cve-floors.txt \
		--no-emit-index-url --no-emit-find-links --no-emit-trusted-host \
		$(LOCK_ARGS) --output-file $(LOCK) pyproject.toml -
	$(PYTHON) tests/lockfile.py stamp $(LOCK)

run: install
	$(BIN)/seq2seq pipeline

check: install
	$(BIN)/ruff check .

test: check
	$(BIN)/python -m pytest -n auto --dist loadfile --durations=25 -m "not faults"

# The fault tests (tests/faults/): real servers killed, stopped and filled; minutes each.
test-faults: check
	$(BIN)/python -m pytest -n auto --dist loadfile --durations=25 -m faults tests/faults

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

# OpenNMT-py 3.5.1, the third peer (issue 26), in its own ignored venv. It pins torch<2.3,
# which from PyPI is a multi-GB CUDA build, so it goes in with --no-deps onto the pinned CPU
# torch and the packages it imports (pinned; sacrebleu, pyyaml, six bring their own). It
# also imports spacy and fasttext at start-up and loads checkpoints that torch's
# weights-only default refuses: bench/onmt_train.py stubs the two and allow-lists the one
# class, at run time. Its server (flask, waitress), ctranslate2 and tensorboard stay out.
ONMT_VENV := bench/.cache/onmt-venv
.PHONY: onmt-venv
onmt-venv: $(ONMT_VENV)/.installed

$(ONMT_VENV)/.installed: constraints.txt
	test -x $(ONMT_VENV)/bin/python || $(PYTHON) -m venv $(ONMT_VENV)
	$(ONMT_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(ONMT_VENV)/bin/python -m pip install --quiet -c constraints.txt torch configargparse==1.9.0 \
		pyyaml==6.0.4 sacrebleu==2.6.0 six==1.17.0 pyonmttok==1.38.1 rapidfuzz==3.14.6 \
		pyahocorasick==2.3.1
	$(ONMT_VENV)/bin/python -m pip install --quiet --no-deps OpenNMT-py==3.5.1
	$(ONMT_VENV)/bin/python bench/onmt_train.py check
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
	# The automation that marks a run Crashed when its heartbeat stops (flows/automations.py).
	$(BIN)/python -m flows.deploy --automations-only

# The flow runs' heartbeat of prefect.yaml, for deployments made without its job variables.
HEARTBEAT_S = $(shell $(BIN)/python -c 'from flows.deploy import heartbeat_seconds as h; print(h())')
worker: install
	SEQ2SEQ_PROJECT_DIR=$(SEQ2SEQ_PROJECT_DIR) PREFECT_FLOWS_HEARTBEAT_FREQUENCY=$(HEARTBEAT_S) \
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
