"""Metrics of the span tasks (#17): entity-level precision, recall and F1 of sequence tagging, as seqeval's
default mode (the CoNLL-2000 conlleval script) defines them, and SQuAD's exact match and F1 with its answer
normalisation, as the official SQuAD 1.1 / 2.0 evaluation scripts define them.

Pure Python: the definitions are short, and the reference packages would add scikit-learn to the install.
"""

from __future__ import annotations

import collections
import re
import string

from electra_core.tagging import entity_spans, is_entity_tag_set

# ----------------------------------------------------------------------------------------------------------
# Sequence tagging
# ----------------------------------------------------------------------------------------------------------


def tagging_metrics(gold: list[list[str]], predicted: list[list[str]]) -> dict[str, float]:
    """Token accuracy always; for entity tag sets, micro precision, recall and F1 over entities (an entity is
    right when its type and both ends are); for other tag sets F1 is the macro F1 over tags, per token."""
    if len(gold) != len(predicted) or any(len(g) != len(p) for g, p in zip(gold, predicted)):
        raise ValueError("gold and predicted tags differ in shape")
    tokens = sum(len(sentence) for sentence in gold)
    correct = sum(g == p for gs, ps in zip(gold, predicted) for g, p in zip(gs, ps))
    metrics = {"accuracy": correct / tokens if tokens else 0.0}
    tag_set = {tag for sentence in gold + predicted for tag in sentence}
    if is_entity_tag_set(tag_set):
        true = {(i, *span) for i, sentence in enumerate(gold) for span in entity_spans(sentence)}
        found = {(i, *span) for i, sentence in enumerate(predicted) for span in entity_spans(sentence)}
        hits = len(true & found)
        precision = hits / len(found) if found else 0.0
        recall = hits / len(true) if true else 0.0
        metrics.update(precision=precision, recall=recall, f1=_harmonic(precision, recall), scheme="entity")
        return metrics
    f1s = []
    for tag in sorted(tag_set):
        pairs = [(g == tag, p == tag) for gs, ps in zip(gold, predicted) for g, p in zip(gs, ps)]
        hits = sum(g and p for g, p in pairs)
        predicted_count, gold_count = sum(p for _, p in pairs), sum(g for g, _ in pairs)
        f1s.append(_harmonic(hits / predicted_count if predicted_count else 0.0,
                             hits / gold_count if gold_count else 0.0))
    metrics.update(f1=sum(f1s) / len(f1s) if f1s else 0.0, scheme="token")
    return metrics


def _harmonic(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


# ----------------------------------------------------------------------------------------------------------
# Extractive question answering
# ----------------------------------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, punctuation removed, the articles a / an / the removed, whitespace
    collapsed (in that order, as the official script)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """F1 of the normalised answers' token bags; when either is empty (no answer), 1 only if both are."""
    predicted, true = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not true:
        return float(predicted == true)
    common = sum((collections.Counter(predicted) & collections.Counter(true)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(true)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(predictions: list[str], golds: list[list[str]]) -> dict[str, float]:
    """exact and f1 in percent, each the best over a question's gold answers; a question with no gold answer
    (SQuAD 2.0's unanswerable) is right only when the prediction is "" too. With both kinds present, HasAns_*
    and NoAns_* give the two splits, as the 2.0 script does."""
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} questions")
    rows = [(bool(answers), *question_scores(prediction, answers)) for prediction, answers in zip(predictions, golds)]
    metrics = _percentages(rows)
    answerable = [row for row in rows if row[0]]
    unanswerable = [row for row in rows if not row[0]]
    if answerable and unanswerable:
        for name, subset in (("HasAns", answerable), ("NoAns", unanswerable)):
            split = _percentages(subset)
            metrics.update({f"{name}_exact": split["exact"], f"{name}_f1": split["f1"], f"{name}_total": len(subset)})
    return metrics


def question_scores(prediction: str, answers: list[str]) -> tuple[float, float]:
    """(exact, f1) of one prediction: the best over the gold answers; no gold answer wants ""."""
    answers = [a for a in answers if normalize_answer(a)] or [""]  # as the 2.0 script
    return max(exact_match(prediction, a) for a in answers), max(token_f1(prediction, a) for a in answers)


def best_null_threshold(predictions: list[str], margins: list[float], golds: list[list[str]],
                        metric: str = "f1") -> float:
    """The no-answer threshold that maximises `metric` (exact or f1) over these questions, as the SQuAD 2.0
    script's find_best_thresh: a question is answered "" when its margin (the no-answer score minus the best
    span's score) is above the threshold. Sorting by margin makes it one pass."""
    which = 0 if metric == "exact" else 1
    order = sorted(range(len(margins)), key=margins.__getitem__)
    total = best = sum(0.0 if answers else 1.0 for answers in golds)  # every question answered ""
    threshold = margins[order[0]] - 1.0 if order else 0.0
    for i in order:  # raising the threshold past margins[i] answers question i with its span
        total += question_scores(predictions[i], golds[i])[which] - (0.0 if golds[i] else 1.0)
        if total > best:
            best, threshold = total, margins[i]
    return threshold


def _percentages(rows: list[tuple[bool, float, float]]) -> dict[str, float]:
    total = len(rows)
    return {"exact": 100.0 * sum(r[1] for r in rows) / total if total else 0.0,
            "f1": 100.0 * sum(r[2] for r in rows) / total if total else 0.0, "total": total}
