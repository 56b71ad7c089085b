# Distillery's two images, from one file:
#   pipeline (the default target): the whole pipeline on the CPU (CPU-only torch), offline;
#            runs `distillery run` by default and any other `distillery` command.
#   serving: a registered model's pyfunc over HTTP with MLflow's scoring server
#            (ONNX Runtime + tokenizers; no torch, no transformers).
#
#   docker build -t distillery .                           # pipeline image
#   docker build --target serving -t distillery-serving .  # serving image
#
# torch is pinned to its CPU build (pyproject's pin + `+cpu`, e.g. `torch==2.13.0+cpu`), a version the CUDA wheel cannot
# satisfy, so a build never pulls the multi-GB CUDA stack: pip finds it in docker/wheels/
# (`make image` puts the wheel there from this machine's pip configuration) or on the index
# given with --build-arg TORCH_INDEX_URL=<PyTorch's CPU wheel index>. Without either the
# build stops at that step with pip's "no matching distribution" error.
#
# Behind a TLS-inspecting proxy, pass its CA bundle to pip as a build secret:
#   docker build --secret id=pipcert,src=/path/to/ca-bundle.crt .   (make image does this from pip's
#   own `cert` setting); it is mounted only while pip runs and never stored in a layer.
#
# BASE_IMAGE / SERVING_BASE_IMAGE: any Debian-like image with python3 (3.11+) and its venv
# module; `make image` uses a base made locally from Debian's packages where no container
# registry can be reached (docker/make-base.sh).
ARG BASE_IMAGE=python:3.11-slim
ARG SERVING_BASE_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------- serving
FROM ${SERVING_BASE_IMAGE} AS serving
ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLFLOW_DISABLE_TELEMETRY=true HF_HUB_OFFLINE=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
COPY pyproject.toml docker/pins.py /tmp/build/
RUN --mount=type=secret,id=pipcert \
    if [ -s /run/secrets/pipcert ]; then export PIP_CERT=/run/secrets/pipcert; fi \
 && python3 -m venv /opt/venv \
 && python3 /tmp/build/pins.py /tmp/build/pyproject.toml --serving > /tmp/build/requirements.txt \
 && pip install --no-compile -r /tmp/build/requirements.txt \
 && pip uninstall -y -q pip setuptools \
 && rm -rf /tmp/build
COPY docker/serve-model.sh /usr/local/bin/serve-model
# MODEL_URI: a model directory exported from the registry (mounted at /model by default) or a
# models:/ URI on an `mlflow server` given by MLFLOW_TRACKING_URI.
ENV MODEL_URI=/model HOST=0.0.0.0 PORT=8080 WORKERS=1
EXPOSE 8080
ENTRYPOINT ["serve-model"]

# ---------------------------------------------------------------------------- torch-pin
# The torch pin alone, read from pyproject.toml: the pipeline's torch layer copies this file, so it
# is rebuilt when that pin changes, not when any other line of pyproject.toml does.
FROM ${BASE_IMAGE} AS torch-pin
COPY pyproject.toml docker/pins.py /tmp/build/
RUN python3 /tmp/build/pins.py /tmp/build/pyproject.toml torch > /torch-version && rm -rf /tmp/build

# ---------------------------------------------------------------------------- pipeline
FROM ${BASE_IMAGE} AS pipeline
ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DVC_NO_ANALYTICS=1 MLFLOW_DISABLE_TELEMETRY=true \
    PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=120 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN if ! command -v git >/dev/null || ! command -v make >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends git make \
      && rm -rf /var/lib/apt/lists/*; fi \
 && git config --system --add safe.directory '*' \
 && python3 -m venv /opt/venv

# Layers from the least to the most often changed: torch, then the pinned dependencies (from
# pyproject.toml alone, with empty packages standing in for the code), then the code. A code
# change rebuilds only the last layers.
# The wheel is bind-mounted while pip runs: a COPY would keep its 190 MB in a layer of the image.
ARG TORCH_INDEX_URL=""
COPY --from=torch-pin /torch-version /tmp/build/torch-version
RUN --mount=type=secret,id=pipcert --mount=type=bind,source=docker/wheels,target=/tmp/wheels \
    if [ -s /run/secrets/pipcert ]; then export PIP_CERT=/run/secrets/pipcert; fi \
 && pip install --find-links /tmp/wheels ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
      "torch==$(cat /tmp/build/torch-version)+cpu" \
 && rm -rf /tmp/build
WORKDIR /opt/distillery
COPY pyproject.toml ./
RUN --mount=type=secret,id=pipcert \
    if [ -s /run/secrets/pipcert ]; then export PIP_CERT=/run/secrets/pipcert; fi \
 && mkdir -p distillery tasks flows distillery_cli \
 && touch README.md distillery/__init__.py tasks/__init__.py flows/__init__.py distillery_cli/__init__.py \
 && pip install . && pip uninstall -y distillery \
 && rm -rf distillery tasks flows distillery_cli build README.md ./*.egg-info
COPY README.md ./
COPY distillery ./distillery
COPY tasks ./tasks
COPY flows ./flows
COPY distillery_cli ./distillery_cli
RUN --mount=type=secret,id=pipcert \
    if [ -s /run/secrets/pipcert ]; then export PIP_CERT=/run/secrets/pipcert; fi \
 && pip install --no-deps -e . && rm -rf build

# /app is the project that DVC and the flow run in: params.yaml, dvc.yaml, a git repository and
# the stores (mlruns/, .prefect/, .dvc/cache, dvc.lock, data/, models/, reports/). Mount a named
# volume on /app to keep them between runs (it is filled from the image on first use). The code
# stays in the image: /app/distillery, /app/tasks and /app/flows are links to /opt/distillery, so
# a newer image runs (and DVC hashes) the newer code over the same volume.
WORKDIR /app
COPY params.yaml dvc.yaml must_pass.yaml .dvcignore .gitignore ./
COPY .dvc/config .dvc/.gitignore ./.dvc/
RUN ln -s /opt/distillery/distillery /opt/distillery/tasks /opt/distillery/flows . \
 && mkdir -p mlruns && git init -q && git add -A \
 && git -c user.name=distillery -c user.email=distillery@localhost commit -qm "distillery project"
ENTRYPOINT ["distillery"]
CMD ["run"]
