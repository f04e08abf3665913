"""ElectraConfig: the model's shape (Hugging Face field names) plus the pretraining objective.

The Hugging Face fields are written to config.json under the same names, so a directory saved here loads
with `transformers.ElectraConfig` and the other way round. The pretraining fields travel in the same file;
transformers keeps unknown keys as plain attributes, so they survive a round trip through it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from electra_core import storage

OBJECTIVES = ("electra", "mlm")
EMBEDDING_SHARING = ("shared", "disentangled", "encoder", "none")
ATTENTION_INITS = ("normal", "neighbour")
PROBLEM_TYPES = (None, "regression", "single_label_classification", "multi_label_classification")

# Fields transformers writes that this implementation fixes to one value; kept in config.json so that
# transformers builds the same architecture we do.
_FIXED_HF_FIELDS = {
    "model_type": "electra",
    "position_embedding_type": "absolute",
    "summary_type": "first",
    "summary_use_proj": True,
    "summary_activation": "gelu",
    "summary_last_dropout": 0.1,
    "tie_word_embeddings": True,
    "use_cache": True,
}


@dataclass
class ElectraConfig:
    """Shape of one ELECTRA encoder and, for pretraining, of its generator and objective.

    Defaults are ELECTRA-Small's (Clark et al. 2020, table 6) with the BERT uncased vocabulary.
    """

    # --- Hugging Face ElectraConfig fields -------------------------------------------------------
    vocab_size: int = 30522
    """Number of token ids; must cover every id the tokenizer produces."""
    embedding_size: int = 128
    """Width of the token/position/type embeddings; projected to hidden_size when they differ."""
    hidden_size: int = 256
    """Width of the transformer layers."""
    num_hidden_layers: int = 12
    """Number of transformer layers."""
    num_attention_heads: int = 4
    """Attention heads per layer; must divide hidden_size."""
    intermediate_size: int = 1024
    """Width of the feed-forward block."""
    hidden_act: str = "gelu"
    """Activation of the feed-forward block and discriminator head: gelu, gelu_new, relu, silu."""
    hidden_dropout_prob: float = 0.1
    """Dropout on embeddings and on every residual branch."""
    attention_probs_dropout_prob: float = 0.1
    """Dropout on the attention probabilities."""
    max_position_embeddings: int = 512
    """Longest sequence the position embeddings cover."""
    type_vocab_size: int = 2
    """Number of segment (token type) ids."""
    layer_norm_eps: float = 1e-12
    """LayerNorm epsilon, as in BERT."""
    initializer_range: float = 0.02
    """Standard deviation of the normal initialisation of weights and embeddings."""
    pad_token_id: int = 0
    """Id of [PAD]; its embedding row starts at zero and it is never masked or scored."""
    classifier_dropout: float | None = None
    """Dropout in the sequence-classification head; None means hidden_dropout_prob."""
    num_labels: int = 2
    """Outputs of the sequence-classification head (1 means regression)."""
    id2label: dict[int, str] | None = None
    """Names of the classification labels; None means LABEL_0, LABEL_1, ..."""
    problem_type: str | None = None
    """Loss of the classification head: regression, single_label_classification, or None (inferred)."""

    # --- special tokens the masking must know ------------------------------------------------------
    mask_token_id: int = 4
    """Id of [MASK]."""
    cls_token_id: int = 2
    """Id of [CLS]; never selected for masking."""
    sep_token_id: int = 3
    """Id of [SEP]; never selected for masking."""

    # --- pretraining -----------------------------------------------------------------------------------
    objective: str = "electra"
    """electra: replaced-token detection; mlm: BERT-style masked LM on the discriminator-sized encoder."""
    generator_size_fraction: float = 0.25
    """Generator width (hidden, FFN, heads) as a fraction of the discriminator's; 1/4 Small/Large, 1/3 Base."""
    mask_prob: float = 0.15
    """Share of maskable tokens selected in each sequence (15%, 25% for Large)."""
    mask_token_share: float = 0.85
    """Share of selected positions shown to the generator (or the masked LM) as [MASK]; the rest keep their
    token. 0.85 as the reference implementation, for its ELECTRA and its BERT objective alike."""
    max_predictions_per_seq: int | None = None
    """Prediction slots per sequence; None: the reference's int((mask_prob + 0.005) * sequence length)."""
    embedding_sharing: str = "shared"
    """What generator and discriminator share. shared: the embedding module (token, position and type embeddings,
    LayerNorm), as the paper; disentangled: the same, except that the discriminator's token embeddings are the
    generator's with the gradient stopped plus a residual of its own (DeBERTaV3's gradient-disentangled
    sharing; the export holds their sum); encoder: the whole encoder, the generator being the discriminator with
    a masked-LM head (the paper's tie-all-weights, needs generator_size_fraction 1); none: nothing."""
    disc_loss_weight: float = 50.0
    """Lambda: weight of the discriminator loss against the generator's MLM loss."""
    sampling_temperature: float = 1.0
    """Temperature of the generator's softmax when sampling replacements."""
    attention_init: str = "normal"
    """How fresh weights start. normal: every weight normal(0, initializer_range), as transformers; neighbour:
    sinusoidal positions and heads that attend to one neighbouring token each from the first step (see
    electra_core.initialization: at CPU scale a discriminator started the normal way never learns from context).
    Only initial values differ: the weights keep transformers' layout. Opt-in: a sentence classifier started
    from it has not learnt SST-2 in any configuration tried (benchmarks/results/disc_locality_probe.md)."""
    neighbour_heads: int | None = None
    """With attention_init neighbour: how many heads of each layer start on a neighbour (heads 0 to n-1, offsets
    +1, -1, +2, ...); the others keep the normal initialisation and so start out attending to every token alike,
    which a sentence classifier's [CLS] needs to pool a whole sentence. None: every head."""
    neighbour_position_scale: float = 0.4
    """With attention_init neighbour: the amplitude of the sinusoidal position rows (the token rows start with
    std initializer_range, so a large amplitude makes every token's first vector mostly its position)."""

    def __post_init__(self) -> None:
        if self.id2label is not None:
            self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
            self.num_labels = len(self.id2label)
        positive = ("vocab_size", "embedding_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                    "intermediate_size", "max_position_embeddings", "type_vocab_size", "num_labels")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ElectraConfig.{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"ElectraConfig.hidden_size ({self.hidden_size}) must be a multiple of "
                             f"num_attention_heads ({self.num_attention_heads})")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"ElectraConfig.{name} must be in [0, 1), got {getattr(self, name)!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"ElectraConfig.objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if not 0.0 < self.mask_prob < 1.0:
            raise ValueError(f"ElectraConfig.mask_prob must be in (0, 1), got {self.mask_prob!r}")
        if not 0.0 <= self.mask_token_share <= 1.0:
            raise ValueError(f"ElectraConfig.mask_token_share must be in [0, 1], got {self.mask_token_share!r}")
        if not 0.0 < self.generator_size_fraction <= 1.0:
            raise ValueError("ElectraConfig.generator_size_fraction must be in (0, 1], "
                             f"got {self.generator_size_fraction!r}")
        if self.max_predictions_per_seq is not None and self.max_predictions_per_seq < 1:
            raise ValueError(f"ElectraConfig.max_predictions_per_seq must be positive or None, "
                             f"got {self.max_predictions_per_seq!r}")
        if self.embedding_sharing not in EMBEDDING_SHARING:
            raise ValueError(f"ElectraConfig.embedding_sharing must be one of {EMBEDDING_SHARING}, "
                             f"got {self.embedding_sharing!r}")
        if self.embedding_sharing == "encoder" and self.generator_size_fraction != 1.0:
            raise ValueError("ElectraConfig.embedding_sharing 'encoder' needs generator_size_fraction 1.0, got "
                             f"{self.generator_size_fraction!r}")
        if self.attention_init not in ATTENTION_INITS:
            raise ValueError(f"ElectraConfig.attention_init must be one of {ATTENTION_INITS}, "
                             f"got {self.attention_init!r}")
        if self.neighbour_heads is not None and not 0 <= self.neighbour_heads <= self.num_attention_heads:
            raise ValueError(f"ElectraConfig.neighbour_heads must be None or 0 to num_attention_heads "
                             f"({self.num_attention_heads}), got {self.neighbour_heads!r}")
        if not self.neighbour_position_scale > 0.0:
            raise ValueError(f"ElectraConfig.neighbour_position_scale must be > 0, "
                             f"got {self.neighbour_position_scale!r}")
        if self.sampling_temperature <= 0.0:
            raise ValueError(f"ElectraConfig.sampling_temperature must be > 0, got {self.sampling_temperature!r}")
        if self.problem_type not in PROBLEM_TYPES:
            raise ValueError(f"ElectraConfig.problem_type must be one of {PROBLEM_TYPES}, got {self.problem_type!r}")
        for name in ("pad_token_id", "mask_token_id", "cls_token_id", "sep_token_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ValueError(f"ElectraConfig.{name} ({getattr(self, name)}) is outside the vocabulary "
                                 f"(vocab_size {self.vocab_size})")

    # --- presets -----------------------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "ElectraConfig":
        """The paper's Small/Base/Large shapes, or `tiny` for tests; keyword arguments override fields."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @property
    def special_token_ids(self) -> tuple[int, ...]:
        """Ids that masking never selects: [PAD], [CLS], [SEP] and [MASK]."""
        return (self.pad_token_id, self.cls_token_id, self.sep_token_id, self.mask_token_id)

    def generator_config(self) -> "ElectraConfig":
        """The generator's shape: same depth and embeddings, width scaled by generator_size_fraction."""
        fraction = self.generator_size_fraction
        # Width from the fraction itself: with few heads, rounding the head count (one head at least) and keeping
        # the head width would make e.g. a 2-head model's quarter-size generator half as wide as the discriminator.
        hidden = max(1, round(self.hidden_size * fraction))
        heads = max(1, round(self.num_attention_heads * fraction))
        while hidden % heads:
            heads -= 1
        return dataclasses.replace(
            self,
            hidden_size=hidden,
            num_attention_heads=heads,
            intermediate_size=max(1, round(self.intermediate_size * fraction)),
            neighbour_heads=None if self.neighbour_heads is None else min(self.neighbour_heads, heads),
        )

    def replace(self, **changes: Any) -> "ElectraConfig":
        return dataclasses.replace(self, **changes)

    # --- Hugging Face config.json ----------------------------------------------------------------------
    def to_hf_dict(self, architecture: str | None = None) -> dict[str, Any]:
        """A config.json dict that transformers.ElectraConfig reads to the same architecture."""
        data = dataclasses.asdict(self)
        id2label = self.id2label or {i: f"LABEL_{i}" for i in range(self.num_labels)}
        data.pop("num_labels")
        data["id2label"] = {str(i): label for i, label in id2label.items()}
        data["label2id"] = {label: i for i, label in id2label.items()}
        data.update(_FIXED_HF_FIELDS)
        if architecture:
            data["architectures"] = [architecture]
        return data

    @classmethod
    def from_hf_dict(cls, data: dict[str, Any]) -> "ElectraConfig":
        """Reads a config.json written by us or by transformers; keys this model does not use are ignored."""
        if data.get("model_type", "electra") != "electra":
            raise ValueError(f"config.json has model_type {data.get('model_type')!r}, expected 'electra'")
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        if data.get("id2label") is not None:
            kwargs["id2label"] = {int(k): v for k, v in data["id2label"].items()}
            if all(label == f"LABEL_{i}" for i, label in kwargs["id2label"].items()):
                kwargs["num_labels"] = len(kwargs.pop("id2label"))
        if kwargs.get("pad_token_id") is None:
            kwargs["pad_token_id"] = 0
        return cls(**kwargs)

    def save(self, uri: str, architecture: str | None = None) -> None:
        """Writes config.json at `uri` (a file URI)."""
        storage.write_text(uri, json.dumps(self.to_hf_dict(architecture), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, uri: str) -> "ElectraConfig":
        """Reads a config.json file, or the config.json inside a model directory."""
        if not uri.endswith(".json"):
            uri = storage.join(uri, "config.json")
        try:
            data = json.loads(storage.read_text(uri))
        except json.JSONDecodeError as error:
            raise ValueError(f"{uri}: not valid JSON ({error})") from None
        try:
            return cls.from_hf_dict(data)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{uri}: {error}") from None


PRESETS: dict[str, dict[str, Any]] = {
    # transformers' ElectraModelTester shapes: runs in milliseconds, for tests.
    "tiny": dict(vocab_size=99, embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=37, max_position_embeddings=128, generator_size_fraction=0.5),
    # The CPU-scale shape of the recipe search (benchmarks/recipe_sweep.py, results in benchmarks/results): the
    # best of those measured at minutes of pretraining on 1-2 cores; its vocabulary comes from the dataset.
    "mini": dict(embedding_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=256, max_position_embeddings=512, generator_size_fraction=0.25, mask_prob=0.15),
    "small": dict(embedding_size=128, hidden_size=256, num_hidden_layers=12, num_attention_heads=4,
                  intermediate_size=1024, generator_size_fraction=0.25, mask_prob=0.15),
    "base": dict(embedding_size=768, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, generator_size_fraction=1 / 3, mask_prob=0.15),
    "large": dict(embedding_size=1024, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                  intermediate_size=4096, generator_size_fraction=0.25, mask_prob=0.25),
}
