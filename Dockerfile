# Distillery: runs the pipeline on the built-in defaults (`distillery run`), offline, on the CPU.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    DVC_NO_ANALYTICS=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=120

RUN apt-get update && apt-get install -y --no-install-recommends git make && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# torch first. For a small CPU-only image, point TORCH_INDEX_URL at PyTorch's CPU wheel index
# (docker build --build-arg TORCH_INDEX_URL=...); by default pip's configured index is used.
ARG TORCH_INDEX_URL=""
RUN pip install torch==2.13.0 ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
COPY pyproject.toml README.md ./
COPY distillery ./distillery
COPY tasks ./tasks
COPY flows ./flows
RUN pip install .
COPY params.yaml dvc.yaml .dvcignore ./
COPY .dvc/config .dvc/.gitignore ./.dvc/
RUN git init -q && git add -A && git -c user.name=distillery -c user.email=distillery@localhost commit -qm "image"

# Stores live under /app (mlruns/, .prefect/, data/, models/, reports/): mount a volume there to keep them.
ENTRYPOINT ["distillery"]
CMD ["run"]
