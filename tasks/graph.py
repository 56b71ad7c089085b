"""The stage graph, read from `dvc.yaml` through DVC's own API: the one declaration of it.

`dvc.yaml` is the only place the stages, their order, deps, params and outs are written (with
`${...}` paths from params.yaml, resolved by DVC exactly as `dvc repro` resolves them). Everything
else reads it from here: `distillery stage NAME` (which stages exist, what a killed run of one
left behind), the flow (one Prefect task per stage, in this order; what to log for each), the
sweep, and the evaluate stage (the model stages it compares are those whose reports it reads).

Why dvc.yaml rather than a Python table that generates it: DVC is what runs the stages and
decides what is stale, so its file is the truth whichever way the pipeline is started (`dvc
repro`, `distillery run`); a generated file would be a second copy a user could edit by hand.
The only generated part is each stage's code deps (`distillery dvc-deps --write`).

A stage's name is its task module's name: stage `distill` runs `tasks/distill.py`.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

from distillery.code_deps import is_code_dep


@dataclass(frozen=True)
class Stage:
    """One stage as dvc.yaml declares it, paths resolved (relative to the project root)."""

    name: str
    cmd: str
    deps: tuple[str, ...]     # data and model deps, in dvc.yaml's order (code deps: `code`)
    code: tuple[str, ...]     # the project's source files it runs (generated, see distillery/code_deps.py)
    params: tuple[str, ...]   # params.yaml keys it depends on
    outs: tuple[str, ...]     # outputs that are not metrics
    metrics: tuple[str, ...]  # DVC metrics files (reports/<stage>.json, ...)

    @property
    def module(self) -> str:
        return f"tasks.{self.name}"


def stage_graph(root: str | Path) -> dict[str, Stage]:
    """{name: Stage} in dvc.yaml's order (the order the flow runs them)."""
    from dvc.repo import Repo

    root = Path(root).resolve()
    logging.getLogger("dvc").setLevel(logging.WARNING)
    # DVC resolves paths against the cwd; `uninitialized`: a project copied without `.dvc/` is read too
    with contextlib.chdir(root), Repo(str(root), uninitialized=True) as repo:
        return {st.name: _stage(st) for st in repo.index.stages if st.path_in_repo == "dvc.yaml"}


def _stage(st) -> Stage:
    params = [p for d in st.deps if type(d).__name__ == "ParamsDependency" for p in d.params]
    files = [str(d.def_path) for d in st.deps if type(d).__name__ != "ParamsDependency"]
    return Stage(name=st.name, cmd=str(st.cmd),
                 deps=tuple(f for f in files if not is_code_dep(f)), code=tuple(f for f in files if is_code_dep(f)),
                 params=tuple(params),
                 outs=tuple(str(o.def_path) for o in st.outs if not o.metric),
                 metrics=tuple(str(o.def_path) for o in st.outs if o.metric))


def stage_names(root: str | Path) -> list[str]:
    return list(stage_graph(root))


def reads_reports_of(graph: dict[str, Stage], stage: str) -> list[str]:
    """The stages whose metrics files `stage` depends on, in graph order (for evaluate: the model
    stages it compares, teacher to the final one)."""
    deps = set(graph[stage].deps)
    return [name for name, st in graph.items() if name != stage and deps & set(st.metrics)]
