"""Registry access for `distillery serve-model`: resolve an alias, fetch a version's model directory.

The server's core (distillery/serving) takes these two callables; it never imports mlflow.
A fetched version is cached under `cache_dir/<name>/<version>/` (versions are immutable), so a
restart or a rollback to a version served before does not download it again.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import yaml


class RegistrySource:
    def __init__(self, tracking_uri: str, name: str, cache_dir: str | Path):
        import os

        from mlflow.tracking import MlflowClient

        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        self.tracking_uri, self.name = tracking_uri, name
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self.cache_dir = Path(cache_dir) / name

    def resolve(self, alias: str) -> str | None:
        """The version `alias` points at; None when the model or alias does not exist."""
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(self.name, alias).version)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                return None
            raise

    def fetch(self, version: str) -> Path:
        """The model directory (model.onnx, tokenizer, labels) of a registered version."""
        import mlflow

        dest = self.cache_dir / str(version)
        if not (dest / ".complete").exists():
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".v{version}-", dir=self.cache_dir))
            try:
                mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{self.name}/{version}",
                                                    dst_path=str(tmp), tracking_uri=self.tracking_uri)
                (tmp / ".complete").write_text("ok")
                shutil.rmtree(dest, ignore_errors=True)
                tmp.rename(dest)  # a half-downloaded version is never seen as complete
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return model_dir_of(dest)


def model_dir_of(pyfunc_dir: Path) -> Path:
    """The `model_dir` artifact inside a downloaded pyfunc model (its path is in MLmodel)."""
    mlmodel = yaml.safe_load((pyfunc_dir / "MLmodel").read_text())
    artifacts = mlmodel.get("flavors", {}).get("python_function", {}).get("artifacts", {})
    entry = artifacts.get("model_dir")
    if not entry or "path" not in entry:
        raise FileNotFoundError(f"{pyfunc_dir}: not a Distillery model (no model_dir artifact in MLmodel)")
    return pyfunc_dir / entry["path"]


def register_model_dir(client, experiment_id: str, name: str, model_dir: Path, *, gate_passed: bool = True,
                       tags: dict[str, str] | None = None) -> str:
    """Register an exported model directory as a new version, logged as the pipeline logs it (the
    pyfunc of tasks/pyfunc_model.py with the directory as its `model_dir` artifact). For the serving
    tests and benchmark, and for a model built outside the pipeline; the pipeline registers through
    tasks/register.py, which also decides the gate. Returns the version."""
    import mlflow

    from tasks.promotion import registry_lock
    from tasks.register import log_served_model

    with registry_lock(client.tracking_uri):
        mlflow.set_tracking_uri(client.tracking_uri)
        mlflow.set_registry_uri(client.tracking_uri)
        with mlflow.start_run(experiment_id=experiment_id, run_name="register_model_dir"):
            info = log_served_model(Path(model_dir), None)
        version = str(mlflow.register_model(info.model_uri, name, await_registration_for=60).version)
        for k, v in {"gate_passed": str(gate_passed).lower(), **(tags or {})}.items():
            client.set_model_version_tag(name, version, k, v)
    return version
