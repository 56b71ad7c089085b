"""Soft targets in chunks: as Prefect tasks on a 2-worker Dask LocalCluster, the same logits as one
process scoring every row at once; a run stopped between chunks resumes with only the missing ones;
a chunk's file name changes with anything that changes its content."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.helpers import make_project, run_stage, tiny_params

pytestmark = pytest.mark.slow
CHUNK_ROWS = 16


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_harness):
    from distillery.env import configure_environment
    from distillery.demo_data import make_demo_dataset

    params = tiny_params(augment={"copies": 1}, soft_targets={"chunk_rows": 10**6, "workers": 0},
                         distill={"teacher_weight": 2.0, "teachers": [{"path": "teacher_v0", "weight": 1.0}]})
    train, eval_ = make_demo_dataset(params["data"]["demo_rows"], params["base"]["seed"])
    root = make_project(tmp_path_factory.mktemp("chunks"), params, list(train.text) + list(eval_.text))
    configure_environment(root)
    for stage in ("demo_data", "validate", "teacher", "teacher_folds"):
        run_stage(root, stage)
    # A second teacher with other weights (an identical copy would share the first one's chunks).
    from safetensors.torch import load_file, save_file

    shutil.copytree(root / "models" / "teacher", root / "teacher_v0")
    weights = load_file(root / "teacher_v0" / "model.safetensors")
    name = next(k for k in weights if k.startswith("classifier.weight"))
    weights[name] = weights[name] + 0.5
    save_file(weights, root / "teacher_v0" / "model.safetensors", metadata={"format": "pt"})
    return root


def set_params(root: Path, **section_values) -> None:
    raw = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in section_values.items():
        raw[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def logits(root: Path) -> np.ndarray:
    return np.load(root / "data" / "teacher_logits" / "logits.npy")


def chunk_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "data" / "teacher_logits" / "chunks").glob("*.parquet") if p.name != "texts.parquet")


def test_dask_chunks_match_one_process_and_resume(project):
    from distillery_cli.cli import main

    # The single-process path: one chunk holding every row, scored by one predict_logits call.
    whole = run_stage(project, "soft_targets")
    assert whole["chunks"] == 2 and whole["chunks_computed"] == 2  # one per teacher
    reference = logits(project).copy()

    # Chunks of 16 rows as Prefect tasks on a temporary 2-worker LocalCluster, via the stage command.
    set_params(project, soft_targets={"chunk_rows": CHUNK_ROWS, "workers": 2})
    assert main(["--project-dir", str(project), "stage", "soft_targets"]) == 0
    report = json.loads((project / "reports" / "soft_targets.json").read_text())
    per_teacher = -(-report["rows"] // CHUNK_ROWS)
    assert report["chunks"] == report["chunks_computed"] == 2 * per_teacher > 4
    assert len(chunk_files(project)) == 2 * per_teacher  # the single-chunk files of before were dropped
    np.testing.assert_allclose(logits(project), reference, rtol=0, atol=1e-5)
    on_dask = logits(project).copy()

    # Nothing missing: nothing computed (and no cluster started), the same targets.
    again = run_stage(project, "soft_targets")
    assert again["chunks_computed"] == 0
    np.testing.assert_array_equal(logits(project), on_dask)

    # A run stopped after 3 chunks (an error stands in for the kill: both leave the finished files).
    for f in chunk_files(project):
        f.unlink()
    from tasks import soft_targets
    from tasks.common import stage_context

    def stops_after_three(specs):
        for spec in specs[:3]:
            soft_targets.compute_chunk(spec)
        raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        soft_targets.run(stage_context(project), compute=stops_after_three)
    survivors = {f: f.stat().st_mtime_ns for f in chunk_files(project)}
    assert len(survivors) == 3
    assert not list((project / "data" / "teacher_logits" / "chunks").glob(".*"))  # no half-written chunk
    resumed = run_stage(project, "soft_targets")
    assert resumed["chunks_computed"] == resumed["chunks"] - 3
    assert all(f.stat().st_mtime_ns == t for f, t in survivors.items())  # not recomputed
    np.testing.assert_allclose(logits(project), reference, rtol=0, atol=1e-5)


def test_chunk_identity_follows_its_content(project):
    from distillery.config import load_params
    from tasks.soft_targets import plan_chunks

    p = load_params(project / "params.yaml")
    p = p.model_copy(update={"soft_targets": p.soft_targets.model_copy(update={"chunk_rows": CHUNK_ROWS})})
    texts = [f"text {i}" for i in range(40)]
    base = [s["out"] for s in plan_chunks(Path("t"), "a" * 32, texts, project / "x" / "texts.parquet", p)]
    assert len(base) == 3 and len(set(base)) == 3
    assert base == [s["out"] for s in plan_chunks(Path("t"), "a" * 32, texts, project / "x" / "texts.parquet", p)]
    other_teacher = plan_chunks(Path("t"), "b" * 32, texts, project / "x" / "texts.parquet", p)
    other_rows = plan_chunks(Path("t"), "a" * 32, texts[:-1] + ["changed"], project / "x" / "texts.parquet", p)
    longer = p.model_copy(update={"data": p.data.model_copy(update={"max_length": 32})})
    other_length = plan_chunks(Path("t"), "a" * 32, texts, project / "x" / "texts.parquet", longer)
    assert not set(base) & {s["out"] for s in other_teacher}
    assert [a == b["out"] for a, b in zip(base, other_rows)] == [True, True, False]  # only the last chunk
    assert not set(base) & {s["out"] for s in other_length}


def test_local_cluster_workers_share_the_threads_of_base_threads():
    from distillery.config import SoftTargetsConfig
    from distillery.config import params_from_dict
    from tasks.soft_targets import _chunk_spec

    assert SoftTargetsConfig().threads(2) == 2                       # in the stage's process
    assert SoftTargetsConfig(workers=2).threads(2) == 1              # two workers on two cores: one each
    assert SoftTargetsConfig(workers=4).threads(2) == 1              # never fewer than one
    assert SoftTargetsConfig(workers=2).threads(8) == 4
    assert SoftTargetsConfig(workers=2, address="tcp://127.0.0.1:8786").threads(2) == 2  # their own machines
    assert SoftTargetsConfig(workers=2, worker_threads=3).threads(2) == 3
    p = params_from_dict({**tiny_params(), "base": {**tiny_params()["base"], "threads": 2},
                          "soft_targets": {"workers": 2}}, "test")
    spec = _chunk_spec(Path("/m"), "0" * 32, ["a"], 0, 0, Path("/d/texts.parquet"), p)
    assert spec["threads"] == 1


def test_local_cluster_workers_keep_glibcs_default_malloc_trimming():
    """Dask's nannies export MALLOC_TRIM_THRESHOLD_=65536 to their workers, which made a 1-thread teacher
    ~50% slower (flows/sweep.py); the pipeline's LocalCluster leaves it out and keeps Dask's other settings."""
    import os

    from distributed import Client, LocalCluster

    from flows.sweep import local_cluster

    before = os.environ.get("MALLOC_TRIM_THRESHOLD_")
    kwargs = {"n_workers": 1, "threads_per_worker": 1, "processes": True, "host": "127.0.0.1",
              "dashboard_address": None}
    try:
        for make, expect in ((local_cluster, before), (LocalCluster, before or "65536")):  # ours, then Dask's default
            with make(**kwargs) as cluster, Client(cluster) as client:
                (env,) = client.run(lambda: dict(os.environ)).values()
            assert env.get("MALLOC_TRIM_THRESHOLD_") == expect, make
            assert env.get("OMP_NUM_THREADS") == "1"
    finally:  # a nanny also sets it in the process that starts it
        if before is None:
            os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
        else:
            os.environ["MALLOC_TRIM_THRESHOLD_"] = before
