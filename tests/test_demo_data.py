"""Unit tests for the synthetic demo dataset (distillery/demo_data.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from distillery.demo_data import LABELS, make_demo_dataset, write_demo_dataset

ROOT = Path(__file__).resolve().parents[1]
N_ROWS = 3000  # the size of the default run (params.yaml data.demo_rows as shipped)


@pytest.fixture(scope="module")
def demo() -> tuple[pd.DataFrame, pd.DataFrame]:
    return make_demo_dataset(N_ROWS, seed=42)


def test_labels_match_params_yaml():
    data = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))["data"]
    assert tuple(data["labels"]) == LABELS


def test_same_seed_same_rows_and_other_seed_differs(demo):
    train, eval_ = make_demo_dataset(N_ROWS, seed=42)
    pd.testing.assert_frame_equal(train, demo[0])
    pd.testing.assert_frame_equal(eval_, demo[1])
    other_train, _ = make_demo_dataset(N_ROWS, seed=43)
    assert not other_train["text"].equals(train["text"])


def test_columns_types_and_text_shape(demo):
    for df in demo:
        assert list(df.columns) == ["text", "label"]
        assert df["text"].map(type).eq(str).all()
        assert df["label"].isin(LABELS).all()
        lengths = df["text"].str.len()
        assert lengths.min() > 0 and lengths.max() < 200
        assert not df["text"].str.strip().eq("").any()


@pytest.mark.parametrize("n_rows,eval_fraction", [(3000, 0.2), (500, 0.3), (50, 0.1)])
def test_row_counts_and_no_overlap(n_rows, eval_fraction):
    train, eval_ = make_demo_dataset(n_rows, seed=7, eval_fraction=eval_fraction)
    assert len(train) + len(eval_) == n_rows
    assert abs(len(eval_) - n_rows * eval_fraction) <= 1
    assert not set(train["text"]) & set(eval_["text"])
    assert train["text"].is_unique and eval_["text"].is_unique


@pytest.mark.parametrize("seed", [0, 42])
def test_classes_roughly_balanced(seed):
    train, eval_ = make_demo_dataset(N_ROWS, seed=seed)
    for df in (train, eval_):
        shares = df["label"].value_counts(normalize=True)
        assert set(shares.index) == set(LABELS)
        assert shares.min() >= 0.25 and shares.max() <= 0.42, shares.to_dict()


def test_covers_the_hard_phenomena(demo):
    texts = pd.concat([demo[0]["text"], demo[1]["text"]]).str.lower()
    for marker in (" not ", " never ", " hardly ", " but ", "although ", "however", "average"):
        assert texts.str.contains(marker, regex=False).mean() > 0.005, marker


def test_bag_of_words_is_learnable_but_not_separable(demo):
    """Unigram counts beat chance but miss negation, contrast and mixed sentences."""
    train, eval_ = demo
    try:
        from sklearn.feature_extraction.text import CountVectorizer
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        accuracy = _naive_bayes_accuracy(train, eval_)
    else:
        vec = CountVectorizer()
        clf = LogisticRegression(max_iter=2000).fit(vec.fit_transform(train["text"]), train["label"])
        accuracy = float((clf.predict(vec.transform(eval_["text"])) == eval_["label"]).mean())
    assert 0.45 < accuracy < 0.85, accuracy


def _naive_bayes_accuracy(train: pd.DataFrame, eval_: pd.DataFrame) -> float:
    """Multinomial naive Bayes on lower-cased unigrams, add-one smoothing."""
    def tokens(text: str) -> list[str]:
        return "".join(c if c.isalnum() else " " for c in text.lower()).split()

    vocab = {w: i for i, w in enumerate(sorted({w for t in train["text"] for w in tokens(t)}))}
    counts = np.ones((len(LABELS), len(vocab)))
    prior = np.zeros(len(LABELS))
    for text, label in zip(train["text"], train["label"]):
        k = LABELS.index(label)
        prior[k] += 1
        for w in tokens(text):
            counts[k, vocab[w]] += 1
    log_p = np.log(counts / counts.sum(1, keepdims=True))
    log_prior = np.log(prior / prior.sum())
    hits = 0
    for text, label in zip(eval_["text"], eval_["label"]):
        idx = [vocab[w] for w in tokens(text) if w in vocab]
        hits += LABELS[int(np.argmax(log_prior + log_p[:, idx].sum(1)))] == label
    return hits / len(eval_)


def test_written_csv_reads_back_identically(tmp_path, demo):
    train_path, eval_path = write_demo_dataset(tmp_path / "demo", N_ROWS, seed=42)
    assert (train_path.name, eval_path.name) == ("train.csv", "eval.csv")
    for path, expected in ((train_path, demo[0]), (eval_path, demo[1])):
        assert path.read_bytes().startswith(b"text,label\n")
        back = pd.read_csv(path, encoding="utf-8", dtype=str, keep_default_na=False)
        pd.testing.assert_frame_equal(back, expected, check_dtype=False)
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == ["eval.csv", "train.csv"]


def test_written_bytes_are_deterministic(tmp_path):
    a = write_demo_dataset(tmp_path / "a", 300, seed=5)
    b = write_demo_dataset(tmp_path / "b", 300, seed=5)
    for pa, pb in zip(a, b):
        assert pa.read_bytes() == pb.read_bytes()


@pytest.mark.parametrize("kwargs", [dict(n_rows=1), dict(n_rows=100, eval_fraction=0.0),
                                    dict(n_rows=100, eval_fraction=1.0)])
def test_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        make_demo_dataset(seed=0, **kwargs)
