"""Cross-fitted soft targets (teacher.cross_fit_folds): each row's fold is a seeded hash of its
text; the teacher_folds stage fine-tunes one teacher per fold without that fold's rows; the
soft_targets stage scores every row, and every augmented copy, with the fold teacher that did not
see it (its source row's), from chunk files it can resume, and refuses what cannot be cross-fitted."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from tests.helpers import make_project, run_stage, tiny_params


def test_a_rows_fold_is_a_seeded_hash_of_its_texts():
    from distillery.folds import row_fold, row_folds

    rows = [f"text number {i}" for i in range(3000)]
    folds = row_folds(rows, 3, seed=42)
    assert folds.dtype == np.int16 and set(folds.tolist()) == {0, 1, 2}
    assert all(abs(n - 1000) < 100 for n in np.bincount(folds))  # near equal
    assert row_fold("text number 7", 3, 42) == folds[7]  # from the row alone: files can stream
    assert row_folds(rows + ["text number 7"], 3, 42)[-1] == folds[7]  # a duplicate shares its fold
    assert (row_folds(rows, 3, seed=43) != folds).mean() > 0.5  # the seed draws other folds
    assert row_fold(("a", "b"), 5, 0) == row_fold(("a", "b"), 5, 0)
    assert row_fold(("ab", "c"), 10**9, 0) != row_fold(("a", "bc"), 10**9, 0)  # the pair's boundary counts


def test_out_of_fold_rows_are_the_split_without_one_fold(tmp_path):
    from distillery.data import SplitInputs, TextDataset, save_split
    from distillery.folds import OutOfFold, row_folds

    texts = [f"row {i}" for i in range(50)]
    path = save_split(TextDataset(texts, np.arange(50) % 2), tmp_path / "train.parquet")
    rows = SplitInputs(path, batch_rows=7)
    folds = row_folds(texts, 2, 0)
    view = OutOfFold(rows, folds, 1)
    kept = [t for b in view.batches() for t in b]
    assert kept == [t for t, f in zip(texts, folds) if f != 1] and len(view) == len(kept)
    np.testing.assert_array_equal(view.labels(), (np.arange(50) % 2)[folds != 1])


def test_params_refuse_what_cannot_be_cross_fitted():
    from distillery.config import ConfigError, params_from_dict

    for folds, finetune, says in ((1, "auto", "one fold holds out every row"),
                                  (3, False, "teacher.finetune is false")):
        raw = tiny_params(teacher={"cross_fit_folds": folds, "finetune": finetune})
        raw["data"].update(train_path="t.csv", eval_path="e.csv")
        with pytest.raises(ConfigError, match="cross_fit_folds") as err:
            params_from_dict(raw, check_files=False)
        assert says in str(err.value)


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_harness):
    from distillery.demo_data import make_demo_dataset
    from distillery.env import configure_environment

    params = tiny_params(teacher={"cross_fit_folds": 2}, augment={"copies": 1},
                         soft_targets={"chunk_rows": 40, "workers": 0})
    train, eval_ = make_demo_dataset(params["data"]["demo_rows"], params["base"]["seed"])
    root = make_project(tmp_path_factory.mktemp("crossfit"), params, list(train.text) + list(eval_.text))
    configure_environment(root)
    for stage in ("demo_data", "validate", "teacher"):
        run_stage(root, stage)
    return root


def _classify(model_dir, rows):
    from distillery.modeling import load_model_dir
    from distillery.training import TorchClassifier

    model, tokenizer, _, _ = load_model_dir(model_dir)
    return TorchClassifier(model, tokenizer, 64).predict_logits(rows)


@pytest.mark.slow
def test_every_row_is_scored_by_the_fold_teacher_that_did_not_see_it(project):
    import pyarrow.parquet as pq

    from distillery.augment import augment_batches
    from distillery.data import load_split
    from distillery.folds import read_manifest, row_folds
    from tasks.common import stage_context

    folds_report = run_stage(project, "teacher_folds")
    manifest = read_manifest(project / "models" / "teacher_folds")
    assert manifest["folds"] == 2 and manifest["teachers"] == ["fold-0", "fold-1"]
    train = load_split(project / "data" / "validated" / "train.parquet")
    folds = row_folds(train.inputs, 2, manifest["seed"])
    assert folds_report["fold_rows"] == np.bincount(folds).tolist()
    assert [f["train_rows"] for f in folds_report["fits"]] == [int((folds != k).sum()) for k in (0, 1)]
    assert folds_report["train"]["seconds"] == pytest.approx(sum(f["train"]["seconds"] for f in folds_report["fits"]))
    assert 0 < folds_report["train"]["seconds"] <= folds_report["seconds"]  # bench/pipeline_timing.py reads it

    report = run_stage(project, "soft_targets")
    assert report["teachers"][0]["cross_fit_folds"] == 2 and report["chunks"] == 2 * -(-report["rows"] // 40)
    logits_dir = project / "data" / "teacher_logits"
    rows = load_split(logits_dir / "distill_set.parquet").inputs
    got = np.load(logits_dir / "logits.npy")
    n = len(train)
    p = stage_context(project).params
    a = p.augment
    sources = np.concatenate([s for _, s in augment_batches(
        lambda: iter([train.inputs]), a.copies, mask_prob=a.mask_prob, replace_prob=a.replace_prob,
        ngram_prob=a.ngram_prob, max_ngram=a.max_ngram, seed=p.base.seed)])
    assert len(rows) == n + len(sources)
    fold_of_row = np.concatenate([folds, folds[sources]])  # a copy is scored as its source row
    stored = pq.read_table(logits_dir / "distill_set.parquet").column("fold").to_numpy()  # the rows file
    np.testing.assert_array_equal(stored, fold_of_row)
    full = _classify(project / "models" / "teacher", rows)
    for k in (0, 1):
        mine = np.flatnonzero(fold_of_row == k)
        expected = _classify(project / "models" / "teacher_folds" / f"fold-{k}", [rows[i] for i in mine])
        np.testing.assert_allclose(got[mine], expected, atol=1e-4)
        assert not np.allclose(got[mine], full[mine], atol=1e-2)  # not the teacher that saw them
    held_out = (got[:n].argmax(1) == train.labels).mean()
    assert report["teachers"][0]["train_accuracy"] == pytest.approx(held_out)

    again = run_stage(project, "soft_targets")  # every chunk of every fold teacher is on disk
    assert again["chunks_computed"] == 0
    np.testing.assert_array_equal(np.load(logits_dir / "logits.npy"), got)


@pytest.mark.slow
def test_a_teacher_with_a_head_is_refused_and_the_fold_teachers_are_kept(project):
    from distillery.config import ConfigError

    folds_dir = project / "models" / "teacher_folds"
    if not (folds_dir / "fold-1").is_dir():
        run_stage(project, "teacher_folds")
    before = {f: f.stat().st_mtime_ns for f in folds_dir.rglob("*")}
    raw = yaml.safe_load((project / "params.yaml").read_text())
    original = dict(raw["teacher"])
    raw["teacher"].update(model="models/teacher")  # fine-tuned already: `auto` trains nothing
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    try:
        with pytest.raises(ConfigError, match="teacher.cross_fit_folds is 2, but 'models/teacher' already has"):
            run_stage(project, "teacher_folds")
        assert {f: f.stat().st_mtime_ns for f in folds_dir.rglob("*")} == before
    finally:
        raw["teacher"] = original
        (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def test_off_by_default_is_a_manifest_only(tmp_path):
    from distillery.config import params_from_dict
    from distillery.folds import read_manifest
    from tasks import teacher_folds
    from tasks.common import StageContext

    raw = tiny_params()
    raw["data"].update(train_path="t.csv", eval_path="e.csv")
    ctx = StageContext(tmp_path, params_from_dict(raw, check_files=False))
    assert teacher_folds.run(ctx) == {"folds": 0}  # no data read, no model loaded
    assert read_manifest(tmp_path / "models" / "teacher_folds") == {"folds": 0, "seed": 42, "teachers": []}
    assert json.loads((tmp_path / "reports" / "teacher_folds.json").read_text())["folds"] == 0
