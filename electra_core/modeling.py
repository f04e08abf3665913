"""ELECTRA in plain PyTorch, read top to bottom.

Embeddings -> self-attention -> layer -> encoder -> ElectraModel -> heads -> task models -> the joint
generator + discriminator used for pretraining. Module and parameter names follow Hugging Face's
`modeling_electra.py`, so a state dict moves between the two with no renaming table.

Where this differs from transformers, for speed and not for results:
- Query, key and value are applied as one matrix multiply, and attention runs through
  `scaled_dot_product_attention` (flash or memory-efficient kernels where the device has them).
- The attention mask is dropped when a batch has no padding (packed pretraining data), which lets the
  fastest attention kernel run.
- In pretraining the generator's vocabulary projection runs only at the masked positions (~15% of tokens);
  over all positions it would be most of the generator's cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from electra_core import masking
from electra_core.config import ElectraConfig
from electra_core.initialization import neighbour_attention_init
from electra_core.pretrained import PreTrainedMixin
from electra_core.storage import exists, join

ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


def activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"ElectraConfig.hidden_act {name!r} is not supported; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class Dropout(nn.Module):
    """nn.Dropout's distribution; on CPU the keep mask comes from torch.rand, about twice as fast as the
    bernoulli_ that nn.Dropout uses there. On GPUs the fused kernel of F.dropout is faster and is used."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        keep = torch.rand_like(x) >= self.p
        return x * keep * (1.0 / (1.0 - self.p))


# ----------------------------------------------------------------------------------------------------------
# Encoder
# ----------------------------------------------------------------------------------------------------------


class ElectraEmbeddings(nn.Module):
    """Token + position + segment embeddings, LayerNorm, dropout (width `embedding_size`)."""

    def __init__(self, config: ElectraConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.embedding_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.embedding_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.embedding_size)
        self.LayerNorm = nn.LayerNorm(config.embedding_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None,
                word_embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """word_embeddings: a (vocab, embedding_size) table to use instead of this module's own."""
        seq_len = input_ids.shape[1]
        positions = torch.arange(seq_len, device=input_ids.device)
        words = self.word_embeddings(input_ids) if word_embeddings is None else F.embedding(input_ids, word_embeddings)
        embeddings = words + self.position_embeddings(positions)
        if token_type_ids is None:
            embeddings = embeddings + self.token_type_embeddings.weight[0]
        else:
            embeddings = embeddings + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(embeddings))

    @torch.no_grad()
    def rescale_(self, target_rms: float) -> float:
        """Scales the token, position and type tables by one factor so that the token table's RMS becomes
        `target_rms`; returns the factor. The LayerNorm over their sum makes this function-preserving (up to
        its epsilon): the model computes the same thing. What changes is plasticity. Pretraining grows the
        tables several times past their initial scale (the tied generator softmax wants large norms), and
        Adam's steps have a fixed size, so a grown table moves that many times slower, relative to itself,
        than a fresh one; a fine-tune then barely adapts the word vectors that a bag-of-words task needs."""
        rms = self.word_embeddings.weight.float().pow(2).mean().sqrt().item()
        factor = target_rms / rms if rms > 0 else 1.0
        for table in (self.word_embeddings, self.position_embeddings, self.token_type_embeddings):
            table.weight.mul_(factor)
        return factor


class ElectraSelfAttention(nn.Module):
    def __init__(self, config: ElectraConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = Dropout(config.attention_probs_dropout_prob)
        self.scale = self.head_dim**-0.5

    def parameters_read_outside_their_modules(self) -> tuple[nn.Parameter, ...]:
        """query, key and value are read here for the fused matmul; their own forward never runs (a sharded
        trainer that gathers parameters per module, such as ZeRO-3, must gather these for this module)."""
        return tuple(p for linear in (self.query, self.key, self.value) for p in (linear.weight, linear.bias))

    def forward(self, hidden_states: torch.Tensor, attention_bias: torch.Tensor | None) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():
            return self.exported_attention(hidden_states, attention_bias)
        batch, seq_len, width = hidden_states.shape
        # One matmul for q, k and v: the separate Linear modules stay for Hugging Face state-dict names.
        qkv_weight = torch.cat((self.query.weight, self.key.weight, self.value.weight))
        qkv_bias = torch.cat((self.query.bias, self.key.bias, self.value.bias))
        qkv = F.linear(hidden_states, qkv_weight, qkv_bias)
        q, k, v = qkv.view(batch, seq_len, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if self.training and self.dropout.p > 0.0 and hidden_states.device.type == "cpu":
            # SDPA falls back to this same math on CPU when dropout is on, but with the slower bernoulli_.
            scores = torch.matmul(q * self.scale, k.transpose(-1, -2))
            if attention_bias is not None:
                scores = scores.masked_fill(~attention_bias, float("-inf"))
            context = torch.matmul(self.dropout(scores.softmax(dim=-1)), v)
        else:
            dropout_p = self.dropout.p if self.training else 0.0
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_bias, dropout_p=dropout_p)
        return context.transpose(1, 2).reshape(batch, seq_len, width)

    def exported_attention(self, hidden_states: torch.Tensor, attention_bias: torch.Tensor | None) -> torch.Tensor:
        """The same attention written as ONNX Runtime's BERT patterns have it: q, k and v from three MatMuls, a
        constant scale, an additive mask and Softmax. SDPA's ONNX decomposition adds a run-time Sqrt, an IsNaN/Where
        guard and a Split/Squeeze per layer; measured on the Small preset, int8, interleaved runs in fresh processes,
        this graph is as fast as Hugging Face Optimum's and faster than SDPA's (README, Deploy)."""
        batch, seq_len, width = hidden_states.shape

        def heads(linear: nn.Linear) -> torch.Tensor:
            return linear(hidden_states).view(batch, seq_len, self.num_heads, self.head_dim).transpose(1, 2)

        scores = torch.matmul(heads(self.query), heads(self.key).transpose(-1, -2)) * self.scale
        if attention_bias is not None:  # [CLS] is never masked, so no row is all masked
            scores = scores + (1.0 - attention_bias.to(scores.dtype)) * -10000.0
        context = torch.matmul(scores.softmax(dim=-1), heads(self.value))
        return context.transpose(1, 2).reshape(batch, seq_len, width)


class ElectraOutput(nn.Module):
    """Projection back to hidden_size, dropout, residual, LayerNorm: closes both the attention block
    (`attention.output`, from hidden_size) and the feed-forward block (`output`, from intermediate_size)."""

    def __init__(self, config: ElectraConfig, input_size: int):
        super().__init__()
        self.dense = nn.Linear(input_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, branch: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(branch)) + residual)


class ElectraAttention(nn.Module):
    def __init__(self, config: ElectraConfig):
        super().__init__()
        self.self = ElectraSelfAttention(config)
        self.output = ElectraOutput(config, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor, attention_bias: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(hidden_states, attention_bias), hidden_states)


class ElectraIntermediate(nn.Module):
    def __init__(self, config: ElectraConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = activation(config.hidden_act)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(hidden_states))


class ElectraLayer(nn.Module):
    """Post-LayerNorm transformer layer, as in BERT and ELECTRA."""

    def __init__(self, config: ElectraConfig):
        super().__init__()
        self.attention = ElectraAttention(config)
        self.intermediate = ElectraIntermediate(config)
        self.output = ElectraOutput(config, config.intermediate_size)

    def forward(self, hidden_states: torch.Tensor, attention_bias: torch.Tensor | None) -> torch.Tensor:
        attended = self.attention(hidden_states, attention_bias)
        return self.output(self.intermediate(attended), attended)


class ElectraEncoder(nn.Module):
    def __init__(self, config: ElectraConfig):
        super().__init__()
        self.layer = nn.ModuleList(ElectraLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, hidden_states: torch.Tensor, attention_bias: torch.Tensor | None) -> torch.Tensor:
        for layer in self.layer:
            hidden_states = layer(hidden_states, attention_bias)
        return hidden_states


def attention_bias_from_mask(attention_mask: torch.Tensor | None, padded: bool | None = None) -> torch.Tensor | None:
    """(batch, seq) 1/0 mask -> boolean (batch, 1, 1, seq) for SDPA; None when nothing is padded.

    Packed pretraining batches rarely pad, and SDPA without a mask can use its fastest kernel. `padded` is that
    decision made by the caller on the host; None reads it from the mask, which syncs with the device.
    """
    if padded is None:
        padded = attention_mask is not None and not bool(attention_mask.all())
    if attention_mask is None or not padded:
        return None
    return attention_mask.bool()[:, None, None, :]


def takes_weight_decay(parameter_name: str) -> bool:
    """Weight decay applies to matrices only, not to biases and LayerNorm weights (BERT and ELECTRA)."""
    return not (parameter_name.endswith("bias") or "LayerNorm" in parameter_name)


class ElectraPreTrainedModel(PreTrainedMixin, nn.Module):
    """Weight initialisation as in transformers, plus save_pretrained/from_pretrained (PreTrainedMixin)."""

    architecture: str = ""

    def __init__(self, config: ElectraConfig):
        super().__init__()
        self.config = config

    def init_weights(self) -> None:
        self.apply(self._init_module)
        if self.config.attention_init == "neighbour":
            for module in self.modules():
                if isinstance(module, ElectraModel):
                    neighbour_attention_init(module, heads=self.config.neighbour_heads,
                                             position_scale=self.config.neighbour_position_scale)
        self.tie_weights()

    def _init_module(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def tie_weights(self) -> None:
        """Models with tied weights re-point them here (after loading or sharing embeddings)."""


class ElectraModel(ElectraPreTrainedModel):
    """The bare encoder: embeddings, an optional projection to hidden_size, transformer layers."""

    architecture = "ElectraModel"

    def __init__(self, config: ElectraConfig):
        super().__init__(config)
        self.embeddings = ElectraEmbeddings(config)
        if config.embedding_size != config.hidden_size:
            self.embeddings_project = nn.Linear(config.embedding_size, config.hidden_size)
        self.encoder = ElectraEncoder(config)
        self.init_weights()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        word_embeddings: torch.Tensor | None = None,
        padded: bool | None = None,
    ) -> torch.Tensor:
        """Returns the last layer's hidden states, (batch, seq, hidden_size). padded: whether attention_mask has
        any 0, when the caller knows it without asking the device (see attention_bias_from_mask)."""
        hidden_states = self.embeddings(input_ids, token_type_ids, word_embeddings)
        if hasattr(self, "embeddings_project"):
            hidden_states = self.embeddings_project(hidden_states)
        return self.encoder(hidden_states, attention_bias_from_mask(attention_mask, padded))


# ----------------------------------------------------------------------------------------------------------
# Heads
# ----------------------------------------------------------------------------------------------------------


class ElectraDiscriminatorPredictions(nn.Module):
    """One logit per token: was it replaced?"""

    def __init__(self, config: ElectraConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = activation(config.hidden_act)
        self.dense_prediction = nn.Linear(config.hidden_size, 1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dense_prediction(self.act(self.dense(hidden_states))).squeeze(-1)


class ElectraGeneratorPredictions(nn.Module):
    """Projects generator states to embedding width before the (tied) vocabulary projection."""

    def __init__(self, config: ElectraConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.embedding_size)
        self.LayerNorm = nn.LayerNorm(config.embedding_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(F.gelu(self.dense(hidden_states)))


def classifier_dropout(config: ElectraConfig) -> float:
    """A task head's dropout: classifier_dropout when set, else hidden_dropout_prob (as transformers)."""
    return config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over every position, skipping labels of -100 (the transformers convention)."""
    return F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1), ignore_index=-100)


class ElectraClassificationHead(nn.Module):
    """[CLS] state -> dense -> gelu -> out_proj, with dropout before each projection (as transformers)."""

    def __init__(self, config: ElectraConfig):
        super().__init__()
        dropout = classifier_dropout(config)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = Dropout(dropout)
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        cls_state = self.dropout(hidden_states[:, 0])
        return self.out_proj(self.dropout(F.gelu(self.dense(cls_state))))


# ----------------------------------------------------------------------------------------------------------
# Task models
# ----------------------------------------------------------------------------------------------------------


@dataclass
class ModelOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None = None


class ElectraForPreTraining(ElectraPreTrainedModel):
    """The discriminator: the encoder plus a replaced-token-detection head. This is the model kept."""

    architecture = "ElectraForPreTraining"

    def __init__(self, config: ElectraConfig):
        super().__init__(config)
        self.electra = ElectraModel(config)
        self.discriminator_predictions = ElectraDiscriminatorPredictions(config)
        self.init_weights()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None) -> ModelOutput:
        """labels: 1 where a token was replaced, 0 where original; the loss covers non-pad tokens."""
        logits = self.discriminator_predictions(self.electra(input_ids, attention_mask, token_type_ids))
        loss = None
        if labels is not None:
            active = torch.ones_like(labels, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
            loss = F.binary_cross_entropy_with_logits(logits[active], labels[active].float())
        return ModelOutput(logits=logits, loss=loss)


class ElectraForMaskedLM(ElectraPreTrainedModel):
    """The generator: the encoder plus a masked-LM head whose output embedding is the input embedding."""

    architecture = "ElectraForMaskedLM"
    tied_weights = {"generator_lm_head.weight": "electra.embeddings.word_embeddings.weight"}

    def __init__(self, config: ElectraConfig):
        super().__init__(config)
        self.electra = ElectraModel(config)
        self.generator_predictions = ElectraGeneratorPredictions(config)
        self.generator_lm_head = nn.Linear(config.embedding_size, config.vocab_size)
        self.init_weights()

    def tie_weights(self) -> None:
        self.generator_lm_head.weight = self.electra.embeddings.word_embeddings.weight

    def vocabulary_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Logits over the vocabulary for any selection of hidden states (..., hidden_size)."""
        return self.generator_lm_head(self.generator_predictions(hidden_states))

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None) -> ModelOutput:
        """labels: the original id at predicted positions, -100 elsewhere (the transformers convention)."""
        logits = self.vocabulary_logits(self.electra(input_ids, attention_mask, token_type_ids))
        loss = None
        if labels is not None:
            loss = token_cross_entropy(logits, labels)
        return ModelOutput(logits=logits, loss=loss)


class ElectraForSequenceClassification(ElectraPreTrainedModel):
    """The encoder plus a classification (or, with num_labels=1, regression) head on [CLS]."""

    architecture = "ElectraForSequenceClassification"

    def __init__(self, config: ElectraConfig):
        super().__init__(config)
        self.electra = ElectraModel(config)
        self.classifier = ElectraClassificationHead(config)
        self.init_weights()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None) -> ModelOutput:
        logits = self.classifier(self.electra(input_ids, attention_mask, token_type_ids))
        loss = None
        if labels is not None:
            loss = self.classification_loss(logits, labels)
        return ModelOutput(logits=logits, loss=loss)

    def classification_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        problem = self.config.problem_type
        if problem is None:
            problem = "regression" if self.config.num_labels == 1 else "single_label_classification"
        if problem == "regression":
            return F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
        if problem == "multi_label_classification":
            return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        return F.cross_entropy(logits, labels)


class ElectraForTokenClassification(ElectraPreTrainedModel):
    """The encoder plus a linear tag classifier on every token (transformers' names: dropout, classifier)."""

    architecture = "ElectraForTokenClassification"

    def __init__(self, config: ElectraConfig):
        super().__init__(config)
        self.electra = ElectraModel(config)
        self.dropout = Dropout(classifier_dropout(config))
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.init_weights()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None) -> ModelOutput:
        """labels: a tag id per token, -100 where no tag is predicted (sub-words after a word's first, specials,
        padding: the transformers convention)."""
        logits = self.classifier(self.dropout(self.electra(input_ids, attention_mask, token_type_ids)))
        loss = None
        if labels is not None:
            loss = token_cross_entropy(logits, labels)
        return ModelOutput(logits=logits, loss=loss)


@dataclass
class QuestionAnsweringOutput:
    start_logits: torch.Tensor
    end_logits: torch.Tensor
    loss: torch.Tensor | None = None


class ElectraForQuestionAnswering(ElectraPreTrainedModel):
    """The encoder plus a start and an end logit per token for extractive question answering (transformers'
    name: qa_outputs, with config.num_labels = 2)."""

    architecture = "ElectraForQuestionAnswering"

    def __init__(self, config: ElectraConfig):
        if config.num_labels != 2:
            raise ValueError(f"ElectraForQuestionAnswering needs num_labels=2 (a start and an end logit), "
                             f"got {config.num_labels}")
        super().__init__(config)
        self.electra = ElectraModel(config)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        self.init_weights()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, start_positions=None,
                end_positions=None) -> QuestionAnsweringOutput:
        """start_positions / end_positions: the answer's first and last token (0, the [CLS] token, for no
        answer); the loss is the mean of the two cross-entropies, as in transformers."""
        logits = self.qa_outputs(self.electra(input_ids, attention_mask, token_type_ids))
        start_logits, end_logits = (part.squeeze(-1).contiguous() for part in logits.split(1, dim=-1))
        loss = None
        if start_positions is not None and end_positions is not None:
            length = start_logits.shape[1]  # positions outside the sequence are ignored, as transformers does
            start = start_positions.clamp(0, length)
            end = end_positions.clamp(0, length)
            loss = (F.cross_entropy(start_logits, start, ignore_index=length)
                    + F.cross_entropy(end_logits, end, ignore_index=length)) / 2
        return QuestionAnsweringOutput(start_logits, end_logits, loss)


# ----------------------------------------------------------------------------------------------------------
# Pretraining: generator + discriminator with shared embeddings
# ----------------------------------------------------------------------------------------------------------


@dataclass
class PretrainingOutput:
    """Loss to optimise and detached statistics for logging (discriminator fields are None for mlm)."""

    loss: torch.Tensor
    generator_loss: torch.Tensor
    generator_accuracy: torch.Tensor
    discriminator_loss: torch.Tensor | None = None
    discriminator_accuracy: torch.Tensor | None = None
    replaced_fraction: torch.Tensor | None = None
    masked_tokens: torch.Tensor | None = None
    """Used prediction slots in the batch (a position drawn twice counts twice, as in the loss)."""

    STATISTICS = ("loss", "generator_loss", "generator_accuracy", "discriminator_loss", "discriminator_accuracy",
                  "replaced_fraction")

    def statistics(self) -> tuple[tuple[str, ...], torch.Tensor]:
        """(names, one detached float tensor of the set statistics), still on the device: summing these over
        micro-batches and reading them once per log line avoids a host sync on every step."""
        names = tuple(name for name in self.STATISTICS if getattr(self, name) is not None)
        return names, torch.stack([getattr(self, name).detach().float() for name in names])

    def metrics(self) -> dict[str, float]:
        """Python floats of every statistic that is set (one device sync)."""
        names, values = self.statistics()
        masked = int(self.masked_tokens.item()) if self.masked_tokens is not None else 0
        return {**dict(zip(names, values.tolist())), "masked_tokens": masked}


class ElectraPretrainingModel(nn.Module):
    """ELECTRA's joint model (objective `electra`) or the BERT-style baseline (objective `mlm`).

    electra: a small generator fills masked positions with sampled tokens, the discriminator labels every
    non-pad token original/replaced; loss = generator MLM loss + disc_loss_weight * discriminator loss.
    Generator and discriminator share the embedding module (token, position, type, LayerNorm), or as
    `embedding_sharing` says.
    mlm: one discriminator-sized ElectraForMaskedLM with the same masking (the reference's BERT objective).
    """

    def __init__(
        self,
        config: ElectraConfig,
        generator_config: ElectraConfig | None = None,
        *,
        generator: ElectraForMaskedLM | None = None,
        discriminator: ElectraForPreTraining | None = None,
    ):
        """Builds fresh models from `config` (the discriminator's shape; the generator's is derived unless
        given), or joins already loaded `generator` and `discriminator`."""
        super().__init__()
        self.config = config
        if config.objective == "mlm":
            self.generator = generator or ElectraForMaskedLM(config)
            self.discriminator = None
            return
        self.generator = generator or ElectraForMaskedLM(generator_config or config.generator_config())
        self.discriminator = discriminator or ElectraForPreTraining(config)
        if config.embedding_sharing == "disentangled":
            # Loaded from an export, the discriminator's table is the sum: the residual is what it adds.
            table = self.generator.electra.embeddings.word_embeddings.weight
            residual = self.discriminator.electra.embeddings.word_embeddings.weight.detach() - table.detach() \
                if discriminator is not None else torch.zeros_like(table)
            self.embedding_residual = nn.Parameter(residual.clone())
        self.share_embeddings()

    def share_embeddings(self) -> None:
        sharing = self.config.embedding_sharing
        if sharing == "encoder":
            self.generator.electra = self.discriminator.electra
        elif sharing == "shared":
            self.generator.electra.embeddings = self.discriminator.electra.embeddings
        elif sharing == "disentangled":  # the shared table is the generator's; the discriminator adds its residual
            self.discriminator.electra.embeddings = self.generator.electra.embeddings
        self.generator.tie_weights()

    def parameters_read_outside_their_modules(self) -> tuple[nn.Parameter, ...]:
        """Disentangled sharing reads the shared token table here (see ElectraSelfAttention's)."""
        if self.config.embedding_sharing != "disentangled":
            return ()
        return (self.generator.electra.embeddings.word_embeddings.weight,)

    def discriminator_word_embeddings(self) -> torch.Tensor | None:
        """The discriminator's token-embedding table when it is not simply the shared module's."""
        if self.config.embedding_sharing != "disentangled":
            return None
        return self.generator.electra.embeddings.word_embeddings.weight.detach() + self.embedding_residual

    def max_predictions(self, seq_len: int) -> int:
        return self.config.max_predictions_per_seq or masking.max_predictions_per_seq(seq_len, self.config.mask_prob)

    def masking_noise(self, input_ids: torch.Tensor, rng: torch.Generator | None = None) -> masking.MaskingNoise:
        """The batch's masking and sampling draws: the training step draws them eagerly and passes them in."""
        return masking.MaskingNoise.draw(input_ids.shape[0], self.max_predictions(input_ids.shape[1]),
                                         input_ids.device, rng)

    def forward(
        self,
        *,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        rng: torch.Generator | None = None,
        noise: masking.MaskingNoise | None = None,
        padded: bool | None = None,
    ) -> PretrainingOutput:
        """noise: the masking draws (else drawn here from `rng`). padded: whether any attention_mask entry is 0,
        known on the host where the batch was assembled; None reads it from the mask (a device sync).

        Given both, the step has fixed shapes and no host round trip, and compiles as one graph
        (torch.compile(fullgraph=True); tests/core/test_compile.py)."""
        config = self.config
        if attention_mask is None:
            attention_mask = (input_ids != config.pad_token_id).long()
        if noise is None:
            noise = self.masking_noise(input_ids, rng)
        slots = masking.select_slots(input_ids, attention_mask, config.special_token_ids, config.mask_prob,
                                     noise.positions.shape[1], draws=noise.positions)
        generator_input = masking.corrupt_slots(input_ids, slots, config.mask_token_id, config.mask_token_share,
                                                draws=noise.corruption)

        # Generator: vocabulary logits only at the prediction slots, a weighted mean over the used ones.
        targets = input_ids.gather(1, slots.positions)
        hidden = self.generator.electra(generator_input, attention_mask, token_type_ids, padded=padded)
        slot_hidden = hidden.gather(1, slots.positions[..., None].expand(-1, -1, hidden.shape[-1]))
        logits = self.generator.vocabulary_logits(slot_hidden)
        masked_tokens = slots.weights.sum()
        losses = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
        generator_loss = (losses * slots.weights.flatten()).sum() / masked_tokens.clamp(min=1.0)
        with torch.no_grad():
            hits = (logits.argmax(-1) == targets).float() * slots.weights
            generator_accuracy = hits.sum() / masked_tokens.clamp(min=1.0)
        if self.discriminator is None:
            return PretrainingOutput(generator_loss, generator_loss, generator_accuracy, masked_tokens=masked_tokens)

        # Discriminator: each selected position gets a token sampled from the generator (no gradient flows
        # through the sample); a sample equal to the original counts as original.
        with torch.no_grad():
            sampled = masking.sample_tokens(logits.detach(), config.sampling_temperature, draws=noise.sampling)
            discriminator_input = slots.write(input_ids, sampled)
            is_replaced = (discriminator_input != input_ids).float()
        disc_logits = self.discriminator.discriminator_predictions(self.discriminator.electra(
            discriminator_input, attention_mask, token_type_ids, self.discriminator_word_embeddings(), padded=padded))
        # Weighted over non-pad tokens: full tensors, no boolean indexing.
        active = attention_mask.float()
        active_count = active.sum().clamp(min=1.0)
        token_losses = F.binary_cross_entropy_with_logits(disc_logits.float(), is_replaced, reduction="none")
        discriminator_loss = (token_losses * active).sum() / active_count
        with torch.no_grad():
            correct = ((disc_logits > 0).float() == is_replaced).float()
            discriminator_accuracy = (correct * active).sum() / active_count
            replaced_fraction = (is_replaced * active).sum() / active_count
        return PretrainingOutput(
            loss=generator_loss + config.disc_loss_weight * discriminator_loss,
            generator_loss=generator_loss,
            generator_accuracy=generator_accuracy,
            discriminator_loss=discriminator_loss,
            discriminator_accuracy=discriminator_accuracy,
            replaced_fraction=replaced_fraction,
            masked_tokens=masked_tokens,
        )

    # --- Hugging Face directories: discriminator/ and generator/, each a complete model ------------------
    def save_pretrained(self, uri: str) -> None:
        """Writes `generator/` and, for electra, `discriminator/`; each loads into transformers on its own."""
        self.generator.save_pretrained(join(uri, "generator"))
        if self.discriminator is None:
            return
        table = self.discriminator_word_embeddings()
        if table is None:
            self.discriminator.save_pretrained(join(uri, "discriminator"))
            return
        # Disentangled sharing: the exported discriminator is a plain one whose table is the sum.
        merged = ElectraForPreTraining(self.config)
        merged.load_state_dict(self.discriminator.state_dict())
        with torch.no_grad():
            merged.electra.embeddings.word_embeddings.weight.copy_(table)
        merged.save_pretrained(join(uri, "discriminator"))

    @classmethod
    def from_pretrained(cls, uri: str, **config_overrides) -> "ElectraPretrainingModel":
        """Reads what save_pretrained wrote, or a published discriminator/generator pair in those folders."""
        generator = ElectraForMaskedLM.from_pretrained(join(uri, "generator"))
        if not exists(join(uri, "discriminator", "config.json")):
            return cls(generator.config.replace(**{"objective": "mlm", **config_overrides}), generator=generator)
        discriminator = ElectraForPreTraining.from_pretrained(join(uri, "discriminator"))
        config = discriminator.config.replace(**{"objective": "electra", **config_overrides})
        return cls(config, generator=generator, discriminator=discriminator)
