"""What every stage shares: its context (project root, params), its declared I/O, its report.

A stage reads and writes files only. Each stage module declares `io(params)`, the
files it reads and writes; `dvc.yaml` declares the same (a test checks they agree),
and the stage code takes its paths from there, never from literals.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from distillery.config import PARAMS_FILE, Params, load_params
from distillery.fileio import write_atomically

STAGES = ("demo_data", "validate", "teacher", "soft_targets", "distill", "prune", "quantize", "evaluate")


@dataclass(frozen=True)
class StageIO:
    deps: list[str]
    outs: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)
    params: list[str] = field(default_factory=list)


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


def remove_stage_leftovers(root: Path, io: StageIO) -> list[Path]:
    """Temp files and directories that a killed run of this stage left beside its outputs."""
    from distillery.fileio import remove_leftovers

    return [p for out in io.outs + io.metrics for p in remove_leftovers(Path(root) / out)]


def write_json_atomic(path: Path, data: dict) -> Path:
    text = json.dumps(data, indent=2, sort_keys=True, default=float) + "\n"
    return write_atomically(path, lambda tmp: tmp.write_text(text))


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def write_report(ctx: StageContext, stage: str, report: dict) -> Path:
    return write_json_atomic(ctx.report_path(stage), {"stage": stage, **report})
