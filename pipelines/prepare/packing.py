"""Packing tokenized sentences into training sequences, the way reference ELECTRA builds them.

Sentences of a document accumulate until they fill the target length; the sequence is then split into
[CLS] A [SEP] B [SEP] (segment ids 0 and 1) with A taking about half, except that a share of sequences are
one segment ([CLS] A [SEP]) and a share get a shorter random target length. Unlike the reference, the part
of a sentence that does not fit is carried into the next sequence instead of being cut off, so no token of
the input is lost; a document boundary closes the current sequence.
"""

from __future__ import annotations

import random

import numpy as np


class SequencePacker:
    """Feed sentences (token id arrays) and document ends; collect finished sequences."""

    def __init__(self, seq_len: int, cls_id: int, sep_id: int, rng: random.Random,
                 single_segment_prob: float = 0.1, short_seq_prob: float = 0.05):
        self.seq_len = seq_len
        self.cls = np.array([cls_id], dtype=np.int32)
        self.sep = np.array([sep_id], dtype=np.int32)
        self.rng = rng
        self.single_segment_prob = single_segment_prob
        self.short_seq_prob = short_seq_prob
        self.sequences: list[np.ndarray] = []
        self.token_types: list[np.ndarray] = []
        self._pieces: list[np.ndarray] = []
        self._length = 0
        self._start_sequence(self.seq_len)

    def _start_sequence(self, target: int) -> None:
        self._single = self.rng.random() < self.single_segment_prob
        self._budget = max(1, target - (2 if self._single else 3))

    def add_sentence(self, ids: np.ndarray) -> None:
        while len(ids):
            room = self._budget - self._length
            self._pieces.append(ids[:room])
            self._length += min(room, len(ids))
            ids = ids[room:]
            if self._length >= self._budget:
                self._finish_sequence()

    def end_document(self) -> None:
        if self._length:
            self._finish_sequence()

    def _finish_sequence(self) -> None:
        first, second = self._segments()
        if second:
            ids = np.concatenate([self.cls, *first, self.sep, *second, self.sep])
            first_length = 2 + sum(len(piece) for piece in first)
            types = np.zeros(len(ids), dtype=np.int8)
            types[first_length:] = 1
        else:
            ids = np.concatenate([self.cls, *first, self.sep])
            types = np.zeros(len(ids), dtype=np.int8)
        self.sequences.append(ids)
        self.token_types.append(types)
        self._pieces, self._length = [], 0
        short = self.rng.random() < self.short_seq_prob
        self._start_sequence(self.rng.randint(5, self.seq_len) if short else self.seq_len)

    def _segments(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        if self._single or len(self._pieces) == 1:
            return self._pieces, []
        first_target = self._budget // 2
        first: list[np.ndarray] = []
        second: list[np.ndarray] = []
        first_length = 0
        for piece in self._pieces:
            # As the reference: a sentence joins A while A is empty, while it fits under A's target, or
            # (before B has started) half of the time when it would overshoot.
            if second or not (
                not first
                or first_length + len(piece) < first_target
                or (first_length < first_target and self.rng.random() < 0.5)
            ):
                second.append(piece)
            else:
                first.append(piece)
                first_length += len(piece)
        return first, second

    def take(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Finished sequences and their segment ids since the last take()."""
        sequences, token_types = self.sequences, self.token_types
        self.sequences, self.token_types = [], []
        return sequences, token_types
