"""The tiny profile's row (E-tiny): a second bench project, run by the same `distillery bench`.

Its params: the repo's params.yaml < the benchmark profile < the tiny profile (e.g.
bench/sst2-tiny.params.yaml) < the quick profile (with --quick) < the bench's `--set` items for the
sections both projects must share (SHARED_SECTIONS: threads, data columns and lengths, measurement)
< the tiny overrides. Its data paths are the main project's (the same seeded slices), and its
teacher is the main project's fine-tuned teacher directory (`teacher.model` is a path,
`teacher.finetune: false`): the teacher stage loads and measures it but trains nothing, and the
tiny project does not cross-fit (`teacher.cross_fit_folds: 0`: a fine-tuned teacher has no rows to
hold out).

Soft targets are reused through the soft_targets stage's own content-addressed chunk cache: the
main project's chunk files are linked into the fresh tiny project's `<logits_dir>/chunks/` before
its flow runs; a chunk's name is the md5 of the teacher's weights and of its rows, and the teacher
stage writes the same weights back, so every chunk whose rows are the same (the original training
rows, in order) is read instead of computed, and only the rest (augmented texts) runs the teacher.
The stage and DVC stay in charge: nothing is marked done behind their back.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bench.workdir import BENCHMARKS, build_params
from distillery.config import Params, apply_overrides, params_from_dict, parse_override

TINY_KEY = "E-tiny"          # its row in the results
SHARED_SECTIONS = ("base", "data", "measure")  # `--set` items here apply to the tiny project too


def has_tiny(benchmark: str) -> bool:
    return "tiny" in BENCHMARKS[benchmark]


def tiny_work_dir(work: Path) -> Path:
    return Path(work).parent / f"{Path(work).name}-tiny"


def build_tiny_params(data_dir: Path, quick: bool, overrides: list[str], tiny_overrides: list[str],
                      benchmark: str, main_raw: dict, teacher_dir: Path) -> dict:
    """Raw params for the tiny project (see the module docstring for the order)."""
    shared = [o for o in overrides if parse_override(o)[0][0] in SHARED_SECTIONS]
    raw, _, _ = build_params(data_dir, quick, shared, benchmark, tiny=True)
    raw["data"].update(train_path=main_raw["data"]["train_path"], eval_path=main_raw["data"]["eval_path"])
    raw = apply_overrides(raw, tiny_overrides, "tiny overrides")
    raw["teacher"].update(model=str(Path(teacher_dir).resolve()), finetune=False, cross_fit_folds=0)
    params_from_dict(raw, "tiny bench params")
    return raw


def seed_soft_target_chunks(main_work: Path, main: Params, tiny_work: Path, tiny: Params) -> int:
    """Link (else copy) the main project's soft-target chunk files into the tiny project's cache;
    returns how many. Only for a fresh tiny project: files added to an existing DVC output would
    make DVC run the stage again."""
    from tasks.soft_targets import CHUNKS_DIR

    src = Path(main_work) / main.paths.logits_dir / CHUNKS_DIR
    dest = Path(tiny_work) / tiny.paths.logits_dir / CHUNKS_DIR
    files = sorted(src.glob("*.parquet"))
    dest.mkdir(parents=True, exist_ok=True)
    for f in files:
        try:
            os.link(f, dest / f.name)
        except OSError:
            shutil.copy2(f, dest / f.name)
    return len(files)


def tiny_figures(first: dict, walls: dict, reports: dict, seeded: int, main_teacher_md5: str | None) -> dict:
    """What the tiny project's run did and cost: its wall time, each stage's, the soft-target reuse."""
    soft = reports.get("soft_targets", {})
    md5 = (soft.get("teachers") or [{}])[0].get("md5")
    return {
        "wall_seconds": first["wall_seconds"], "ran": first["ran"], "stage_walls": walls,
        "gate_passed": first["gate_passed"], "registration": first["registration"],
        "teacher_trained": bool(reports.get("teacher", {}).get("finetuned")),
        "soft_targets": {"rows": soft.get("rows"), "augmented_rows": soft.get("augmented_rows"),
                         "chunks": soft.get("chunks"), "chunks_computed": soft.get("chunks_computed"),
                         "chunks_seeded_from_main": seeded, "teacher_md5": md5,
                         "same_teacher_as_main": md5 is not None and md5 == main_teacher_md5},
        "student": reports.get("distill", {}).get("student"),
        "quantize": {"method": (reports.get("quantize", {}).get("quantization") or {}).get("method"),
                     "variant": (reports.get("quantize", {}).get("selection") or {}).get("variant"),
                     "size_mb": reports.get("quantize", {}).get("size_mb")},
    }
