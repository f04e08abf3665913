"""Packing tokenized sentences into training sequences, the way reference ELECTRA builds them.

Sentences of a document accumulate until they fill the target length; the sequence is then split into
[CLS] A [SEP] B [SEP] (segment ids 0 and 1) with A taking about half, except that a share of sequences are
one segment ([CLS] A [SEP]) and a share get a shorter random target length. Unlike the reference, the part
of a sentence that does not fit is carried into the next sequence instead of being cut off, so no token of
the input is lost.

Document boundaries, two ways (PrepareConfig.packing):
- dense (the default): documents follow one another in the same sequence, as RoBERTa's FULL-SENTENCES. A
  [SEP] marks each document boundary inside a sequence; where the boundary falls at the end of segment A,
  or at the end of the sequence, the [SEP] that closes the segment is that mark. So every [SEP] ends a
  segment or a document, and segment B can begin a new document. Short documents (a sentence a line, one
  short file, a JSONL record of a few words) no longer make one mostly padded sequence each.
- reference: a document boundary closes the current sequence (google-research/electra's ExampleBuilder).

Sentences arrive as one flat id array per run of consecutive sentences plus their lengths: a sequence is
then one slice of that array (two where it began in an earlier run), so the per-sentence work is integer
arithmetic and numpy is touched once per sequence.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np


class SequencePacker:
    """Feed runs of sentences and document ends; collect finished sequences."""

    def __init__(self, seq_len: int, cls_id: int, sep_id: int, rng: random.Random,
                 single_segment_prob: float = 0.1, short_seq_prob: float = 0.05, dense: bool = True):
        self.seq_len = seq_len
        self.cls = np.array([cls_id], dtype=np.int32)
        self.sep = np.array([sep_id], dtype=np.int32)
        self.rng = rng
        self.single_segment_prob = single_segment_prob
        self.short_seq_prob = short_seq_prob
        self.dense = dense
        self.sequences: list[np.ndarray] = []
        self.token_types: list[np.ndarray] = []
        # The sequence being filled: its tokens from earlier runs, and the length of each sentence piece in it.
        self._carried: list[np.ndarray] = []
        self._piece_lengths: list[int] = []
        self._boundaries: set[int] = set()  # indices of pieces that are a document-boundary [SEP]
        self._length = 0
        self._start_sequence(self.seq_len)

    def _start_sequence(self, target: int) -> None:
        self._single = self.rng.random() < self.single_segment_prob
        self._budget = max(1, target - (2 if self._single else 3))

    def add_sentences(self, ids: np.ndarray, lengths: Sequence[int]) -> None:
        """Consecutive sentences of one document: `ids` holds their tokens back to back, `lengths` their sizes
        (empty sentences are skipped). A sentence longer than the room left is cut; its rest starts the next
        sequence."""
        start = position = 0  # start: where the current sequence's tokens begin in `ids`
        for length in lengths:
            while length:
                taken = min(self._budget - self._length, length)
                self._piece_lengths.append(taken)
                self._length += taken
                position += taken
                length -= taken
                if self._length >= self._budget:
                    self._finish_sequence(ids[start:position])
                    start = position
        if self._length:
            self._carried.append(ids[start:position])

    def end_document(self) -> None:
        if not self._length:
            return
        if not self.dense or self._budget - self._length < 2:  # no room for a [SEP] and a token after it
            self._finish_sequence(None)
            return
        self._boundaries.add(len(self._piece_lengths))
        self._piece_lengths.append(1)
        self._carried.append(self.sep)
        self._length += 1

    def finish(self) -> None:
        """Closes the sequence being filled (at the end of the input: the last document has ended)."""
        if self._length:
            self._finish_sequence(None)

    def _finish_sequence(self, tail: np.ndarray | None) -> None:
        parts = self._carried + [tail] if tail is not None else self._carried
        tokens = parts[0] if len(parts) == 1 else np.concatenate(parts)
        first_length, first_pieces = self._first_segment_length()
        last = len(self._piece_lengths) - 1
        if last in self._boundaries:  # the sequence's closing [SEP] marks this boundary
            tokens = tokens[:-1]
            first_length = min(first_length, len(tokens))
        elif first_pieces - 1 in self._boundaries and first_length < len(tokens):  # so does the A/B [SEP]
            tokens = np.delete(tokens, first_length - 1)
            first_length -= 1
        if first_length < len(tokens):
            ids = np.concatenate([self.cls, tokens[:first_length], self.sep, tokens[first_length:], self.sep])
            types = np.zeros(len(ids), dtype=np.int8)
            types[first_length + 2:] = 1
        else:
            ids = np.concatenate([self.cls, tokens, self.sep])
            types = np.zeros(len(ids), dtype=np.int8)
        self.sequences.append(ids)
        self.token_types.append(types)
        self._carried, self._piece_lengths, self._length = [], [], 0
        self._boundaries = set()
        short = self.rng.random() < self.short_seq_prob
        self._start_sequence(self.rng.randint(5, self.seq_len) if short else self.seq_len)

    def _first_segment_length(self) -> tuple[int, int]:
        """(tokens in segment A, sentence pieces in it); all of them for a single-segment sequence."""
        if self._single or len(self._piece_lengths) == 1:
            return self._length, len(self._piece_lengths)
        first_target = self._budget // 2
        first_length = pieces = 0
        for index, length in enumerate(self._piece_lengths):
            # As the reference: a sentence joins A while A is empty, while it fits under A's target, or
            # (before B has started) half of the time when it would overshoot. B takes the rest.
            if (index == 0 or first_length + length < first_target
                    or (first_length < first_target and self.rng.random() < 0.5)):
                first_length += length
                pieces += 1
            else:
                break
        return first_length, pieces

    def take(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Finished sequences and their segment ids since the last take()."""
        sequences, token_types = self.sequences, self.token_types
        self.sequences, self.token_types = [], []
        return sequences, token_types
