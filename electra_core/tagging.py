"""Tag schemes of token classification: which tag sets name entities, and the entities a sentence's tags mark.

Pure Python, in electra_core because both the fine-tune's metrics (pipelines.finetune.span_metrics) and the
registered model's pyfunc (which bundles electra_core only) read entities from tags. The definitions are
conlleval's (the CoNLL-2000 script), which seqeval's default mode follows.
"""

from __future__ import annotations

# Tag prefixes of the entity schemes: IOB1, IOB2 (BIO) and BIOES (IOBES). "O" is outside every entity.
ENTITY_PREFIXES = ("B", "I", "E", "S")


def is_entity_tag_set(tags) -> bool:
    """Whether every tag is "O" or PREFIX-TYPE with an entity prefix: then scores are per entity, else per token."""
    return all(tag == "O" or (tag[:2] in {f"{p}-" for p in ENTITY_PREFIXES} and len(tag) > 2) for tag in tags)


def _split(tag: str) -> tuple[str, str]:
    return ("O", "") if tag == "O" else (tag[0], tag[2:])


def _ends_before(previous: tuple[str, str], current: tuple[str, str]) -> bool:
    """Whether an entity open at the previous tag ends before the current one (conlleval's endOfChunk)."""
    prev_prefix, prev_type = previous
    prefix, type_ = current
    if prev_prefix in ("E", "S"):
        return True
    if prev_prefix in ("B", "I") and prefix in ("B", "S", "O"):
        return True
    return prev_prefix != "O" and prev_type != type_


def _starts_at(previous: tuple[str, str], current: tuple[str, str]) -> bool:
    """Whether an entity starts at the current tag (conlleval's startOfChunk): an I or E after O, E or S
    starts one too, so IOB1 and sloppy BIO are read as conlleval reads them."""
    prev_prefix, prev_type = previous
    prefix, type_ = current
    if prefix in ("B", "S"):
        return True
    if prefix in ("I", "E") and prev_prefix in ("O", "E", "S"):
        return True
    return prefix != "O" and prev_type != type_


def entity_spans(tags: list[str]) -> list[tuple[str, int, int]]:
    """(type, first, last) of every entity of one sentence's tags, positions inclusive."""
    spans = []
    previous, start = ("O", ""), None
    for position, tag in enumerate([*tags, "O"]):  # the closing O ends an entity left open
        current = _split(tag)
        if start is not None and _ends_before(previous, current):
            spans.append((previous[1], start, position - 1))
            start = None
        if _starts_at(previous, current):
            start = position
        previous = current
    return spans


def word_starts(word_ids: list[int | None]) -> list[tuple[int, int]]:
    """(token position, word index) of each word's first sub-word, from a tokenizers Encoding's word_ids: the
    positions whose logits tag the words. A word the tokenizer truncated away (or turned into no token) has none."""
    starts, previous = [], None
    for position, word in enumerate(word_ids):
        if word is not None and word != previous:
            starts.append((position, word))
        previous = word
    return starts
