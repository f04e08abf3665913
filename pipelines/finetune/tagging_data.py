"""Tagged sentences for token classification (#17): CoNLL-style text or JSONL, checked line by line, and their
words aligned to sub-word tokens as transformers aligns them.

- CoNLL-style text (any name but .jsonl / .json / .ndjson, optionally .gz): one token per line, whitespace-
  separated columns with the tag in the last one, a blank line between sentences, `-DOCSTART-` lines skipped.
- JSONL: one sentence per row, `{"tokens": [...], "tags": [...]}` of equal length.
Every problem is a one-line InputError naming the file and the line (CoNLL) or row (JSONL, from 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from electra_core.tagging import word_starts
from pipelines.errors import InputError
from pipelines.finetune.data import Utf8Repair, jsonl_objects, read_file_bytes

# The label of a position that has no tag of its own: [CLS], [SEP], padding, a word's later sub-words.
IGNORED = -100


@dataclass
class TaggedData:
    """Sentences as words, with one tag per word, from one file."""

    source: str
    words: list[list[str]]
    tags: list[list[str]]
    warnings: list[str] = field(default_factory=list)

    def tag_set(self) -> list[str]:
        return sorted({tag for sentence in self.tags for tag in sentence})


def read_tagged(uri: str, strict: bool = False) -> TaggedData:
    repair = Utf8Repair(uri, strict)
    name = uri.lower().removesuffix(".gz")
    text = repair.whole_file(read_file_bytes(uri)).decode("utf-8")
    if name.endswith((".jsonl", ".json", ".ndjson")):
        words, tags = _jsonl_sentences(uri, text)
    else:
        words, tags = _conll_sentences(uri, text)
    if not words:
        raise InputError(f"{uri}: no sentences")
    warning = repair.warning()
    return TaggedData(uri, words, tags, [warning] if warning else [])


def _conll_sentences(uri: str, text: str) -> tuple[list[list[str]], list[list[str]]]:
    words: list[list[str]] = []
    tags: list[list[str]] = []
    sentence_words: list[str] = []
    sentence_tags: list[str] = []
    for number, line in enumerate(text.split("\n"), start=1):
        columns = line.split()
        if not columns or columns[0] == "-DOCSTART-":  # a blank line (or a document marker) ends a sentence
            if sentence_words:
                words.append(sentence_words)
                tags.append(sentence_tags)
                sentence_words, sentence_tags = [], []
            continue
        if len(columns) < 2:
            raise InputError(f"{uri}: line {number}: one column ({columns[0]!r}); a token line needs the token "
                             "and its tag, whitespace-separated, the tag last")
        sentence_words.append(columns[0])
        sentence_tags.append(columns[-1])
    if sentence_words:
        words.append(sentence_words)
        tags.append(sentence_tags)
    return words, tags


def _jsonl_sentences(uri: str, text: str) -> tuple[list[list[str]], list[list[str]]]:
    words, tags = [], []
    for row, record in jsonl_objects(uri, text, "'tokens' and 'tags'"):
        sentence_words, sentence_tags = record.get("tokens"), record.get("tags")
        for field_name, value in (("tokens", sentence_words), ("tags", sentence_tags)):
            if not isinstance(value, list) or not all(isinstance(item, str) and item.strip() for item in value):
                raise InputError(f"{uri}: row {row}: field {field_name!r} must be a list of non-empty strings")
        if not sentence_words:
            raise InputError(f"{uri}: row {row}: field 'tokens' is empty: a sentence needs at least one token")
        if len(sentence_words) != len(sentence_tags):
            raise InputError(f"{uri}: row {row}: {len(sentence_words)} tokens but {len(sentence_tags)} tags")
        words.append(sentence_words)
        tags.append(sentence_tags)
    return words, tags


def check_eval_tags(train: TaggedData, evaluation: TaggedData) -> None:
    """An eval tag the model was never trained on cannot be predicted: refused, naming the first place."""
    known = set(train.tag_set())
    for sentence, tags in enumerate(evaluation.tags, start=1):
        for position, tag in enumerate(tags, start=1):
            if tag not in known:
                raise InputError(f"{evaluation.source}: sentence {sentence}, token {position}: tag {tag!r} never "
                                 f"appears in the training data {train.source}")


def align_tags(tokenizer, words: list[list[str]], tag_ids: list[list[int]]
               ) -> list[tuple[list[int], list[int], list[int]]]:
    """(input ids, token type ids, labels) per sentence: each word's first sub-word carries its tag id, its
    other sub-words and the special tokens IGNORED, as transformers' token-classification examples align them.
    Words past the tokenizer's truncation are dropped (they get no prediction)."""
    encoded = tokenizer.encode_batch(words, is_pretokenized=True)
    examples = []
    for sentence, encoding in enumerate(encoded):
        labels = [IGNORED] * len(encoding.ids)
        for position, word in word_starts(encoding.word_ids):
            labels[position] = tag_ids[sentence][word]
        examples.append((encoding.ids, encoding.type_ids, labels))
    return examples


def words_past(tokenizer, words: list[list[str]], max_seq_len: int) -> int:
    """How many words lie past max_seq_len tokens (special tokens included) and so get no prediction."""
    tokenizer.enable_truncation(max_length=max_seq_len)
    tokenizer.no_padding()
    encoded = tokenizer.encode_batch(words, is_pretokenized=True)
    return sum(len(sentence) - len(word_starts(e.word_ids)) for sentence, e in zip(words, encoded))
