"""Tagged sentences for token classification: CoNLL text and JSONL read as written, bad input refused with
one line naming the file and the line or row, words aligned to sub-words as transformers aligns them (#17)."""

from __future__ import annotations

import gzip
import json

import pytest

import electra_core
from pipelines.errors import InputError
from pipelines.finetune.tagging_data import IGNORED, align_tags, check_eval_tags, read_tagged

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O


Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
"""


def test_conll_text_gives_one_sentence_per_blank_line_separated_block_with_the_last_column_as_tag(tmp_path):
    path = tmp_path / "train.conll"
    path.write_text(CONLL)
    data = read_tagged(str(path))
    assert data.words == [["EU", "rejects", "German", "call"], ["Peter", "Blackburn"]]
    assert data.tags == [["B-ORG", "O", "B-MISC", "O"], ["B-PER", "I-PER"]]
    assert data.tag_set() == ["B-MISC", "B-ORG", "B-PER", "I-PER", "O"]
    gzipped = tmp_path / "train.txt.gz"
    gzipped.write_bytes(gzip.compress(CONLL.encode()))
    assert read_tagged(str(gzipped)).tags == data.tags


def test_jsonl_rows_of_tokens_and_tags_are_read_as_written(tmp_path):
    path = tmp_path / "train.jsonl"
    rows = [{"tokens": ["the", "cat"], "tags": ["DT", "NN"]}, {"tokens": ["sat"], "tags": ["VB"]}]
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    data = read_tagged(str(path))
    assert data.words == [["the", "cat"], ["sat"]] and data.tags == [["DT", "NN"], ["VB"]]


@pytest.mark.parametrize("name, content, message", [
    ("a.conll", "EU B-ORG\nrejects\n", "a.conll: line 2: one column ('rejects')"),
    ("a.jsonl", '{"tokens": [], "tags": []}\n', "a.jsonl: row 1: field 'tokens' is empty"),
    ("a.jsonl", '{"tokens": ["a"], "tags": ["O"]}\n{"tokens": ["a", "b"], "tags": ["O"]}\n',
     "a.jsonl: row 2: 2 tokens but 1 tags"),
    ("a.jsonl", '{"tokens": ["a"], "tags": [3]}\n', "a.jsonl: row 1: field 'tags' must be a list"),
    ("a.jsonl", '{"tokens": ["a"], "tags": ["O"]}\nnot json\n', "a.jsonl: row 2: not JSON"),
    ("a.conll", "\n\n-DOCSTART- O\n\n", "a.conll: no sentences"),
])
def test_bad_tagged_files_are_one_line_naming_the_file_and_place(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(InputError) as error:
        read_tagged(str(path))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_an_eval_tag_never_seen_in_training_is_refused_naming_where_it_is(tmp_path):
    (tmp_path / "train.conll").write_text("EU B-ORG\nsays O\n")
    (tmp_path / "dev.conll").write_text("Peter B-PER\n")
    with pytest.raises(InputError, match=r"dev.conll: sentence 1, token 1: tag 'B-PER' never appears"):
        check_eval_tags(read_tagged(str(tmp_path / "train.conll")), read_tagged(str(tmp_path / "dev.conll")))


def test_a_words_first_sub_word_carries_its_tag_and_the_rest_are_ignored(sentences):
    tokenizer = electra_core.train_tokenizer(sentences, vocab_size=120)
    words = [["the", "unbelievably", "quick", "fox"]]
    [(ids, types, labels)] = align_tags(tokenizer, words, [[0, 1, 2, 3]])
    encoding = tokenizer.encode(words[0], is_pretokenized=True)
    assert ids == encoding.ids and len(labels) == len(ids) and set(types) == {0}
    assert labels[0] == labels[-1] == IGNORED  # [CLS] and [SEP]
    pieces = encoding.tokens
    assert len(pieces) > 6, pieces  # the small vocabulary splits at least one word into sub-words
    first_of_each = [label for label in labels if label != IGNORED]
    assert first_of_each == [0, 1, 2, 3]
    for position, word in enumerate(encoding.word_ids):
        if word is not None and position > 0 and encoding.word_ids[position - 1] == word:
            assert labels[position] == IGNORED and pieces[position].startswith("##")
