"""The benchmark's own project folder: the repo's dvc.yaml, a params.yaml built from the repo's
params.yaml plus the benchmark profile, and git + DVC, so the real flow runs there unchanged.

The folder is separate from the checkout (default `bench/work/sst2`, git-ignored) so the
benchmark never touches the project's own models, registry or dvc.lock, and so a fresh
folder gives an honest first-run time (nothing cached by DVC).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import yaml

from distillery.code_deps import link_code
from distillery.config import PARAMS_FILE, ConfigError, Params, apply_overrides, params_from_dict, read_raw

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "bench" / "sst2.params.yaml"
QUICK_PROFILE = REPO / "bench" / "sst2-quick.params.yaml"
TINY_PROFILE = REPO / "bench" / "sst2-tiny.params.yaml"
# The benchmarks `distillery bench --benchmark NAME` runs: each a profile (and its quick profile)
# over the repo's params.yaml, and the data folder's two files (GLUE's names); "tiny": a second
# profile benchmarked in the same run as its own row (bench/tiny.py); "split_group": how bench/select.py
# splits train.tsv (SST-2's rows are parse-tree phrases: whole trees are held out; default: by label).
BENCHMARKS = {
    "sst2": {"title": "SST-2", "profile": PROFILE, "quick": QUICK_PROFILE, "data": "sst2",
             "eval_unit": "sentences", "tiny": TINY_PROFILE,
             "split_group": "contained"},
    "mrpc": {"title": "MRPC", "profile": REPO / "bench" / "mrpc.params.yaml",
             "quick": REPO / "bench" / "mrpc-quick.params.yaml", "data": "mrpc", "eval_unit": "sentence pairs"},
}
MARKER = ".distillery-bench"  # only a folder holding this file is ever deleted by the benchmark
BENCH_KEYS = {"train_rows": None, "eval_rows": None}
GITIGNORE = "/data/\n/models/\n/reports/\n/mlruns/\n/.prefect/\n/baselines/\n/logs/\n/distillery\n/tasks\n" + f"/{MARKER}\n"


def merge_profile(raw: dict, profile: dict) -> dict:
    """Profile values replace the repo's, key by key within each section."""
    out = json.loads(json.dumps(raw))
    for section, values in profile.items():
        if isinstance(values, dict) and isinstance(out.get(section), dict):
            out[section].update(values)
        else:
            out[section] = values
    return out


def build_params(data_dir: Path, quick: bool, overrides: list[str],
                 benchmark: str = "sst2", tiny: bool = False) -> tuple[dict, dict, Params]:
    """(raw params for the bench project, bench-only settings, validated params).

    Order: repo params.yaml < <benchmark>.params.yaml < (with `tiny`) its tiny profile
    < <benchmark>-quick.params.yaml (with --quick) < --set.
    """
    spec = BENCHMARKS[benchmark]
    for name in ("train.tsv", "dev.tsv"):
        if not (Path(data_dir) / name).is_file():
            raise ConfigError(f"--data {data_dir}: no {name} there (expected {spec['title']}'s train.tsv and dev.tsv)")
    raw = read_raw(REPO / PARAMS_FILE)
    for profile in [spec["profile"]] + ([spec["tiny"]] if tiny else []) + ([spec["quick"]] if quick else []):
        raw = merge_profile(raw, read_raw(profile))
    raw = apply_overrides(raw, overrides, "--set")
    bench = {**BENCH_KEYS, **(raw.pop("bench", None) or {})}
    unknown = set(bench) - set(BENCH_KEYS)
    if unknown:
        raise ConfigError(f"bench profile: unknown key(s) bench.{', bench.'.join(sorted(unknown))}")
    for key in ("train_rows", "eval_rows"):
        if bench[key] is not None and (not isinstance(bench[key], int) or bench[key] < 2):
            raise ConfigError(f"bench profile: bench.{key} must be null or an integer >= 2 (got {bench[key]!r})")
    raw["data"]["train_path"] = str((data_dir / "train.tsv").resolve())
    raw["data"]["eval_path"] = str((data_dir / "dev.tsv").resolve())
    return raw, bench, params_from_dict(raw, "bench params")


def write_sample(src: Path, dest: Path, rows: int | None, seed: int) -> Path:
    """`rows` data lines of a TSV drawn without replacement (file order kept), header first.

    Lines are copied byte for byte, so the slice parses exactly like the original.
    """
    if rows is None:
        return src
    header, *lines = src.read_bytes().splitlines(keepends=True)
    if rows < len(lines):
        keep = np.sort(np.random.default_rng(seed).choice(len(lines), size=rows, replace=False))
        lines = [lines[i] for i in keep]
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(header + b"".join(lines))
    return dest


def prepare_data(raw: dict, bench: dict, slice_dir: Path) -> None:
    """Point data.* at seeded slices (outside the project, like the real files) when asked."""
    seed = raw["base"]["seed"]
    for key, rows in (("train_path", bench["train_rows"]), ("eval_path", bench["eval_rows"])):
        src = Path(raw["data"][key])
        raw["data"][key] = str(write_sample(src, slice_dir / src.name, rows, seed).resolve())


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _git(work: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=distillery-bench", "-c", "user.email=bench@example.invalid",
                    *args], cwd=work, check=True, capture_output=True)


def make_work_project(work: Path, raw: dict, *, reuse: bool, note: str) -> bool:
    """Create (or, with `reuse`, keep) the bench project; returns True when it is fresh.

    A non-empty folder without the marker file is refused rather than deleted.
    """
    work = Path(work)
    if work.exists() and any(work.iterdir()):
        if not (work / MARKER).exists():
            raise ConfigError(f"{work}: not empty and not a benchmark work folder ({MARKER} missing); "
                              "refusing to delete it: choose another --work-dir")
        if reuse:
            (work / PARAMS_FILE).write_text(yaml.safe_dump(raw, sort_keys=False))
            link_code(work)
            return False
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    (work / MARKER).write_text("created by distillery bench; deleted and rebuilt by the next run\n")
    shutil.copy(REPO / "dvc.yaml", work / "dvc.yaml")
    shutil.copy(REPO / "must_pass.yaml", work / "must_pass.yaml")  # gate.suite: a dep of evaluate
    link_code(work)  # dvc.yaml's code deps: the code that runs
    (work / PARAMS_FILE).write_text(yaml.safe_dump(raw, sort_keys=False))
    (work / ".gitignore").write_text(GITIGNORE)
    # A commit is needed for the registry's lineage tags (and by `dvc exp`); DVC itself is
    # initialised by the flow (ensure_dvc), as for any copied project.
    _git(work, "init", "-q")
    _git(work, "add", "-A")
    _git(work, "commit", "-qm", note)
    params_from_dict(raw, str(work / PARAMS_FILE), work)  # data files present
    return True
