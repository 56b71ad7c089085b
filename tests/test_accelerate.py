"""Distillation under `accelerate launch` (its torchrun launcher, `--multi_gpu`): two CPU processes (gloo) train the same student as one
process does, on a tiny project, through the unchanged `distillery stage distill` command.

Tolerance: each rank computes its half of every batch and DDP sums the two halves' gradients, so
the sums run in another order than in one process (float32 rounding, ~1e-7 relative per step);
AdamW then carries such differences through every step. The tiny teacher has dropout 0 because
each process draws its own dropout masks: with dropout on, the runs would be equally good, not equal.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import free_port, make_project, run_stage, tiny_params

BIN = Path(sys.executable).parent
ATOL = 1e-5  # on weights and loss; measured: 7.5e-8 largest weight difference (summation order only)


def run_command(root: Path, name: str, launcher: list[str], env: dict) -> None:
    proc = subprocess.run([*launcher, "-m", "distillery_cli", "--project-dir", str(root), "stage", name],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_shards_weight_each_ranks_loss_to_the_global_batch_mean():
    from distillery.training import shard

    idx = np.array([7, 3, 9, 1, 4])
    parts = [shard(idx, r, 2) for r in range(2)]
    assert [p.tolist() for p, _ in parts] == [[7, 3, 9], [1, 4]]
    # DDP averages the ranks' gradients: (1.2 * mean(first 3) + 0.8 * mean(last 2)) / 2 = mean(all 5)
    assert [w for _, w in parts] == [pytest.approx(1.2), pytest.approx(0.8)]
    losses = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    ranked = sum(w * losses[np.isin(idx, p)].mean() for p, w in parts) / 2
    assert ranked == pytest.approx(losses.mean())
    # A batch of one row on two ranks: the second rank still takes part, with weight 0.
    assert [(p.tolist(), w) for p, w in (shard(np.array([5]), r, 2) for r in range(2))] == [([5], 2.0), ([5], 0.0)]
    assert shard(idx, 0, 1)[0].tolist() == idx.tolist()


@pytest.mark.slow
def test_two_cpu_processes_match_one(tmp_path):
    from safetensors.numpy import load_file

    from distillery.demo_data import make_demo_dataset
    from tasks.common import read_json

    # 61 training rows in batches of 8: the last batch (5 rows) splits 3 / 2 between the ranks.
    params = tiny_params(data={"demo_rows": 90}, distill={"epochs": 2, "batch_size": 8, "max_train_rows": 61},
                         prune={"recovery_epochs": 0})
    train, eval_ = make_demo_dataset(params["data"]["demo_rows"], params["base"]["seed"])
    root = make_project(tmp_path / "p", params, list(train.text) + list(eval_.text), dropout=0.0)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1"}  # no user accelerate config
    for stage in ("demo_data", "validate", "teacher", "teacher_folds", "soft_targets"):
        run_stage(root, stage)
    run_command(root, "distill", [str(BIN / "python")], env)  # both runs as fresh processes
    single = tmp_path / "single"
    shutil.copytree(root / "models" / "student", single)
    single_report = read_json(root / "reports" / "distill.json")
    shutil.rmtree(root / "models" / "student")

    launch = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_ip", "127.0.0.1",
              "--main_process_port", str(free_port())]
    run_command(root, "distill", launch, env)
    multi_report = read_json(root / "reports" / "distill.json")

    assert single_report["train"]["processes"] == 1 and multi_report["train"]["processes"] == 2
    assert multi_report["train"]["steps"] == single_report["train"]["steps"] == 2 * 8  # same global batches
    a, b = load_file(single / "model.safetensors"), load_file(root / "models" / "student" / "model.safetensors")
    assert a.keys() == b.keys()
    diffs = {k: float(np.abs(a[k] - b[k]).max()) for k in a}
    assert max(diffs.values()) < ATOL, sorted(diffs.items(), key=lambda kv: -kv[1])[:3]
    # Training moved the weights far more than the two runs differ: the comparison is not vacuous.
    teacher = load_file(root / "models" / "teacher" / "model.safetensors")
    moved = max(float(np.abs(a[k] - teacher[k]).max()) for k in a if k in teacher and a[k].shape == teacher[k].shape)
    assert moved > 100 * ATOL
    assert abs(multi_report["train"]["final_loss"] - single_report["train"]["final_loss"]) < ATOL
    assert multi_report["accuracy"] == single_report["accuracy"]
