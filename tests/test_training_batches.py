"""Batching in the training loop: length-grouped batches cover every row once per epoch, pad far
less than random batches, stay seeded, and a model trained on them still learns."""

import numpy as np
import torch

from distillery.training import Encoded, TrainSpec, collate, iter_batches, train


def _padded_over_real(batches, lengths):
    return sum(lengths[b].max() * len(b) for b in batches) / lengths[np.concatenate(batches)].sum()


def _skewed_lengths(n=5000, seed=0):
    # Like SST-2's training phrases: most are short, a long tail up to the cut.
    return np.minimum(np.random.default_rng(seed).geometric(1 / 13, size=n), 64)


def test_grouped_batches_cover_every_row_exactly_once():
    lengths = _skewed_lengths(1234)
    batches = list(iter_batches(len(lengths), 32, np.random.default_rng(1), lengths))
    rows = np.concatenate(batches)
    assert sorted(rows.tolist()) == list(range(1234))
    assert all(1 <= len(b) <= 32 for b in batches)
    # Only the last batch of each length group can be short.
    assert sum(len(b) < 32 for b in batches) <= -(-1234 // (32 * 50))


def test_grouped_batches_pad_far_less_than_random_ones():
    lengths = _skewed_lengths()
    grouped = list(iter_batches(len(lengths), 32, np.random.default_rng(2), lengths))
    random = list(iter_batches(len(lengths), 32, np.random.default_rng(2)))
    assert _padded_over_real(random, lengths) > 2.0
    assert _padded_over_real(grouped, lengths) < 1.2


def test_grouped_batches_are_seeded_and_change_between_epochs():
    lengths = _skewed_lengths(800)
    a = [b.tolist() for b in iter_batches(800, 16, np.random.default_rng(3), lengths)]
    b = [b.tolist() for b in iter_batches(800, 16, np.random.default_rng(3), lengths)]
    assert a == b
    rng = np.random.default_rng(3)
    first = [x.tolist() for x in iter_batches(800, 16, rng, lengths)]
    second = [x.tolist() for x in iter_batches(800, 16, rng, lengths)]
    assert first != second
    # Batches are not in global length order: the epoch's batches are shuffled.
    widths = [int(lengths[x].max()) for x in first]
    assert widths != sorted(widths, reverse=True)


def test_without_rng_the_order_is_kept_for_scoring():
    assert [b.tolist() for b in iter_batches(5, 2, None, np.array([1, 9, 2, 8, 3]))] == [[0, 1], [2, 3], [4]]


class _BagOfTokens(torch.nn.Module):
    """A tiny classifier over token ids, shaped like a Hugging Face model's output."""

    def __init__(self, vocab=50, labels=2):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, labels)

    def forward(self, input_ids, attention_mask, **_):
        mask = attention_mask.float()
        logits = (self.emb.weight[input_ids] * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return type("Out", (), {"logits": logits})()


def test_training_on_grouped_batches_learns_a_length_independent_rule():
    rng = np.random.default_rng(4)
    lengths = _skewed_lengths(600, seed=4)
    labels = rng.integers(0, 2, size=600)
    # Label 1 rows carry token 7 somewhere, label 0 rows token 9; the rest is noise of any length.
    ids = []
    for n, y in zip(lengths, labels):
        row = rng.integers(10, 50, size=int(n)).tolist()
        row[rng.integers(0, int(n))] = 7 if y else 9
        ids.append(row)
    enc = Encoded(ids, pad_id=0)
    model = _BagOfTokens()
    ce = torch.nn.CrossEntropyLoss()
    spec = TrainSpec(loss_fn=lambda s, t, y: ce(s, y), epochs=8, batch_size=32, learning_rate=0.5, seed=0,
                     device=torch.device("cpu"), desc="test")
    assert spec.group_by_length
    result = train(model, enc, labels, spec)
    assert result.steps == 8 * -(-600 // 32)
    with torch.no_grad():
        logits = model(**collate(enc, np.arange(600), torch.device("cpu"))).logits
    assert (logits.argmax(1).numpy() == labels).mean() > 0.9
