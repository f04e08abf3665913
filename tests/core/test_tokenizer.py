"""WordPiece tokenizer: trained from texts or files, uncased, saved and loaded from any storage URI."""

from __future__ import annotations

import pytest

import electra_core
from electra_core.tokenizer import SPECIAL_TOKENS


def test_special_tokens_take_the_first_ids_and_fill_the_config_fields(sentences):
    tokenizer = electra_core.train_tokenizer(sentences, vocab_size=150)
    assert [tokenizer.token_to_id(token) for token in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    ids = electra_core.special_token_ids(tokenizer)
    assert ids["pad_token_id"] == 0 and ids["mask_token_id"] == 4
    config = electra_core.ElectraConfig.from_preset("tiny", **ids)
    assert config.vocab_size == tokenizer.get_vocab_size() <= 150


def test_encoding_is_uncased_and_decodes_back_to_the_text(sentences):
    tokenizer = electra_core.train_tokenizer(sentences, vocab_size=300)
    upper = tokenizer.encode("The QUICK Brown Fox")
    lower = tokenizer.encode("the quick brown fox")
    assert upper.ids == lower.ids
    assert upper.ids[0] == 2 and upper.ids[-1] == 3  # [CLS] ... [SEP]
    assert tokenizer.decode(lower.ids) == "the quick brown fox"


def test_pairs_get_segment_ids(sentences):
    tokenizer = electra_core.train_tokenizer(sentences, vocab_size=300)
    encoding = tokenizer.encode("the early bird", "catches the worm")
    first_sep = encoding.tokens.index("[SEP]")
    assert set(encoding.type_ids[: first_sep + 1]) == {0}
    assert set(encoding.type_ids[first_sep + 1:]) == {1}


def test_training_from_files_gives_the_tokenizer_training_from_an_iterator_gives(tmp_path, sentences):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(sentences) + "\n")
    from_files = electra_core.train_tokenizer(files=[str(corpus)], vocab_size=200)
    from_texts = electra_core.train_tokenizer(sentences, vocab_size=200)
    assert from_files.get_vocab_size() == from_texts.get_vocab_size() == 200
    assert from_files.to_str() == from_texts.to_str()
    assert all("[UNK]" not in from_texts.encode(text).tokens for text in sentences)


def test_the_same_corpus_trains_the_same_tokenizer(sentences):
    """tokenizers' trainer alone numbers "##x" pieces in hash order and broke ties between merges
    differently from one training to the next (huggingface/tokenizers#1794)."""
    trained = {electra_core.train_tokenizer(sentences, vocab_size=400).to_str() for _ in range(6)}
    assert len(trained) == 1


def test_saved_tokenizer_loads_from_s3(s3_bucket, sentences):
    tokenizer = electra_core.train_tokenizer(sentences, vocab_size=200)
    electra_core.save_tokenizer(tokenizer, f"{s3_bucket}/tok")
    from_directory = electra_core.load_tokenizer(f"{s3_bucket}/tok")
    from_file = electra_core.load_tokenizer(f"{s3_bucket}/tok/tokenizer.json")
    text = "all that glitters is not gold"
    assert from_directory.encode(text).ids == from_file.encode(text).ids == tokenizer.encode(text).ids


def test_loading_a_missing_or_broken_tokenizer_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        electra_core.load_tokenizer(str(tmp_path))
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json"):
        electra_core.load_tokenizer(str(tmp_path))


def test_training_needs_texts_or_files_but_not_both(tmp_path):
    with pytest.raises(ValueError):
        electra_core.train_tokenizer()
    with pytest.raises(ValueError):
        electra_core.train_tokenizer(["a"], files=[str(tmp_path / "a.txt")])
