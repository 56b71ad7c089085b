"""params.yaml loading: the shipped file is valid; bad files fail with the key or file named."""

from pathlib import Path

import pytest
import yaml

from distillery.config import ConfigError, load_params, parse_override

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path, data, name="params.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data) if isinstance(data, dict) else data)
    return p


@pytest.fixture
def base(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    (tmp_path / "train.csv").write_text("text,label\na,x\n")
    (tmp_path / "eval.csv").write_text("text,label\na,x\n")
    raw["data"]["train_path"], raw["data"]["eval_path"] = "train.csv", "eval.csv"
    return raw


def test_shipped_params_load():
    p = load_params(ROOT / "params.yaml")
    assert p.distill.temperature > 0 and 0 <= p.distill.alpha <= 1
    assert p.data.train_path.startswith(p.paths.demo_dir)


@pytest.mark.parametrize("mutate,needle", [
    (lambda r: r["distill"].update(temprature=2.0), "distill.temprature: unknown key"),
    (lambda r: r.update(extra_section={}), "extra_section: unknown key"),
    (lambda r: r["distill"].update(temperature=0), "distill.temperature: Input should be greater than 0"),
    (lambda r: r["distill"].update(temperature=-1.5), "distill.temperature"),
    (lambda r: r["distill"].update(alpha=1.5), "distill.alpha: Input should be less than or equal to 1"),
    (lambda r: r["distill"].update(alpha=-0.1), "distill.alpha"),
    (lambda r: r["distill"].update(epochs="three"), "distill.epochs"),
    (lambda r: r["base"].update(device="tpu"), "base.device"),
    (lambda r: r["student"].update(layers=[0, 0]), "student.layers"),
    (lambda r: r["prune"].update(head_fraction=1.0), "prune.head_fraction"),
    (lambda r: r["gate"].update(max_regression=-0.01), "gate.max_regression: Input should be greater than or equal to 0"),
    (lambda r: r["data"].pop("train_path"), "data.train_path: required key is missing"),
    (lambda r: r["data"].update(labels=["a"]), "data.labels"),
    (lambda r: r["quantize"].update(candidates=["dynamic_int8", "int3"]), "quantize.candidates.1"),
    (lambda r: r["quantize"].update(candidates=["fp32", "fp32"]), "quantize.candidates: Value error, candidates must be distinct"),
    (lambda r: r["quantize"].update(candidates=[]), "quantize.candidates"),
    (lambda r: r["quantize"].update(max_accuracy_drop=1.5), "quantize.max_accuracy_drop"),
    (lambda r: r["quantize"].update(int4_block_size=48), "quantize.int4_block_size"),
    (lambda r: r["quantize"].update(calibration_method="kl"), "quantize.calibration_method"),
    (lambda r: r["quantize"].update(method="onnx_static_int4"), "quantize.method"),
    (lambda r: r["validate"]["suite"].update(row_count={"min": 10, "max": 5}), "validate.suite.row_count"),
    (lambda r: r["validate"]["suite"].update(max_leakage_share=1.5), "validate.suite.max_leakage_share"),
    (lambda r: r["validate"]["suite"].update(min_rows=3), "validate.suite.min_rows: unknown key"),
    (lambda r: r["validate"]["length_shift"].update(warn_psi=0.5, fail_psi=0.2), "validate.length_shift"),
    (lambda r: r["student"].update(architecture="gru"), "student.architecture: Input should be 'transformer' or 'bilstm'"),
    (lambda r: r["student"].update(bilstm={"units": 10}), "student.bilstm.units: unknown key"),
    (lambda r: r["student"].update(bilstm={"pooling": "mean"}), "student.bilstm.pooling"),
    (lambda r: r["student"].update(bilstm={"dropout": 1.0}), "student.bilstm.dropout: Input should be less than 1"),
    (lambda r: r["student"].update(architecture="bilstm") or r["distill"].update(hidden_weight=1.0),
     "distill.hidden_weight: intermediate-layer losses need a transformer student"),
    (lambda r: r["distill"].update(loss="mse"), "distill.loss: Input should be 'hinton_kd' or 'mse_logits'"),
])
def test_bad_values_name_the_key(tmp_path, base, mutate, needle):
    mutate(base)
    with pytest.raises(ConfigError) as exc:
        load_params(write(tmp_path, base))
    assert needle in str(exc.value)
    assert "params.yaml" in str(exc.value)


def test_missing_data_file_is_named(tmp_path, base):
    base["data"]["eval_path"] = "nowhere/dev.tsv"
    with pytest.raises(ConfigError, match=r"data\.eval_path: file not found: nowhere/dev.tsv"):
        load_params(write(tmp_path, base))


def test_directory_as_data_file_is_rejected(tmp_path, base):
    (tmp_path / "adir").mkdir()
    base["data"]["train_path"] = "adir"
    with pytest.raises(ConfigError, match=r"data\.train_path: adir is a directory"):
        load_params(write(tmp_path, base))


def test_unreadable_data_file_is_named(tmp_path, base, monkeypatch):
    real_open = Path.open

    def deny(self, *a, **k):
        if self.name == "train.csv":
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *a, **k)

    # Patched rather than chmod: as root, chmod 000 does not stop reads (tests/test_bad_inputs.py
    # drops root's override capabilities in a real run instead).
    monkeypatch.setattr(Path, "open", deny)
    with pytest.raises(ConfigError, match=r"data\.train_path: cannot read train.csv: permission denied"):
        load_params(write(tmp_path, base))


def test_fifo_as_data_file_is_rejected(tmp_path, base):
    import os

    os.mkfifo(tmp_path / "pipe.csv")  # opening it would block until a writer came
    base["data"]["train_path"] = "pipe.csv"
    with pytest.raises(ConfigError, match=r"data\.train_path: pipe.csv is not a regular file"):
        load_params(write(tmp_path, base))


def test_yaml_syntax_error_names_the_file(tmp_path):
    p = write(tmp_path, "base:\n  seed: [1, 2\n")
    with pytest.raises(ConfigError, match="YAML syntax error"):
        load_params(p)


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(ConfigError, match="params file is empty"):
        load_params(write(tmp_path, ""))
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "absent.yaml")


def test_overrides_apply_and_are_validated(tmp_path, base):
    p = load_params(write(tmp_path, base), overrides=["distill.temperature=4", "student.layers=[1, 2, 3]"])
    assert p.distill.temperature == 4.0 and p.student.layers == [1, 2, 3]
    with pytest.raises(ConfigError, match="distill.alpha"):
        load_params(write(tmp_path, base), overrides=["distill.alpha=2"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override("distill.alpha")


def test_params_hash_changes_with_values(tmp_path, base):
    a = load_params(write(tmp_path, base))
    b = load_params(write(tmp_path, base), overrides=["distill.temperature=3"])
    assert a.section_hash() != b.section_hash()
    assert a.section_hash("teacher") == b.section_hash("teacher")
