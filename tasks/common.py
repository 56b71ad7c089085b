"""What every stage shares: its context (project root, params), its report.

A stage reads and writes files only; `dvc.yaml` declares which (read through DVC's API:
tasks/graph.py), and the stage code takes its paths from params.yaml, never from literals.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from distillery.config import PARAMS_FILE, Params, load_params
from distillery.fileio import write_atomically

@dataclass
class StageContext:
    root: Path
    params: Params

    def path(self, rel: str) -> Path:
        return self.root / rel

    def report_path(self, stage: str) -> Path:
        return report_path(self.root, self.params, stage)


def report_rel(params: Params, stage: str) -> str:
    return f"{params.paths.reports_dir}/{stage}.json"


def report_path(root: Path, params: Params, stage: str) -> Path:
    return Path(root) / report_rel(params, stage)


def stage_context(root: str | Path | None = None, uses_torch: bool = True) -> StageContext:
    """Load params for a stage run (DVC runs stages from the project root)."""
    root = Path(root or os.getcwd()).resolve()
    params = load_params(root / PARAMS_FILE)
    if uses_torch:  # heavy (~3 s): only the model stages pay for it
        import torch

        torch.set_num_threads(params.base.threads)
        from distillery.training import seed_everything

        seed_everything(params.base.seed)
    return StageContext(root, params)


def remove_stage_leftovers(root: Path, outs: list[str]) -> list[Path]:
    """Temp files and directories that a killed run of a stage left beside its outputs (`outs`:
    the stage's outs and metrics as dvc.yaml declares them, see tasks/graph.py)."""
    from distillery.fileio import remove_leftovers

    return [p for out in outs for p in remove_leftovers(Path(root) / out)]


def write_json_atomic(path: Path, data: dict) -> Path:
    text = json.dumps(data, indent=2, sort_keys=True, default=float) + "\n"
    return write_atomically(path, lambda tmp: tmp.write_text(text))


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def write_report(ctx: StageContext, stage: str, report: dict) -> Path:
    return write_json_atomic(ctx.report_path(stage), {"stage": stage, **report})
