# Two commands do all the set-up on a fresh machine:
#   make run   -> create .venv if absent, install, run the pipeline on the defaults (offline)
#   make test  -> same set-up, then the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: run test test-fast install chromium postgresql images-tools image serving-image bench bench-mrpc ui clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/distillery run

# The run report's test opens the page in Debian's Chromium (a system package; no browser download).
CHROMIUM ?= /usr/bin/chromium
chromium:
	@test -x $(CHROMIUM) || { test "$$(id -u)" = 0 || { echo "make: $(CHROMIUM) is missing; as root: apt-get install -y chromium"; exit 1; }; \
	  echo "make: installing Debian's chromium package"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

# Container images (Dockerfile): built with buildah/podman from a Debian base made here from Debian's
# packages when no container registry can be reached (docker/build-image.sh); docker works too.
IMAGE         ?= distillery
SERVING_IMAGE ?= distillery-serving
images-tools:
	@command -v buildah >/dev/null && command -v podman >/dev/null && command -v debootstrap >/dev/null || \
	  { test "$$(id -u)" = 0 || { echo "make: buildah, podman and debootstrap are missing; as root: apt-get install -y buildah podman debootstrap"; exit 1; }; \
	  echo "make: installing Debian's buildah, podman and debootstrap packages"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q buildah podman debootstrap; }
image:
	docker/build-image.sh pipeline $(IMAGE)
serving-image:
	docker/build-image.sh serving $(SERVING_IMAGE)


# The multi-user registry test runs an `mlflow server` on PostgreSQL (Debian's package; started by the
# test in a temp dir as the `postgres` user, on a loopback port).
PG_INITDB := $(firstword $(wildcard /usr/lib/postgresql/*/bin/initdb))
postgresql:
	@test -n "$(PG_INITDB)" || { test "$$(id -u)" = 0 || { echo "make: PostgreSQL is missing; as root: apt-get install -y postgresql"; exit 1; }; \
	  echo "make: installing Debian's postgresql package"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql; }

# The suite runs on pytest-xdist workers, one per core up to 4 (most tests run one single-threaded
# pipeline, so a 2-core machine runs two at once); a module's tests stay on one worker, in their order
# (--dist loadfile: a module's Story shares one project), the longest modules first (tests/conftest.py:
# RUN_FIRST; --no-loadscope-reorder keeps that order). PYTEST_WORKERS=0 runs them in this process.
PYTEST_WORKERS ?= auto
test: $(STAMP) chromium postgresql images-tools
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --maxprocesses 4 --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

# The fast loop while changing code: unit and stage tests, no real pipelines (`slow`): ~1.5 minutes on an
# idle 2-core machine (README: Tests).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# The SST-2 benchmark (bench/): the pipeline on real data against its alternatives; about 40 minutes
# on 2 cores. Writes bench/results/<date>-sst2.* and the README's benchmark section.
BENCH_DATA ?= ../shared/data/sst2
bench: $(STAMP)
	$(BIN)/distillery bench --data $(BENCH_DATA) --update-readme

# The MRPC benchmark (sentence pairs): bench/results/<date>-mrpc.* and the README's MRPC section.
MRPC_DATA ?= ../shared/data/mrpc
bench-mrpc: $(STAMP)
	$(BIN)/distillery bench --benchmark mrpc --data $(MRPC_DATA) --update-readme

# The MLflow UI (http://127.0.0.1:5000) and the Prefect UI (http://127.0.0.1:4200) over the project's
# stores; Ctrl-C stops both.
ui: $(STAMP)
	$(BIN)/distillery ui

clean:
	rm -rf data/raw data/validated data/teacher_logits models reports mlruns/mlflow.db mlruns/artifacts dvc.lock .dvc/cache .dvc/tmp
