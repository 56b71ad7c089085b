"""Unit tests of the benchmark's tiny profile (bench/tiny.py, bench/sst2-tiny.params.yaml): how its
params are layered over the main project's, the soft-target chunk seeding and its two targets.
The whole tiny row runs in tests/test_bench.py."""

from __future__ import annotations

import pytest

from bench.report import evaluate_targets
from bench.tiny import build_tiny_params, has_tiny, seed_soft_target_chunks, tiny_work_dir
from bench.workdir import TINY_PROFILE, build_params
from distillery.config import params_from_dict, read_raw
from tests.test_bench_units import PIPELINE, row


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "sst2"
    d.mkdir()
    lines = [f"a phrase number {i} \t{i % 2}\n" for i in range(50)]
    (d / "train.tsv").write_text("sentence\tlabel\n" + "".join(lines))
    (d / "dev.tsv").write_text("sentence\tlabel\n" + "".join(lines[:20]))
    return d


def test_tiny_params_take_the_profile_the_main_teacher_and_only_shared_overrides(data_dir, tmp_path):
    main_raw, _, _ = build_params(data_dir, True, ["distill.epochs=9"])
    main_raw["data"]["train_path"] = str(tmp_path / "slice" / "train.tsv")  # what prepare_data points at
    teacher = tmp_path / "work" / "models" / "teacher"
    raw = build_tiny_params(data_dir, False, ["base.threads=1", "distill.epochs=9", "teacher.model=elsewhere"],
                            ["student.bilstm.hidden_size=8"], "sst2", main_raw, teacher)
    p = params_from_dict(raw, "tiny")
    profile = read_raw(TINY_PROFILE)
    assert p.student.architecture == "bilstm" and p.student.bilstm.hidden_size == 8       # tiny override wins
    assert p.student.bilstm.embedding_dim == profile["student"]["bilstm"]["embedding_dim"]
    assert p.quantize.method == "onnx_int4_embeddings" and p.augment.copies == profile["augment"]["copies"]
    assert p.teacher.model == str(teacher.resolve()) and p.teacher.finetune is False      # the main project's
    assert p.base.threads == 1                                                            # shared section
    assert p.distill.epochs == profile["distill"]["epochs"]                               # main-only override
    assert p.data.train_path == main_raw["data"]["train_path"] and p.data.eval_path == main_raw["data"]["eval_path"]
    assert p.measure.latency_samples == 872 and "bench" not in raw                        # sst2 profile beneath


def test_only_sst2_has_a_tiny_profile_and_its_project_sits_beside_the_main_one(tmp_path):
    assert has_tiny("sst2") and not has_tiny("mrpc")
    assert tiny_work_dir(tmp_path / "work" / "sst2-quick") == tmp_path / "work" / "sst2-quick-tiny"


def test_soft_target_chunks_are_linked_into_the_tiny_cache(data_dir, tmp_path):
    _, _, p = build_params(data_dir, False, [])
    src = tmp_path / "main" / p.paths.logits_dir / "chunks"
    src.mkdir(parents=True)
    for name in ("aaa-0000000000-x.parquet", "aaa-0000002048-y.parquet"):
        (src / name).write_bytes(name.encode())
    (src / "texts.parquet.tmp").write_bytes(b"left by a killed writer")  # not a chunk
    assert seed_soft_target_chunks(tmp_path / "main", p, tmp_path / "tiny", p) == 2
    dest = tmp_path / "tiny" / p.paths.logits_dir / "chunks"
    assert sorted(f.name for f in dest.iterdir()) == ["aaa-0000000000-x.parquet", "aaa-0000002048-y.parquet"]
    assert (dest / "aaa-0000002048-y.parquet").read_bytes() == b"aaa-0000002048-y.parquet"


def test_tiny_targets_judge_size_and_accuracy_only_when_the_row_exists():
    rows = {"A": row(0.89, 90.9, 15.0), "B": row(0.89, 23.0, 2.4), "D": row(0.85, 21.7, 4.6),
            "E-quantize": row(0.885, 3.6, 0.5)}
    assert not {"tiny_size_mb", "tiny_accuracy"} & {t["name"] for t in evaluate_targets(rows, PIPELINE)}
    rows["E-tiny"] = row(0.8589, 1.36, 0.4)
    t = {x["name"]: x for x in evaluate_targets(rows, PIPELINE)}
    assert t["tiny_size_mb"]["value"] == 1.36 and t["tiny_size_mb"]["met"] is True
    assert t["tiny_accuracy"]["value"] == pytest.approx(85.89) and t["tiny_accuracy"]["met"] is False
    rows["E-tiny"] = row(0.8601, 1.51, 0.4)
    t = {x["name"]: x for x in evaluate_targets(rows, PIPELINE)}
    assert t["tiny_size_mb"]["met"] is False and t["tiny_accuracy"]["met"] is True
