"""The span tasks' metrics equal hand-computed values on fixed predictions (#17)."""

from __future__ import annotations

import pytest

from pipelines.finetune.span_metrics import (
    best_null_threshold,
    entity_spans,
    is_entity_tag_set,
    normalize_answer,
    squad_metrics,
    tagging_metrics,
    token_f1,
)


@pytest.mark.parametrize("tags, spans", [
    # IOB2
    (["B-PER", "I-PER", "O", "B-LOC"], [("PER", 0, 1), ("LOC", 3, 3)]),
    # two adjacent entities of one type: B starts a new one
    (["B-PER", "B-PER", "I-PER"], [("PER", 0, 0), ("PER", 1, 2)]),
    # IOB1 / sloppy BIO: an I after O starts an entity, a type change ends one (conlleval)
    (["O", "I-ORG", "I-ORG", "I-LOC"], [("ORG", 1, 2), ("LOC", 3, 3)]),
    # BIOES
    (["S-LOC", "B-PER", "I-PER", "E-PER", "O", "S-MISC"], [("LOC", 0, 0), ("PER", 1, 3), ("MISC", 5, 5)]),
    # an entity open at the end of the sentence is closed there
    (["O", "B-PER", "I-PER"], [("PER", 1, 2)]),
    (["O", "O"], []),
])
def test_entities_are_read_as_conlleval_reads_them(tags, spans):
    assert entity_spans(tags) == spans


def test_entity_scores_count_an_entity_right_only_with_its_type_and_both_ends():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "O"]]
    predicted = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "I-ORG", "O"]]
    # gold: PER(0,1) LOC(3) | ORG(0); predicted: PER(0,1) ORG(3) | ORG(0,1) -> 1 right of 3 found, of 3 true
    metrics = tagging_metrics(gold, predicted)
    assert metrics["scheme"] == "entity"
    assert metrics["precision"] == pytest.approx(1 / 3) and metrics["recall"] == pytest.approx(1 / 3)
    assert metrics["f1"] == pytest.approx(1 / 3)
    assert metrics["accuracy"] == pytest.approx(5 / 7)


def test_tag_sets_that_are_not_entities_are_scored_per_token():
    gold = [["NN", "VB", "NN"], ["DT", "NN"]]
    predicted = [["NN", "NN", "NN"], ["DT", "VB"]]
    metrics = tagging_metrics(gold, predicted)
    assert metrics["scheme"] == "token" and metrics["accuracy"] == pytest.approx(3 / 5)
    # per tag F1: NN p=2/3 r=2/3 -> 2/3; VB p=0 r=0 -> 0; DT 1 -> macro (2/3 + 0 + 1) / 3
    assert metrics["f1"] == pytest.approx((2 / 3 + 0 + 1) / 3)
    assert not is_entity_tag_set({"NN", "B-NP"}) and is_entity_tag_set({"O", "B-NP", "I-NP", "E-X", "S-Y"})


def test_mismatched_tag_shapes_are_refused():
    with pytest.raises(ValueError, match="shape"):
        tagging_metrics([["O", "O"]], [["O"]])


@pytest.mark.parametrize("text, normalized", [
    ("The Eiffel Tower!", "eiffel tower"),
    ("  an   apple,  a pear ", "apple pear"),
    ("Theatre of the absurd", "theatre of absurd"),  # "the" only as a word
    ("U.S.A.", "usa"),
])
def test_answers_are_normalised_as_squad_does(text, normalized):
    assert normalize_answer(text) == normalized


def test_exact_match_and_f1_take_the_best_gold_answer_and_split_answerable_from_unanswerable():
    predictions = ["the Eiffel Tower", "Paris France", "", "London", ""]
    golds = [["Eiffel Tower", "tower"],  # exact after normalisation
             ["Paris"],                  # F1: precision 1/2, recall 1 -> 2/3
             [],                         # unanswerable, predicted no answer: right
             [],                         # unanswerable, answered: wrong
             ["1889"]]                   # answerable, no answer predicted: wrong
    metrics = squad_metrics(predictions, golds)
    assert metrics["exact"] == pytest.approx(100 * 2 / 5)
    assert metrics["f1"] == pytest.approx(100 * (1 + 2 / 3 + 1 + 0 + 0) / 5)
    assert metrics["HasAns_total"] == 3 and metrics["NoAns_total"] == 2
    assert metrics["HasAns_exact"] == pytest.approx(100 / 3)
    assert metrics["HasAns_f1"] == pytest.approx(100 * (1 + 2 / 3) / 3)
    assert metrics["NoAns_exact"] == metrics["NoAns_f1"] == pytest.approx(50.0)
    assert "HasAns_exact" not in squad_metrics(["x"], [["x"]])  # SQuAD 1.1: no splits
    assert token_f1("a the", "") == 1.0  # both empty after normalisation


def test_a_prediction_count_that_differs_from_the_questions_is_refused():
    with pytest.raises(ValueError, match="2 predictions for 1 questions"):
        squad_metrics(["a", "b"], [["a"]])


def test_the_no_answer_threshold_is_the_one_that_scores_best_on_these_questions():
    # Margins are no-answer score minus span score; a question abstains when its margin is above the threshold.
    # Abstaining on all scores 1 of 3 (the unanswerable one); answering q0 as well scores 2; answering q2 ("" for
    # "c") changes nothing; answering q1 ("b" where there is no answer) loses one. So q0 alone is answered.
    predictions, margins, golds = ["a", "b", ""], [-1.0, 2.0, 0.5], [["a"], [], ["c"]]
    threshold = best_null_threshold(predictions, margins, golds)
    assert threshold == -1.0
    answered = [p if m <= threshold else "" for p, m in zip(predictions, margins)]
    assert squad_metrics(answered, golds)["f1"] == pytest.approx(200 / 3)
    assert best_null_threshold(["a"], [5.0], [["a"]]) == 5.0  # answering beats abstaining on an answerable one
    assert best_null_threshold(["x"], [5.0], [[]]) == 4.0  # below every margin: abstain on all
