"""Augmentation for distillation (augment.py): seeded, bounded, and each operation does what it says."""

from distillery.augment import MASK, augment_texts

TEXTS = ["the film is a charming and moving story", "dull", "an utterly predictable plot with no surprises"]


def run(**kw):
    opts = dict(mask_prob=0.1, replace_prob=0.1, ngram_prob=0.25, max_ngram=5, seed=7) | kw
    return augment_texts(TEXTS, kw.pop("copies", 3), **{k: v for k, v in opts.items() if k != "copies"})


def test_same_seed_same_texts_other_seed_other_texts():
    a, sa = run()
    b, sb = run()
    c, _ = run(seed=8)
    assert a == b and list(sa) == list(sb) and a != c


def test_mask_everything():
    out, src = run(mask_prob=1.0, replace_prob=0.0, ngram_prob=0.0, copies=1)
    assert [len(t.split()) for t in out] == [len(TEXTS[i].split()) for i in src]
    assert all(set(t.split()) == {MASK} for t in out)


def test_replacement_draws_training_words_only():
    words = {w for t in TEXTS for w in t.split()}
    out, _ = run(mask_prob=0.0, replace_prob=1.0, ngram_prob=0.0, copies=5)
    assert out and all(set(t.split()) <= words for t in out)


def test_ngrams_are_contiguous_and_bounded():
    out, src = run(mask_prob=0.0, replace_prob=0.0, ngram_prob=1.0, max_ngram=3, copies=5)
    assert out  # unchanged rows are dropped, cut ones kept
    for t, i in zip(out, src):
        assert 1 <= len(t.split()) <= 3 and f" {t} " in f" {TEXTS[i]} "


def test_off_and_unchanged_rows_dropped():
    assert run(copies=0)[0] == []
    out, _ = run(mask_prob=0.0, replace_prob=0.0, ngram_prob=0.0, copies=2)
    assert out == []
