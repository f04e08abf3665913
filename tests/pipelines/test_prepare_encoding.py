"""Tokenizing and packing inside one prepare split, without Ray: exactness of the fast paths."""

from __future__ import annotations

import random

import numpy as np
import pytest
from tokenizers import AddedToken, Tokenizer, normalizers

import electra_core
from pipelines.prepare import encoding
from pipelines.prepare.encoding import SentenceEncoder
from pipelines.prepare.packing import SequencePacker
from tests.pipelines.conftest import make_sentences


def one_by_one(tokenizer, sentences):
    return [e.ids for e in tokenizer.encode_batch_fast(sentences, add_special_tokens=False)]


def split_back(ids, lengths):
    bounds = np.cumsum([0, *lengths])
    return [ids[start:end].tolist() for start, end in zip(bounds[:-1], bounds[1:])]


def with_normalizer(tokenizer, normalizer):
    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.normalizer = normalizer
    return copy


@pytest.mark.parametrize("normalizer", ["bert uncased", "bert cased", "nfkc"])
def test_chunked_encoding_gives_each_sentence_the_ids_it_gets_alone(monkeypatch, normalizer):
    sentences = make_sentences(3000, seed=1)
    tokenizer = electra_core.train_tokenizer(sentences, vocab_size=400)
    if normalizer == "bert cased":
        tokenizer = with_normalizer(tokenizer, normalizers.BertNormalizer(lowercase=False, strip_accents=False))
    elif normalizer == "nfkc":  # not BERT's: no printable-ASCII shortcut, the tokenizer is used as it is
        tokenizer = with_normalizer(tokenizer, normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()]))
    # Hard cases among ordinary ones: special-token text (exact and lowercased), a sentence with no tokens at
    # all, control characters, a tab, upper case, accents, CJK, non-ASCII next to special-token text.
    sentences[10] = "the [SEP] token written out and [CLS] too"
    sentences[11] = "\x07\x08"
    sentences[12] = "Café naïve 東京 déjà-vu!!"
    sentences[13] = "UPPER Case\tTab and DEL\x7f inside"
    sentences[14] = "[sep] lower [cls] and ÉCOLE [SEP] ß"
    sentences[15] = ""
    sentences[16] = "Upper CASE In A Printable ASCII Sentence"
    sentences[2000:2400] = [sentence.upper() + " ü" for sentence in sentences[2000:2400]]  # a run of non-ASCII
    monkeypatch.setattr(encoding, "CHUNK_CHARS", 500)  # many chunks, some with a literal [SEP]

    ids, lengths = SentenceEncoder(tokenizer).encode(sentences)

    assert ids.dtype == np.int32 and len(lengths) == len(sentences)
    assert split_back(ids, lengths) == one_by_one(tokenizer, sentences)
    assert lengths[15] == 0
    if normalizer.startswith("bert"):
        assert lengths[11] == 0  # BERT's normaliser removes control characters


def test_an_added_token_matched_after_normalisation_keeps_its_matches():
    """An added "Café" (normalised) matches "cafe" once BERT's normaliser strips the accent; a lowercase-only
    normaliser for ASCII sentences would lose that match (it did before this was guarded)."""
    sentences = make_sentences(300, seed=3)
    tokenizer = electra_core.train_tokenizer(sentences, vocab_size=300)
    tokenizer.add_tokens([AddedToken("Café", normalized=True), AddedToken("QUIET", normalized=True)])
    sentences = ["the cafe was naive", "Café and QUIET", "CAFE quiet", *sentences[:50]]

    ids, lengths = SentenceEncoder(tokenizer).encode(sentences)

    assert split_back(ids, lengths) == one_by_one(tokenizer, sentences)


@pytest.mark.parametrize("kind", ["all printable ASCII", "none printable ASCII", "empty"])
def test_blocks_of_one_kind_of_sentence_encode_alike(kind):
    sentences = make_sentences(300, seed=2)
    tokenizer = electra_core.train_tokenizer(sentences, vocab_size=300)
    sentences = {"all printable ASCII": sentences, "none printable ASCII": [s + " é" for s in sentences],
                 "empty": []}[kind]

    ids, lengths = SentenceEncoder(tokenizer).encode(sentences)

    assert ids.dtype == np.int32
    assert split_back(ids, lengths) == one_by_one(tokenizer, sentences)


def test_packing_does_not_depend_on_how_the_sentences_were_grouped():
    """A split is tokenized block by block; a sequence that spans two blocks comes out the same."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 60, size=400).tolist()
    ids = np.arange(sum(lengths), dtype=np.int32)

    def pack(groups):
        packer = SequencePacker(64, cls_id=-1, sep_id=-2, rng=random.Random(7))
        start = 0
        for group in groups:
            count = sum(group)
            packer.add_sentences(ids[start:start + count], group)
            start += count
        packer.end_document()
        packer.finish()
        return packer.take()

    whole = pack([lengths])
    in_pieces = pack([lengths[i:i + 7] for i in range(0, len(lengths), 7)])
    assert [s.tolist() for s in whole[0]] == [s.tolist() for s in in_pieces[0]]
    assert [t.tolist() for t in whole[1]] == [t.tolist() for t in in_pieces[1]]
    # Every token once, in order; every sequence within the length.
    content = np.concatenate([s[s >= 0] for s in whole[0]])
    assert content.tolist() == ids.tolist()
    assert max(len(s) for s in whole[0]) <= 64
