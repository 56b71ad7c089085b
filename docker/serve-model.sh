#!/bin/sh
# The serving image's entry point: MLflow's scoring server over the registered pyfunc.
# Extra arguments go to `mlflow models serve` (e.g. --timeout 60).
set -eu
exec mlflow models serve -m "${MODEL_URI}" --env-manager local -h "${HOST}" -p "${PORT}" -w "${WORKERS}" "$@"
