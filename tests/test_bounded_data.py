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
