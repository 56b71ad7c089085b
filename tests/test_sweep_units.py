"""The sweep's pure parts on known figures: members of a space, the Pareto front on three
objectives, the choice of the smallest passing member, and the `sweep` section's errors."""

from pathlib import Path

import pytest
import yaml

from distillery.config import ConfigError, params_from_dict
from distillery.sweep import (choose_smallest_passing, dominates, expand_space, member_params, pareto_front,
                              plot_front, table_markdown)

ROOT = Path(__file__).resolve().parents[1]


def fig(acc, p50, size, passed=True):
    return {"accuracy": acc, "latency_p50_ms": p50, "size_mb": size, "gate_passed": passed}


def test_dominance_needs_as_good_everywhere_and_better_somewhere():
    assert dominates(fig(0.9, 1.0, 5.0), fig(0.8, 1.0, 5.0))        # better accuracy only
    assert dominates(fig(0.9, 1.0, 5.0), fig(0.9, 2.0, 6.0))        # faster and smaller
    assert not dominates(fig(0.9, 1.0, 5.0), fig(0.9, 1.0, 5.0))    # equal: neither dominates
    assert not dominates(fig(0.9, 1.0, 5.0), fig(0.8, 0.5, 5.0))    # a trade-off
    assert not dominates(fig(0.8, 0.5, 5.0), fig(0.9, 1.0, 5.0))


def test_pareto_front_on_known_figures():
    points = [
        fig(0.90, 4.0, 20.0),   # 0: most accurate                        -> front
        fig(0.85, 1.0, 10.0),   # 1: fast and small                       -> front
        fig(0.84, 1.2, 11.0),   # 2: worse than 1 on all three            -> dominated
        fig(0.80, 2.0, 4.0),    # 3: smallest                             -> front
        fig(0.85, 1.0, 10.0),   # 4: equal to 1                           -> front (ties kept)
        fig(0.89, 4.0, 20.0),   # 5: as fast and as big as 0, less accurate -> dominated
        fig(0.70, 0.9, 30.0),   # 6: fastest, however bad otherwise        -> front
    ]
    assert pareto_front(points) == [0, 1, 3, 4, 6]
    assert pareto_front([]) == []
    assert pareto_front(points[:1]) == [0]


def test_smallest_passing_member_is_chosen_and_none_when_nothing_passes():
    members = [fig(0.90, 4.0, 20.0), fig(0.70, 1.0, 2.0, passed=False), fig(0.85, 1.0, 10.0),
               fig(0.86, 1.5, 10.0), fig(0.80, 2.0, 12.0)]
    assert choose_smallest_passing(members) == 3          # 2 MB failed; 10 MB tie -> higher accuracy
    members[3]["accuracy"] = 0.85
    assert choose_smallest_passing(members) == 2          # then the faster one
    assert choose_smallest_passing([fig(0.9, 1.0, 1.0, passed=False)]) is None
    assert choose_smallest_passing([]) is None


def test_grid_and_random_members():
    space = {"student.layers": [[0], [0, 1]], "distill.alpha": [0.1, 0.5, 0.9]}
    grid = expand_space(space, "grid", None, seed=1)
    assert len(grid) == 6 and grid[0] == {"student.layers": [0], "distill.alpha": 0.1}
    assert len({str(m) for m in grid}) == 6
    drawn = expand_space(space, "random", 4, seed=1)
    assert len(drawn) == 4 and all(m in grid for m in drawn) and len({str(m) for m in drawn}) == 4
    assert drawn == expand_space(space, "random", 4, seed=1)   # seeded
    assert expand_space(space, "random", 50, seed=1) == grid   # more than the grid: all of it


@pytest.fixture
def raw(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    return raw


@pytest.mark.parametrize("sweep,needle", [
    ({"space": {"teacher.epochs": [1]}}, "sweep.space: Value error, 'teacher.epochs': expected section.key"),
    ({"space": {"distill.temperature": [1.0, 2.0]}}, "'distill.temperature' shapes the soft targets"),
    ({"space": {"student.layers": []}}, "'student.layers': expected a non-empty list"),
    ({"space": {"student.depth": [1]}}, "sweep.space.student.depth: unknown key 'depth' in section 'student'"),
    ({"space": {"distill.alpha": [0.5, 1.5]}}, "sweep.space.distill.alpha: value 1.5: Input should be less than"),
    ({"space": {"quantize.method": ["onnx_int2"]}}, "sweep.space.quantize.method: value 'onnx_int2'"),
    ({"sampler": "random"}, "sampler 'random' needs `samples`"),
    ({"workers": 0}, "sweep.workers: Input should be greater than or equal to 1"),
])
def test_bad_sweep_section_names_the_key(raw, sweep, needle):
    raw["sweep"].update(sweep)
    with pytest.raises(ConfigError) as err:
        params_from_dict(raw)
    assert needle in str(err.value)


def test_member_params_point_into_the_member_folder_and_name_a_clash(raw):
    p = member_params(raw, {"student.layers": [0, 2, 5], "quantize.method": "onnx_int4_embeddings"}, "m003")
    assert p.student.layers == [0, 2, 5] and p.quantize.method == "onnx_int4_embeddings"
    assert p.paths.student_dir == "reports/sweep/members/m003/student"
    assert p.paths.reports_dir == "reports/sweep/members/m003/reports"
    assert p.paths.teacher_dir == "models/teacher" and p.paths.logits_dir == "data/teacher_logits"  # shared
    raw["distill"]["layer_map"] = [0, 5]
    with pytest.raises(ConfigError, match=r"sweep member m001 \(student.layers=\[0\]\).*layer_map has 2 entries"):
        member_params(raw, {"student.layers": [0]}, "m001")


def test_table_and_plot(tmp_path):
    rows = [{"member": "m000", "overrides": "student.layers=[0]", "accuracy": 0.9, "macro_f1": 0.89, "size_mb": 3.0,
             "params": 12345, "latency_p50_ms": 1.0, "gate_passed": True, "pareto": True, "chosen": True, "error": None},
            {"member": "m001", "overrides": "student.layers=[0, 1]", "error": "RuntimeError: boom"}]
    md = table_markdown(rows)
    assert "| m000 | student.layers=[0] | 0.9000 | 0.8900 | 3.00 | 12,345 | 1.00 | pass | yes | **yes** |" in md
    assert "| m001 | student.layers=[0, 1] | failed: RuntimeError: boom |" in md
    png = plot_front(rows, tmp_path / "front.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def member_row(name, overrides, acc, p50, size, passed=True, error=None):
    from distillery.sweep import describe

    row = {"member": name, "overrides": describe(overrides), "overrides_dict": overrides, "error": error,
           "gate_passed": passed}
    if not error:
        row.update(accuracy=acc, macro_f1=acc, latency_p50_ms=p50, size_mb=size, params=1000)
    return row


def test_conclusion_writes_the_smallest_passing_members_params(tmp_path, capsys):
    import shutil

    from distillery.config import load_params
    from flows.sweep import conclude

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    out = tmp_path / "reports" / "sweep"
    rows = [member_row("m000", {"student.layers": [0, 5]}, 0.90, 2.0, 12.0),
            member_row("m001", {"student.layers": [0]}, 0.70, 1.0, 4.0, passed=False),   # smallest, failed
            member_row("m002", {"student.layers": [0, 2, 5], "quantize.method": "onnx_int4_embeddings"}, 0.88, 2.5, 8.0),
            member_row("m003", {"student.layers": [5]}, None, None, None, passed=False, error="RuntimeError: x")]
    summary = conclude(tmp_path, out, rows)
    assert summary["front"] == ["m000", "m001", "m002"] and summary["chosen"] == "m002"
    best = load_params(out / "best.params.yaml", check_files=False)
    assert best.student.layers == [0, 2, 5] and best.quantize.method == "onnx_int4_embeddings"
    shipped = load_params(ROOT / "params.yaml", check_files=False)
    assert best.model_copy(update={"student": shipped.student, "quantize": shipped.quantize}) == shipped
    assert "# one seed for data order" in (out / "best.params.yaml").read_text()   # the comments are kept
    assert "distillery run --params reports/sweep/best.params.yaml" in capsys.readouterr().out
    for name in ("members.md", "members.csv", "pareto.png", "sweep.json"):
        assert (out / name).is_file()

    for r in rows:
        r["gate_passed"] = False
    summary = conclude(tmp_path, tmp_path / "again", rows)
    assert summary["chosen"] is None and summary["best_params"] is None
    assert not (tmp_path / "again" / "best.params.yaml").exists()
    assert "NO member passed the gate (3 of 4 finished); no params file written" in capsys.readouterr().out
