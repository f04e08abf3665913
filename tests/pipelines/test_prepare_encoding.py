"""Tokenizing and packing inside one prepare split, without Ray: exactness of the fast paths."""

from __future__ import annotations

import random

import numpy as np

import electra_core
from pipelines.prepare import encoding
from pipelines.prepare.encoding import encode_sentences
from pipelines.prepare.packing import SequencePacker
from tests.pipelines.conftest import make_sentences


def one_by_one(tokenizer, sentences):
    return [e.ids for e in tokenizer.encode_batch_fast(sentences, add_special_tokens=False)]


def split_back(ids, lengths):
    bounds = np.cumsum([0, *lengths])
    return [ids[start:end].tolist() for start, end in zip(bounds[:-1], bounds[1:])]


def test_chunked_encoding_gives_each_sentence_the_ids_it_gets_alone(monkeypatch):
    sentences = make_sentences(3000, seed=1)
    tokenizer = electra_core.train_tokenizer(sentences, vocab_size=400)
    sep = tokenizer.token_to_id("[SEP]")
    # Hard cases among ordinary ones: special-token text, a sentence with no tokens at all, accents, CJK.
    sentences[10] = "the [SEP] token written out and [CLS] too"
    sentences[11] = "\x07\x08"
    sentences[12] = "Café naïve 東京 déjà-vu!!"
    monkeypatch.setattr(encoding, "CHUNK_CHARS", 500)  # many chunks, one of them with a literal [SEP]

    ids, lengths = encode_sentences(tokenizer, sentences, sep)

    assert ids.dtype == np.int32 and len(lengths) == len(sentences)
    assert split_back(ids, lengths) == one_by_one(tokenizer, sentences)
    assert lengths[11] == 0


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
        return packer.take()

    whole = pack([lengths])
    in_pieces = pack([lengths[i:i + 7] for i in range(0, len(lengths), 7)])
    assert [s.tolist() for s in whole[0]] == [s.tolist() for s in in_pieces[0]]
    assert [t.tolist() for t in whole[1]] == [t.tolist() for t in in_pieces[1]]
    # Every token once, in order; every sequence within the length.
    content = np.concatenate([s[s >= 0] for s in whole[0]])
    assert content.tolist() == ids.tolist()
    assert max(len(s) for s in whole[0]) <= 64
