"""The bounded-memory training data path (issue 18): a split read from disk in row groups
(`data.SplitInputs`), token ids in a memory-mapped store (`token_store`), teacher logits memory-
mapped. Each gives exactly what the in-memory path gave: the same token ids, the same student,
the same trained weights for the same seed (the batch order is unchanged)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import BertTokenizerFast

from distillery.data import SplitInputs, TextDataset, load_split, save_split
from distillery.token_store import write_token_store
from distillery.training import Encoded, TrainSpec, collate, encode_texts, train
from distillery.vocab import token_counts
from tests.helpers import SPECIALS

WORDS = "good bad film plot actor scene long short dull great awful fine".split()


def _tokenizer() -> BertTokenizerFast:
    return BertTokenizerFast(vocab={t: i for i, t in enumerate(SPECIALS + WORDS)}, do_lower_case=True)


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 30)))) for _ in range(n)]


def _split(tmp_path, n: int, pairs: bool) -> TextDataset:
    data = TextDataset(_texts(n), np.arange(n) % 2, _texts(n, seed=1) if pairs else None)
    save_split(data, tmp_path / "train.parquet")
    return data


@pytest.mark.parametrize("pairs", [False, True])
def test_split_inputs_and_token_store_give_what_the_in_memory_path_gave(tmp_path, pairs):
    data = _split(tmp_path, 300, pairs)
    rows = SplitInputs(tmp_path / "train.parquet", batch_rows=70)  # batches that cut across rows' groups
    assert len(rows) == 300 and [x for b in rows.batches() for x in b] == data.inputs
    assert rows.take([299, 0, 150, 0]) == [data.inputs[i] for i in (299, 0, 150, 0)]
    assert np.array_equal(rows.labels(), data.labels)

    tok = _tokenizer()
    assert token_counts(tok, rows, 8) == token_counts(tok, data.inputs, 8)
    enc = encode_texts(tok, data.inputs, 12, "head_tail")
    store = write_token_store(tmp_path / "tokens", tok, rows.batches(), 12, "head_tail")
    assert len(store) == 300 and store.pad_id == enc.pad_id
    assert [r.tolist() for r in store.input_ids] == enc.input_ids
    assert np.array_equal(store.lengths(), enc.lengths())
    assert (store.token_type_ids is None) == (enc.token_type_ids is None) == (not pairs)
    if pairs:
        assert [r.tolist() for r in store.token_type_ids] == enc.token_type_ids
    idx = np.array([5, 250, 17])
    for key, value in collate(enc, idx, torch.device("cpu")).items():
        assert torch.equal(collate(store, idx, torch.device("cpu"))[key], value)
    assert isinstance(store.input_ids[0], np.memmap)  # read from the file, not held


def test_training_on_the_store_and_mapped_logits_matches_training_in_memory(tmp_path):
    data = _split(tmp_path, 200, False)
    tok = _tokenizer()
    logits = np.random.default_rng(3).normal(size=(200, 2)).astype(np.float32)
    np.save(tmp_path / "logits.npy", logits)
    mapped = np.load(tmp_path / "logits.npy", mmap_mode="r")

    def trained(enc, teacher_logits):
        torch.manual_seed(0)
        model = _Bag(len(SPECIALS) + len(WORDS))
        spec = TrainSpec(loss_fn=lambda s, t, y: torch.nn.functional.mse_loss(s, t), epochs=2, batch_size=16,
                         learning_rate=0.05, seed=7, device=torch.device("cpu"))
        train(model, enc, data.labels, spec, teacher_logits=teacher_logits)
        return model.emb.weight.detach()

    in_memory = trained(encode_texts(tok, data.inputs, 16), logits)
    store = write_token_store(tmp_path / "tokens", tok, SplitInputs(tmp_path / "train.parquet", 64).batches(), 16)
    assert torch.equal(trained(store, mapped), in_memory)


def test_the_student_built_from_a_split_on_disk_is_the_one_built_from_its_texts(tmp_path):
    from distillery.config import StudentConfig
    from distillery.student import build_student
    from tests.helpers import make_tiny_teacher
    from transformers import AutoTokenizer, BertForSequenceClassification

    data = _split(tmp_path, 120, False)
    src = make_tiny_teacher(tmp_path / "teacher", WORDS + ["unused words stay out"], hidden=32, layers=2,
                            heads=4, intermediate=64)
    teacher = BertForSequenceClassification.from_pretrained(src, num_labels=2)
    cfg = StudentConfig(layers=[0, 1], hidden_size=16, heads=2, intermediate_size=32, importance_batches=3)
    built = [build_student(teacher, AutoTokenizer.from_pretrained(src), cfg, texts, 16, seed=5, batch_size=8)
             for texts in (data.inputs, SplitInputs(tmp_path / "train.parquet", 50))]
    assert built[0].vocab_keep == built[1].vocab_keep and built[0].channels == built[1].channels
    a, b = (x.model.state_dict() for x in built)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert load_split(tmp_path / "train.parquet").texts == data.texts


def _teacher_project(tmp_path, pairs: bool, max_train_rows: int | None):
    """A project folder as the teacher stage reads it: params, a tiny random-init teacher with no
    head (so it is fine-tuned) and a validated split of 150 rows written by the validate stage's writer."""
    import yaml

    from distillery.data import LabelMap, write_validated
    from distillery.lineage import content_md5
    from tests.helpers import make_tiny_teacher, tiny_params

    root = tmp_path / "project"
    params = tiny_params(teacher={"max_train_rows": max_train_rows, "batch_size": 16})
    params["data"].update(max_length=24, truncation="head_tail", text_pair_column="second" if pairs else None)
    root.mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    make_tiny_teacher(root / "teacher_src", WORDS, hidden=16, layers=1, heads=2, intermediate=32)
    sources = {}
    for split in ("train", "eval"):
        path = root / params["data"][f"{split}_path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"text,label\nstand-in for the {split} source,neg\n")
        sources[split] = {"path": params["data"][f"{split}_path"], "md5": content_md5(path)}
    n = 150
    train = TextDataset(_texts(n, 2), np.arange(n) % 2, _texts(n, 3) if pairs else None)
    write_validated(root / params["paths"]["validated_dir"], {"train": train, "eval": train.subset(slice(0, 8))},
                    LabelMap(["neg", "pos"]), sources)
    return root


def _teacher_trained_in_memory(root):
    """What the teacher stage trained when it loaded the split whole: every training row tokenized
    in memory, the first `teacher.max_train_rows` of them trained on."""
    from distillery.losses import hinton_kd
    from distillery.modeling import load_teacher
    from tasks.common import stage_context

    ctx = stage_context(root)  # seeds as a stage run does
    p, t = ctx.params, ctx.params.teacher
    train_set = load_split(root / p.paths.validated_dir / "train.parquet")
    model, tokenizer, _ = load_teacher(t.model, ["neg", "pos"], root)
    enc = encode_texts(tokenizer, train_set.inputs, p.data.max_length, p.data.truncation)
    rows = np.arange(len(train_set))[: t.max_train_rows]
    sub = Encoded([enc.input_ids[i] for i in rows], enc.pad_id,
                  None if enc.token_type_ids is None else [enc.token_type_ids[i] for i in rows])
    spec = TrainSpec.from_section(t, p.base, lambda s, _t, y: hinton_kd(s, None, y, 1.0, 1.0), "teacher")
    train(model, sub, train_set.labels[rows], spec)
    return model.state_dict()


@pytest.mark.parametrize("pairs,max_train_rows", [(False, None), (True, 37)])
def test_teacher_trained_from_the_store_has_the_weights_of_training_in_memory(tmp_path, monkeypatch, pairs,
                                                                              max_train_rows):
    """The teacher stage reads its training rows a row group at a time into a token store: the
    same rows, order, batches and seed as loading the split whole, so bit-identical weights. A
    teacher with a head (not fine-tuned) reads no training row at all."""
    import json

    import yaml
    from safetensors.torch import load_file

    import distillery.data as data
    from tests.helpers import run_stage

    root = _teacher_project(tmp_path, pairs, max_train_rows)
    expected = _teacher_trained_in_memory(root)
    report = run_stage(root, "teacher")
    rows = max_train_rows or 150
    assert report["finetuned"] and report["train"]["steps"] == 2 * -(-rows // 16)
    saved = load_file(root / "models/teacher/model.safetensors")
    assert saved.keys() == expected.keys() and all(torch.equal(saved[k], expected[k]) for k in saved)
    assert not list((root / "models").glob(".*tokens-*"))  # the store is removed after training

    # Now a teacher with a head for the labels: finetune auto measures it and reads no training row.
    (root / "with_head").symlink_to(root / "models/teacher")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["teacher"]["model"] = "with_head"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    read, load = [], data.load_split
    monkeypatch.setattr(data, "load_split", lambda path: read.append(path.name) or load(path))
    monkeypatch.setattr(data, "iter_split", lambda path, *a, **k: read.append(path.name) or iter(()))
    monkeypatch.setattr(data, "SplitInputs", lambda path, *a, **k: read.append(path.name))
    report = run_stage(root, "teacher")
    assert not report["finetuned"] and read == ["eval.parquet"]
    assert json.loads((root / "reports/teacher.json").read_text())["finetuned"] is False


@pytest.mark.parametrize("groups", [False, True])
def test_split_inputs_limit_reads_only_the_first_rows(tmp_path, monkeypatch, groups):
    import distillery.data as data_module

    if groups:  # row groups of 50 rows, decoded 7 rows at a time: rows cut across both
        monkeypatch.setattr(data_module, "SPLIT_ROW_GROUP", 50)
        monkeypatch.setattr(data_module, "DECODE_ROWS", 7)
    data = _split(tmp_path, 300, True)
    rows = SplitInputs(tmp_path / "train.parquet", batch_rows=70, limit=101)
    assert len(rows) == 101 and rows.pairs and len(rows._starts) == (7 if groups else 2)
    assert [x for b in rows.batches() for x in b] == data.inputs[:101]
    assert np.array_equal(rows.labels(), data.labels[:101])
    assert rows.take([100, 3]) == [data.inputs[100], data.inputs[3]]
    with pytest.raises(IndexError):
        rows.take([101])
    whole = SplitInputs(tmp_path / "train.parquet", limit=1000)
    assert len(whole) == 300 and whole.labels().shape == (300,)
    picked = np.random.default_rng(0).integers(0, 300, size=120)  # repeats, any order
    assert whole.take(picked) == [data.inputs[i] for i in picked] and whole.take([]) == []
    (tmp_path / "single").mkdir()
    _split(tmp_path / "single", 5, False)
    assert not SplitInputs(tmp_path / "single/train.parquet").pairs


class _Bag(torch.nn.Module):
    def __init__(self, vocab: int):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, 2)

    def forward(self, input_ids, attention_mask, **_):
        mask = attention_mask.float()
        logits = (self.emb.weight[input_ids] * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return type("Out", (), {"logits": logits})()


def test_encoded_lengths():
    assert Encoded([[1, 2], [3], []], 0).lengths().tolist() == [2, 1, 0]
