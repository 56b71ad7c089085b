"""Versions for the images, read from pyproject.toml (the one declaration of every pin).

  python3 docker/pins.py PYPROJECT torch      -> the pinned torch version, e.g. 2.13.0
  python3 docker/pins.py PYPROJECT --serving  -> the serving image's requirements, one per line

The serving image holds what the registered pyfunc needs to load and answer, and nothing of the
training stack (no torch, no transformers). MLflow's scoring server comes from `mlflow-skinny`,
released in lockstep with `mlflow`, so it takes mlflow's pin.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

# package pinned in pyproject -> package installed in the serving image
SERVING = {"mlflow": "mlflow-skinny", "onnxruntime": "onnxruntime", "tokenizers": "tokenizers",
           "numpy": "numpy", "pandas": "pandas"}


def pins(pyproject: Path) -> dict[str, str]:
    """{package (lower case): version} for every `name==version` in [project].dependencies."""
    found = {}
    for dep in tomllib.loads(pyproject.read_text())["project"]["dependencies"]:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)==([^;\s]+)", dep.strip())
        if m:
            found[m.group(1).lower()] = m.group(2)
    return found


def pin(pyproject: Path, name: str) -> str:
    versions = pins(pyproject)
    if name.lower() not in versions:
        raise SystemExit(f"{pyproject}: no exact pin for {name} in [project].dependencies")
    return versions[name.lower()]


def serving_requirements(pyproject: Path) -> list[str]:
    return [f"{image_pkg}=={pin(pyproject, name)}" for name, image_pkg in SERVING.items()]


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    path, what = Path(sys.argv[1]), sys.argv[2]
    print("\n".join(serving_requirements(path)) if what == "--serving" else pin(path, what))
