"""Models move between electra_core and transformers in both directions with identical outputs."""

from __future__ import annotations

import pytest
import torch
import transformers

import electra_core
from electra_core import ElectraConfig

CLASSES = ["ElectraForPreTraining", "ElectraForMaskedLM", "ElectraForSequenceClassification",
           "ElectraForTokenClassification"]
TOLERANCE = 1e-4


def tiny_config(embedding_size: int) -> ElectraConfig:
    return ElectraConfig.from_preset(
        "tiny", embedding_size=embedding_size, num_labels=3, id2label={0: "neg", 1: "neutral", 2: "pos"}
    )


def batch(config: ElectraConfig, seed: int = 0):
    rng = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, config.vocab_size, (3, 24), generator=rng)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 17:] = 0  # one padded row, so the mask path is compared too
    input_ids[1, 17:] = config.pad_token_id
    token_type_ids = torch.zeros_like(input_ids)
    token_type_ids[:, 12:] = 1
    return dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)


def max_difference(ours: torch.Tensor, theirs: torch.Tensor, attention_mask: torch.Tensor) -> float:
    if ours.dim() >= 2 and ours.shape[:2] == attention_mask.shape:  # per-token outputs: compare real tokens
        keep = attention_mask.bool()
        ours, theirs = ours[keep], theirs[keep]
    return (ours - theirs).abs().max().item()


@pytest.mark.parametrize("embedding_size", [16, 32], ids=["projected-embeddings", "hidden-width-embeddings"])
@pytest.mark.parametrize("class_name", CLASSES)
def test_transformers_model_loads_into_ours_with_identical_outputs(tmp_path, class_name, embedding_size):
    config = tiny_config(embedding_size)
    hf_config = transformers.ElectraConfig(**config.to_hf_dict())
    torch.manual_seed(1)
    theirs = getattr(transformers, class_name)(hf_config).eval()
    theirs.save_pretrained(tmp_path)

    ours = getattr(electra_core, class_name).from_pretrained(str(tmp_path)).eval()

    inputs = batch(config)
    with torch.no_grad():
        difference = max_difference(ours(**inputs).logits, theirs(**inputs).logits, inputs["attention_mask"])
    assert difference <= TOLERANCE
    if class_name == "ElectraForSequenceClassification":
        assert ours.config.id2label == {0: "neg", 1: "neutral", 2: "pos"}


@pytest.mark.parametrize("embedding_size", [16, 32], ids=["projected-embeddings", "hidden-width-embeddings"])
@pytest.mark.parametrize("class_name", CLASSES)
def test_our_model_loads_into_transformers_with_identical_outputs(tmp_path, class_name, embedding_size):
    config = tiny_config(embedding_size)
    torch.manual_seed(2)
    ours = getattr(electra_core, class_name)(config).eval()
    ours.save_pretrained(str(tmp_path))

    theirs = getattr(transformers, class_name).from_pretrained(tmp_path).eval()

    inputs = batch(config, seed=3)
    with torch.no_grad():
        difference = max_difference(ours(**inputs).logits, theirs(**inputs).logits, inputs["attention_mask"])
    assert difference <= TOLERANCE
    if class_name == "ElectraForSequenceClassification":
        assert theirs.config.id2label == {0: "neg", 1: "neutral", 2: "pos"}


def test_saved_generator_keeps_its_output_embedding_tied_in_transformers(tmp_path):
    ours = electra_core.ElectraForMaskedLM(ElectraConfig.from_preset("tiny"))
    ours.save_pretrained(str(tmp_path))
    theirs = transformers.ElectraForMaskedLM.from_pretrained(tmp_path)
    assert theirs.generator_lm_head.weight.data_ptr() == theirs.electra.embeddings.word_embeddings.weight.data_ptr()
    assert torch.equal(theirs.generator_lm_head.weight, ours.generator_lm_head.weight)


def test_pretraining_export_folders_each_load_in_transformers(tmp_path):
    """The joint model saves discriminator/ and generator/, each a complete Hugging Face model."""
    config = ElectraConfig.from_preset("tiny")
    ours = electra_core.ElectraPretrainingModel(config).eval()
    ours.save_pretrained(str(tmp_path))

    discriminator = transformers.ElectraForPreTraining.from_pretrained(tmp_path / "discriminator").eval()
    generator = transformers.ElectraForMaskedLM.from_pretrained(tmp_path / "generator").eval()

    inputs = batch(config)
    with torch.no_grad():
        ours_disc = ours.discriminator(**inputs).logits
        ours_gen = ours.generator(**inputs).logits
        assert max_difference(ours_disc, discriminator(**inputs).logits, inputs["attention_mask"]) <= TOLERANCE
        assert max_difference(ours_gen, generator(**inputs).logits, inputs["attention_mask"]) <= TOLERANCE
    assert generator.config.hidden_size == config.hidden_size // 2  # tiny's generator is half as wide
    assert torch.equal(generator.electra.embeddings.word_embeddings.weight,
                       discriminator.electra.embeddings.word_embeddings.weight)


def test_tokenizer_loads_as_electra_tokenizer_fast_with_the_same_ids(tmp_path, sentences):
    tokenizer = electra_core.train_tokenizer(sentences, vocab_size=200)
    electra_core.save_tokenizer(tokenizer, str(tmp_path))

    theirs = transformers.ElectraTokenizerFast.from_pretrained(tmp_path)
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path)

    text, pair = "The Quick brown fox!", "Jumps over a dog."
    ours = tokenizer.encode(text, pair)
    for loaded in (theirs, auto):
        encoded = loaded(text, pair)
        assert encoded["input_ids"] == ours.ids
        assert encoded["token_type_ids"] == ours.type_ids
    assert theirs.mask_token_id == tokenizer.token_to_id("[MASK]")
    assert theirs.pad_token_id == 0


@pytest.mark.parametrize("direction", ["ours-to-transformers", "transformers-to-ours"])
def test_question_answering_models_move_both_ways_with_identical_start_end_logits_and_loss(tmp_path, direction):
    config = ElectraConfig.from_preset("tiny", embedding_size=16)
    torch.manual_seed(4)
    if direction == "ours-to-transformers":
        ours = electra_core.ElectraForQuestionAnswering(config).eval()
        ours.save_pretrained(str(tmp_path))
        theirs = transformers.ElectraForQuestionAnswering.from_pretrained(tmp_path).eval()
    else:
        theirs = transformers.ElectraForQuestionAnswering(transformers.ElectraConfig(**config.to_hf_dict())).eval()
        theirs.save_pretrained(tmp_path)
        ours = electra_core.ElectraForQuestionAnswering.from_pretrained(str(tmp_path)).eval()
    inputs = batch(config, seed=5)
    # One answer inside, one "no answer" at [CLS], one past the end (ignored, as transformers does).
    positions = dict(start_positions=torch.tensor([3, 0, 40]), end_positions=torch.tensor([6, 0, 41]))
    with torch.no_grad():
        mine, reference = ours(**inputs, **positions), theirs(**inputs, **positions)
    mask = inputs["attention_mask"]
    assert max_difference(mine.start_logits, reference.start_logits, mask) <= TOLERANCE
    assert max_difference(mine.end_logits, reference.end_logits, mask) <= TOLERANCE
    assert mine.loss.item() == pytest.approx(reference.loss.item(), abs=TOLERANCE)


def test_token_classification_loss_skips_ignored_positions_as_transformers_does(tmp_path):
    config = tiny_config(16)
    torch.manual_seed(6)
    ours = electra_core.ElectraForTokenClassification(config).eval()
    ours.save_pretrained(str(tmp_path))
    theirs = transformers.ElectraForTokenClassification.from_pretrained(tmp_path).eval()
    inputs = batch(config, seed=7)
    labels = torch.randint(0, 3, inputs["input_ids"].shape, generator=torch.Generator().manual_seed(8))
    labels[:, 0] = -100  # [CLS]
    labels[1, 17:] = -100  # padding
    with torch.no_grad():
        loss, reference = ours(**inputs, labels=labels).loss, theirs(**inputs, labels=labels).loss
    assert loss.item() == pytest.approx(reference.item(), abs=TOLERANCE)
    assert theirs.config.id2label == {0: "neg", 1: "neutral", 2: "pos"}


def test_a_question_answering_model_needs_a_start_and_an_end_logit():
    with pytest.raises(ValueError, match="num_labels=2"):
        electra_core.ElectraForQuestionAnswering(ElectraConfig.from_preset("tiny", num_labels=3))
