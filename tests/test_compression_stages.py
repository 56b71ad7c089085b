"""The compression techniques switched on together in params.yaml, through the real stage code
on a tiny project: augmentation, two fused teachers, a narrower student with a trimmed
vocabulary and intermediate-layer losses, iterative pruning with a dropped layer, and the
quantized result still a self-contained model directory."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml

from tests.helpers import make_project, run_stage, tiny_params

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    from distillery.demo_data import make_demo_dataset

    params = tiny_params(
        student={"layers": [0, 1, 2], "hidden_size": 16, "heads": 2, "intermediate_size": 32,
                 "importance_batches": 2, "trim_vocabulary": True, "trim_positions": True},
        augment={"copies": 1, "mask_prob": 0.2, "replace_prob": 0.1, "ngram_prob": 0.3},
        distill={"hidden_weight": 1.0, "attention_weight": 1.0, "intermediate_epochs": 1, "epochs": 2,
                 "teacher_weight": 2.0, "teachers": [{"path": "teacher_v0", "weight": 1.0}]},
        prune={"steps": 2, "drop_layers": [1], "head_fraction": 0.5, "ffn_fraction": 0.5})
    train, eval_ = make_demo_dataset(params["data"]["demo_rows"], params["base"]["seed"])
    root = make_project(tmp_path_factory.mktemp("compress"), params, list(train.text) + list(eval_.text))
    return root


def compress(root) -> dict:
    """Every stage up to quantize, in this process; their reports."""
    reports = {stage: run_stage(root, stage) for stage in ("demo_data", "validate", "teacher", "teacher_folds")}
    shutil.copytree(root / "models" / "teacher", root / "teacher_v0")  # an "earlier run's" checkpoint
    reports.update({stage: run_stage(root, stage) for stage in ("soft_targets", "distill", "prune", "quantize")})
    return reports


@pytest.fixture(scope="module")
def compressed(project) -> dict:
    """The project compressed once (whichever test asks first): each stage's report."""
    return compress(project)


@pytest.fixture
def params_restored(project):
    """A test that edits params.yaml leaves it as it found it."""
    saved = (project / "params.yaml").read_text()
    yield
    (project / "params.yaml").write_text(saved)


def test_techniques_run_together_and_each_leaves_its_mark(project, compressed):
    reports = compressed
    soft = reports["soft_targets"]
    validated = yaml.safe_load((project / "params.yaml").read_text())["paths"]["validated_dir"]
    train_rows = json.loads((project / validated / "manifest.json").read_text())["splits"]["train"]["rows"]
    assert soft["train_rows"] == train_rows > 0  # every training row, also when they fill no whole chunk
    assert soft["augmented_rows"] > 0 and soft["rows"] == soft["train_rows"] + soft["augmented_rows"]
    assert [t["weight"] for t in soft["teachers"]] == [2.0, 1.0]

    distill = reports["distill"]
    assert distill["student"]["hidden_size"] == 16
    assert distill["student"]["vocab_size"] < distill["student"]["teacher_vocab"]
    cfg = json.loads((project / "models" / "student" / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["max_position_embeddings"]) == (16, 3, 64)

    prune = reports["prune"]
    assert len(prune["steps"]) == 2 and prune["dropped_layers"] == [1]
    assert len(prune["structure"]["heads"]) == 2               # 3 layers, one dropped
    assert sum(prune["structure"]["heads"]) == 2                # 2 + 2 heads, half removed
    assert prune["structure"]["intermediate"] == [16, 16]       # 32 neurons, half removed

    quant = reports["quantize"]
    assert quant["accuracy"] >= 0 and (project / "models" / "quantized" / "model.onnx").exists()


def test_soft_targets_are_reproducible_and_fuse_both_teachers(project, compressed, params_restored):
    from tasks.common import stage_context
    from tasks.soft_targets import load_distill_set

    ctx = stage_context(project)
    data, fused = load_distill_set(ctx)
    assert (data.labels == -1).sum() > 0 and np.isfinite(fused).all()
    before = fused.copy()
    run_stage(project, "soft_targets")
    assert np.array_equal(load_distill_set(ctx)[1], before)     # seeded: the same set and targets again
    # Giving all the weight to the main teacher changes the targets: the second teacher counted.
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["distill"]["teachers"] = []
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    run_stage(project, "soft_targets")
    single = load_distill_set(stage_context(project))[1]
    assert single.shape == before.shape and not np.allclose(single, before)


def test_a_teacher_with_other_labels_is_refused(project, compressed, params_restored):
    from distillery.modeling import LABELS_FILE

    other = project / "teacher_other"
    shutil.copytree(project / "models" / "teacher", other)
    (other / LABELS_FILE).write_text(json.dumps({"labels": ["a", "b", "c"]}))
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["distill"]["teachers"] = [{"path": "teacher_other", "weight": 1.0}]
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(ValueError, match="distill.teachers: .*teacher_other classifies into"):
        run_stage(project, "soft_targets")
