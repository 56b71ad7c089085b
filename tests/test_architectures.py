"""Every supported encoder family through every stage's model operations (unit tier): loading
as a teacher, layer selection, width slicing, structured pruning, reloading pruned shapes,
position trimming, intermediate-layer losses, the BiLSTM student over the teacher's embeddings,
ONNX export and every quantization variant. Tiny random-init models built in the test (see
tests/tiny_families.py); the whole-pipeline runs per family are in test_architectures_flow.py."""

from __future__ import annotations

import copy
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from distillery.architectures import ADAPTERS, adapter_for, supported_model_types
from distillery.demo_data import make_demo_dataset
from distillery.pruning import (PruningPlan, apply_pruning, compute_importance, current_structure, head_rows,
                                plan_pruning)
from distillery.student import activation_importance, build_student_from_layers, shrink_width, trim_positions
from distillery.training import collate, encode_texts
from tests.tiny_families import FAMILIES, make_family_classifier, make_family_teacher

TRAIN, EVAL = make_demo_dataset(60, 0)
TEXTS = [*TRAIN.text, *EVAL.text]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    """(family, model, tokenizer, batches): a tiny 3-layer classifier and two padded batches."""
    model, tok = make_family_classifier(request.param, TEXTS)
    enc = encode_texts(tok, TEXTS[:16], 32)
    batches = [collate(enc, list(range(0, 8)), torch.device("cpu")), collate(enc, list(range(8, 16)), torch.device("cpu"))]
    return request.param, model, tok, batches


def logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def roundtrip(model, tok, tmp_path):
    """Save with save_model_dir and load with load_model_dir (pruned shapes rebuilt from config)."""
    from distillery.modeling import load_model_dir, save_model_dir

    save_model_dir(model, tok, ["a", "b", "c"], tmp_path / "m", {"max_length": 32})
    return load_model_dir(tmp_path / "m")[0]


def test_registry_covers_the_families_and_names_them_in_its_error(tmp_path):
    from transformers import GPT2Config, GPT2Model

    from distillery.modeling import ModelLoadError, load_teacher

    assert {"bert", "roberta", "xlm-roberta", "camembert", "distilbert", "electra", "deberta-v2",
            "modernbert"} <= set(supported_model_types())
    GPT2Model(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=20, n_positions=8)).save_pretrained(tmp_path / "g")
    make_family_teacher(tmp_path / "t", "bert", TEXTS[:10])  # a tokenizer to go with it
    for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        if (tmp_path / "t" / f).exists():
            (tmp_path / "g" / f).write_bytes((tmp_path / "t" / f).read_bytes())
    with pytest.raises(ModelLoadError, match=r"'gpt2' is not supported.*deberta-v2.*modernbert.*roberta"):
        load_teacher(str(tmp_path / "g"), ["a", "b"])


@pytest.mark.parametrize("name", FAMILIES)
def test_teacher_of_each_family_loads_with_a_new_head(tmp_path, name):
    from distillery.modeling import load_teacher

    src = make_family_teacher(tmp_path / name, name, TEXTS[:40])
    model, tok, identity = load_teacher(str(src), ["neg", "pos"])
    assert identity["has_head"] is False  # a bare encoder: the teacher stage fine-tunes a head
    assert model.config.num_labels == 2 and ADAPTERS[model.config.model_type] is adapter_for(model)
    enc = encode_texts(tok, TEXTS[:4], 32)
    assert logits(model.eval(), collate(enc, [0, 1, 2, 3], torch.device("cpu"))).shape == (4, 2)


def test_student_copies_the_chosen_layers_and_reloads(family, tmp_path):
    name, model, tok, batches = family
    a = adapter_for(model)
    student = build_student_from_layers(model, [0, 2])
    assert len(a.layers(student)) == 2 and a.get(student.config, "layers") == 2
    assert len(a.layers(model)) == 3  # the teacher is untouched
    for j, i in enumerate([0, 2]):
        s_sd, t_sd = a.layers(student)[j].state_dict(), a.layers(model)[i].state_dict()
        shared = [k for k in t_sd if k in s_sd]  # ModernBERT: layer 0 keeps no attn_norm
        assert shared and all(torch.equal(s_sd[k], t_sd[k]) for k in shared)
    if name == "modernbert":
        assert student.config.layer_types == [model.config.layer_types[0], model.config.layer_types[2]]
    reloaded = roundtrip(student, tok, tmp_path)
    torch.testing.assert_close(logits(reloaded, batches[0]), logits(student, batches[0]))


def test_width_slicing_makes_every_layer_narrower_and_reloads(family, tmp_path):
    name, model, tok, batches = family
    a = adapter_for(model)
    student = build_student_from_layers(model, [0, 2])
    before = sum(p.numel() for p in student.parameters())
    channels = shrink_width(student, activation_importance(student, batches), 16, 2, 24)
    assert len(channels) == 16 and a.get(student.config, "hidden") == 16
    assert current_structure(student) == {"heads": [2, 2], "intermediate": [24, 24]}
    d = a.head_dim(a.layers(student)[0])
    for layer in a.layers(student):
        for slot in a.head_in(layer):
            assert tuple(slot.module.weight.shape) == (slot.blocks * 2 * d, 16)
        assert tuple(a.head_out(layer).module.weight.shape) == (16, 2 * d)
        assert all(s.module.weight.shape == (s.blocks * 24, 16) for s in a.ffn_in(layer))
        assert tuple(a.ffn_out(layer).module.weight.shape) == (16, 24)
    table = student.get_input_embeddings().weight
    assert table.shape[1] == (8 if name == "electra" else 16)  # ELECTRA: embeddings stay embedding_size wide
    assert sum(p.numel() for p in student.parameters()) < before / 2
    reloaded = roundtrip(student, tok, tmp_path)
    torch.testing.assert_close(logits(reloaded, batches[1]), logits(student, batches[1]))


def test_pruning_equals_masking_the_removed_heads_and_neurons(family, tmp_path):
    """Physically removing heads/neurons computes exactly what zeroing their output columns does:
    the kept parts keep their function."""
    name, model, tok, batches = family
    a = adapter_for(model)
    plan = PruningPlan(heads_keep=[[0, 2], [1, 2, 3], [3]], neurons_keep=[list(range(0, 64, 2)), list(range(40)), [5, 9]])
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for layer, hk, nk in zip(a.layers(masked), plan.heads_keep, plan.neurons_keep):
            n, d = a.num_heads(layer), a.head_dim(layer)
            out = a.head_out(layer)
            drop = [h for h in range(n) if h not in hk]
            if drop:
                out.module.weight[:, head_rows(out, n, d, drop)] = 0.0
            ffn_out = a.ffn_out(layer).module
            ffn_out.weight[:, [j for j in range(ffn_out.in_features) if j not in nk]] = 0.0
    pruned = apply_pruning(copy.deepcopy(model), plan)
    assert current_structure(pruned) == {"heads": [2, 3, 1], "intermediate": [32, 40, 2]}
    for batch in batches:
        torch.testing.assert_close(logits(pruned, batch), logits(masked, batch), atol=1e-5, rtol=1e-4)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    reloaded = roundtrip(pruned, tok, tmp_path)
    torch.testing.assert_close(logits(reloaded, batches[0]), logits(pruned, batches[0]))

    def loss(m, b):
        return torch.nn.functional.cross_entropy(m(**b).logits, torch.zeros(len(b["input_ids"]), dtype=torch.long))

    importance = compute_importance(pruned, batches, loss)  # scores every group of the pruned shapes
    assert [len(h) for h in importance.heads] == [2, 3, 1] and [len(f) for f in importance.neurons] == [32, 40, 2]
    assert all(torch.isfinite(h).all() and h.sum() > 0 for h in importance.heads)
    again = plan_pruning(importance, 0.34, 0.5)
    apply_pruning(pruned, again)
    assert current_structure(pruned)["intermediate"] == [16, 20, 1]


def test_position_trimming_keeps_the_positions_in_use(family):
    name, model, tok, batches = family
    model = copy.deepcopy(model)
    found = adapter_for(model).position_embeddings(model)
    ref = logits(model, batches[0])
    trim_positions(model, batches[0]["input_ids"].shape[1])
    torch.testing.assert_close(logits(model, batches[0]), ref)
    if found is None:  # relative (DeBERTa-v3) or rotary (ModernBERT) positions: nothing to trim
        assert name in ("deberta_v2", "modernbert")
        return
    slot, offset = found
    assert offset == (tok.pad_token_id + 1 if name == "roberta" else 0)
    assert slot.module.num_embeddings == batches[0]["input_ids"].shape[1] + offset


def test_intermediate_losses_train_the_student(family):
    from distillery.losses import IntermediateLoss

    name, model, tok, batches = family
    teacher = copy.deepcopy(model)
    student = build_student_from_layers(teacher, [0, 2])
    channels = shrink_width(student, activation_importance(student, batches), 16, None, None)
    teacher.set_attn_implementation("eager")
    student.set_attn_implementation("eager")
    aux = IntermediateLoss(teacher, [0, 2], 1.0, 1.0, 16, 32, channels=channels)
    student.train()
    out = student(**batches[0], output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == 3 and len(out.attentions) == 2
    loss = aux(out, batches[0])
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    grads = [p.grad for p in adapter_for(student).layers(student)[0].parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_bilstm_student_over_the_teacher_word_embeddings(family):
    from distillery.config import StudentConfig
    from distillery.student import build_student

    name, model, tok, batches = family
    cfg = StudentConfig(architecture="bilstm", trim_vocabulary=False, bilstm={"hidden_size": 8, "classifier_hidden": 8})
    built = build_student(model, tok, cfg, TEXTS, 32, seed=0)
    width = model.get_input_embeddings().weight.shape[1]  # ELECTRA: its embedding_size
    assert built.model.embeddings.weight.shape == (len(tok), width)
    assert built.model(input_ids=batches[0]["input_ids"], attention_mask=batches[0]["attention_mask"]).logits.shape == (8, 3)


def test_export_and_every_quantization_variant(family, tmp_path):
    """A width-sliced, pruned student exports (parity with PyTorch checked by export_onnx), the
    fp32 graph fuses, and every quantization variant builds, runs and agrees with fp32."""
    from distillery.quant_select import BuildInputs, build_variant
    from distillery.quantization import export_onnx, optimize_fp32_graph

    name, model, tok, batches = family
    student = build_student_from_layers(model, [0, 2])
    shrink_width(student, activation_importance(student, batches), 16, None, 32)
    apply_pruning(student, PruningPlan(heads_keep=[[0], [0, 1]], neurons_keep=[list(range(16)), list(range(32))]))
    exported = export_onnx(student, tmp_path / "model.exported.onnx", 18, 32)
    fp32 = optimize_fp32_graph(exported, tmp_path / "model.fp32.onnx", "ort_transformers",
                               fusable=adapter_for(student).ort_fusion)
    enc = encode_texts(tok, TEXTS, 32)
    ids = [enc.input_ids[i] for i in range(len(TEXTS))]
    inputs = BuildInputs(True, 16, "minmax", ids[:32], tok.pad_token_id or 0)
    feeds = {k: v.numpy() for k, v in collate(enc, list(range(len(TEXTS))), torch.device("cpu")).items()}

    def predict(path):
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [i.name for i in sess.get_inputs()] == ["input_ids", "attention_mask"]
        return sess.run(["logits"], feeds)[0]

    ref = predict(fp32)
    sizes = {}
    for variant in ("dynamic_int8", "dynamic_int8_fp32_embeddings", "static_int8", "int4_embeddings",
                    "int4_weights", "fp32"):
        path = build_variant(variant, fp32, tmp_path / f"{variant}.onnx", inputs)
        got = predict(path)
        assert np.isfinite(got).all(), variant
        sizes[variant] = path.stat().st_size
        if variant != "int4_weights":  # 4-bit MatMuls on a 16-wide random model: only finite output asserted
            assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.8, variant
    assert sizes["dynamic_int8"] < sizes["fp32"] and sizes["int4_embeddings"] < sizes["dynamic_int8_fp32_embeddings"]
    assert json.dumps(sizes)  # recorded in the failure message when an assertion above fails


@pytest.mark.parametrize("config_class", ["XLMRobertaConfig", "CamembertConfig"])
def test_roberta_variants_share_the_roberta_adapter(config_class, tmp_path):
    """XLM-R and CamemBERT are RoBERTa's modules under other model_types: every operation applies."""
    import transformers as T

    from distillery.architectures.roberta import RobertaAdapter

    config = getattr(T, config_class)(vocab_size=60, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                      intermediate_size=64, max_position_embeddings=40, pad_token_id=1, num_labels=3)
    torch.manual_seed(0)
    model = T.AutoModelForSequenceClassification.from_config(config).eval()
    assert isinstance(adapter_for(model), RobertaAdapter)
    ids = torch.randint(3, 60, (4, 12))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    student = build_student_from_layers(model, [1, 2])
    shrink_width(student, activation_importance(student, [batch]), 16, None, 32)
    apply_pruning(student, PruningPlan(heads_keep=[[1], [0, 1]], neurons_keep=[list(range(8)), list(range(32))]))
    trim_positions(student, 12)
    assert student.get_input_embeddings().weight.shape == (60, 16)
    assert adapter_for(student).position_embeddings(student)[0].module.num_embeddings == 12 + 2
    student.save_pretrained(tmp_path / "s")
    reloaded = T.AutoModelForSequenceClassification.from_config(T.AutoConfig.from_pretrained(tmp_path / "s"))
    from distillery.pruning import restore_structure
    from safetensors.torch import load_file

    restore_structure(reloaded).load_state_dict(load_file(str(tmp_path / "s" / "model.safetensors")), strict=True)
    torch.testing.assert_close(logits(reloaded.eval(), batch), logits(student, batch))
