"""The process environment every Distillery command runs in: offline, no telemetry, local state.

Set once by each entry point (the CLI, the scheduled flow, the benchmark) before the heavy
libraries are imported; `setdefault`, so a user's own setting wins.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "GX_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "TOKENIZERS_PARALLELISM": "false",
}

# Set by the flow for the stages it runs through DVC: a stage's expected error is then printed
# once, by `distillery run`, instead of by the stage, DVC and Prefect in turn.
IN_FLOW_ENV = "DISTILLERY_IN_FLOW"


def configure_environment(root: Path) -> None:
    """Offline, no telemetry, project-local Prefect state; stage commands find this interpreter."""
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)
    os.environ.setdefault("PREFECT_HOME", str(root / ".prefect"))
    bindir = str(Path(sys.executable).parent)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
