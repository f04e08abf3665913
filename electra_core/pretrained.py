"""Hugging Face model directories: config.json + model.safetensors, on any storage URI.

No pickle anywhere: weights are safetensors, configs are JSON.
"""

from __future__ import annotations

import logging

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from electra_core import storage
from electra_core.config import ElectraConfig

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
# Buffers that older transformers versions saved; they hold no learned state.
_IGNORED_KEYS = ("embeddings.position_ids", "embeddings.token_type_ids")


class PreTrainedMixin:
    """save_pretrained / from_pretrained for models with `config`, `architecture` and optional `tied_weights`."""

    config: ElectraConfig
    architecture: str
    tied_weights: dict[str, str] = {}

    def save_pretrained(self, uri: str) -> None:
        """Writes config.json and model.safetensors into the directory `uri`; tied copies are left out."""
        tensors = {
            name: tensor.detach().to("cpu").contiguous()
            for name, tensor in self.state_dict().items()
            if name not in self.tied_weights
        }
        storage.write_bytes(storage.join(uri, WEIGHTS_NAME), save_safetensors(tensors, metadata={"format": "pt"}))
        self.config.save(storage.join(uri, CONFIG_NAME), architecture=self.architecture)

    @classmethod
    def from_pretrained(cls, uri: str, **config_overrides):
        """Builds the model from `uri`'s config.json (plus overrides) and loads its weights.

        Weights of a different head are reported and left out; a head the checkpoint lacks starts from
        random initialisation, with a warning (as transformers does when a discriminator is loaded for
        sequence classification).
        """
        config = ElectraConfig.load(storage.join(uri, CONFIG_NAME))
        if config_overrides:
            config = config.replace(**config_overrides)
        model = cls(config)
        weights_uri = storage.join(uri, WEIGHTS_NAME)
        try:
            tensors = load_safetensors(storage.read_bytes(weights_uri))
        except FileNotFoundError:
            raise FileNotFoundError(f"{weights_uri}: no such file (a model directory needs {WEIGHTS_NAME})") from None
        load_weights(model, tensors, weights_uri)
        return model


def load_weights(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Loads a Hugging Face state dict, adding or removing the `electra.` prefix as the model needs."""
    tensors = {k: v for k, v in tensors.items() if not k.endswith(_IGNORED_KEYS)}
    tensors = _align_prefix(model, tensors)
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except RuntimeError as error:
        raise ValueError(f"{source}: weights do not fit the model in its config.json: {error}") from None
    model.tie_weights()
    missing = [key for key in missing if key not in getattr(model, "tied_weights", {})]
    if missing:
        logger.warning("%s: %d weights not in the checkpoint were newly initialised: %s",
                       source, len(missing), ", ".join(missing[:8]))
    if unexpected:
        logger.info("%s: %d checkpoint weights unused by %s: %s",
                    source, len(unexpected), type(model).__name__, ", ".join(unexpected[:8]))


def _align_prefix(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A task model's weights live under `electra.`; the bare ElectraModel's do not."""
    wants_prefix = hasattr(model, "electra")
    has_prefix = any(key.startswith("electra.") for key in tensors)
    if wants_prefix and not has_prefix:
        return {f"electra.{key}": value for key, value in tensors.items()}
    if not wants_prefix and has_prefix:
        return {key.removeprefix("electra."): value for key, value in tensors.items() if key.startswith("electra.")}
    return tensors
