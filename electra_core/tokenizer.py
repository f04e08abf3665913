"""An uncased WordPiece tokenizer, as BERT and ELECTRA use, trained and stored with Hugging Face tokenizers.

A saved tokenizer directory holds tokenizer.json (what this project loads) plus vocab.txt,
tokenizer_config.json and special_tokens_map.json, so that `transformers.ElectraTokenizerFast` (and
AutoTokenizer) load the same tokenizer from it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from electra_core import storage

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
# Ids 0..4 in this order, so a trained vocabulary always agrees with ElectraConfig's defaults.
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
TOKENIZER_FILE = "tokenizer.json"


def new_wordpiece_tokenizer(vocab: dict[str, int] | None = None) -> Tokenizer:
    """A tokenizer with BERT's uncased normalisation, pre-tokenisation and decoding (untrained without `vocab`)."""
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token=UNK, max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return tokenizer


def train_tokenizer(
    texts: Iterable[str] | None = None,
    *,
    files: list[str] | None = None,
    vocab_size: int = 30522,
    min_frequency: int = 2,
    limit_alphabet: int = 1000,
) -> Tokenizer:
    """Trains WordPiece on texts or on local text files (one of the two); the same input gives the same
    tokenizer.

    tokenizers' trainer alone does not: it numbers the "##x" pieces in hash-map order as it meets them, and
    those numbers break ties between equally frequent merges (huggingface/tokenizers#1794), so two trainings
    on one corpus differed in about one token in a thousand. Here the alphabet (the `limit_alphabet` most
    frequent characters, ties by character) and its "##x" pieces are numbered before training starts.
    """
    if (texts is None) == (files is None):
        raise ValueError("train_tokenizer needs exactly one of texts or files")
    if texts is not None:
        texts = list(_nonempty(texts))
    tokenizer = new_wordpiece_tokenizer()
    alphabet = _alphabet(tokenizer, texts if texts is not None else _file_lines(files), limit_alphabet)
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        limit_alphabet=len(alphabet),
        initial_alphabet=alphabet,
        # Listed as special tokens only so that the trainer numbers them first; the tokenizer built below
        # from the vocabulary treats them as ordinary pieces.
        special_tokens=[*SPECIAL_TOKENS, *(f"##{char}" for char in alphabet)],
        continuing_subword_prefix="##",
        show_progress=False,
    )
    if files is not None:
        tokenizer.train(files, trainer)
    else:
        tokenizer.train_from_iterator(texts, trainer)
    tokenizer = new_wordpiece_tokenizer(tokenizer.get_vocab())
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    add_post_processor(tokenizer)
    return tokenizer


def _alphabet(tokenizer: Tokenizer, texts: Iterable[str], limit: int) -> list[str]:
    """The `limit` most frequent characters of the normalised texts (what the trainer's words are made of).
    Code points are counted on the raw text, then each distinct character normalised (BERT's normaliser works
    character by character): about 0.01 s a MB, against 0.2 s for normalising the text itself."""
    counts = np.zeros(0x110000, dtype=np.int64)
    chunk: list[str] = []
    held = 0
    for text in texts:
        chunk.append(text)
        held += len(text)
        if held >= 1 << 22:
            counts += _code_point_counts(chunk)
            chunk, held = [], 0
    counts += _code_point_counts(chunk)
    normalized: Counter[str] = Counter()
    for code in np.flatnonzero(counts):
        for char in tokenizer.normalizer.normalize_str(chr(code)):
            normalized[char] += int(counts[code])
    ranked = sorted((char for char in normalized if not char.isspace()), key=lambda char: (-normalized[char], char))
    return ranked[:limit]


def _code_point_counts(texts: list[str]) -> np.ndarray:
    codes = np.frombuffer("".join(texts).encode("utf-32-le", "replace"), dtype="<u4")
    return np.bincount(codes, minlength=0x110000)


def _file_lines(files: list[str]) -> Iterator[str]:
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as handle:
            yield from handle


def _nonempty(texts: Iterable[str]) -> Iterator[str]:
    return (text for text in texts if text and not text.isspace())


def add_post_processor(tokenizer: Tokenizer) -> None:
    """[CLS] A [SEP] and [CLS] A [SEP] B [SEP], with segment id 1 for B, as BERT encodes pairs."""
    cls_id, sep_id = tokenizer.token_to_id(CLS), tokenizer.token_to_id(SEP)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}",
        pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
        special_tokens=[(CLS, cls_id), (SEP, sep_id)],
    )


def special_token_ids(tokenizer: Tokenizer) -> dict[str, int]:
    """The ElectraConfig fields that depend on the vocabulary."""
    ids = {name: tokenizer.token_to_id(token) for name, token in
           (("pad_token_id", PAD), ("cls_token_id", CLS), ("sep_token_id", SEP), ("mask_token_id", MASK))}
    missing = [name for name, value in ids.items() if value is None]
    if missing:
        raise ValueError(f"tokenizer lacks special tokens for {', '.join(missing)}")
    return {**ids, "vocab_size": tokenizer.get_vocab_size()}


def save_tokenizer(tokenizer: Tokenizer, uri: str, model_max_length: int = 512) -> None:
    """Writes tokenizer.json and the transformers side files into the directory `uri`."""
    vocab = tokenizer.get_vocab()
    vocab_lines = "".join(token + "\n" for token, _ in sorted(vocab.items(), key=lambda item: item[1]))
    tokenizer_config = {
        "tokenizer_class": "ElectraTokenizer",
        "do_lower_case": True,
        "strip_accents": None,
        "tokenize_chinese_chars": True,
        "model_max_length": model_max_length,
        "pad_token": PAD, "unk_token": UNK, "cls_token": CLS, "sep_token": SEP, "mask_token": MASK,
    }
    special_tokens_map = {"pad_token": PAD, "unk_token": UNK, "cls_token": CLS, "sep_token": SEP, "mask_token": MASK}
    storage.write_text(storage.join(uri, "vocab.txt"), vocab_lines)
    storage.write_text(storage.join(uri, "tokenizer_config.json"), json.dumps(tokenizer_config, indent=2) + "\n")
    storage.write_text(storage.join(uri, "special_tokens_map.json"), json.dumps(special_tokens_map, indent=2) + "\n")
    storage.write_text(storage.join(uri, TOKENIZER_FILE), tokenizer.to_str())


def load_tokenizer(uri: str) -> Tokenizer:
    """Loads a tokenizer.json file, or the tokenizer.json inside a directory, from any storage URI."""
    if not uri.endswith(".json"):
        uri = storage.join(uri, TOKENIZER_FILE)
    try:
        return Tokenizer.from_str(storage.read_text(uri))
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri}: no such tokenizer file") from None
    except Exception as error:  # tokenizers raises a plain Exception for malformed JSON
        raise ValueError(f"{uri}: not a valid tokenizer.json ({error})") from None
