"""Why does a pretrained encoder fine-tune worse than random weights? What a model directory brings to a task.

For each model (a discriminator or generator directory of a pretraining run) and a random encoder of the same
shape, on a labeled task's texts:
- weight scale: the token embeddings' mean norm and the norm of their common mean vector (tied softmax
  embeddings drift together, Gao et al. 2019, "Representation degeneration"), and the RMS of the encoder's
  matrices against their initialisation (0.02);
- the last layer: how much the token vectors differ from each other (std across tokens) and the [CLS] vector
  across inputs; a collapsed discriminator maps every token to nearly one vector;
- attention from [CLS]: its entropy per layer (uniform attention over n tokens is log n);
- frozen features: accuracy of a logistic regression on [CLS], on the mean of the last layer and on the mean of
  the token embeddings.

    python benchmarks/transfer_probe.py --task TRAIN,EVAL MODEL_DIR [MODEL_DIR ...]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from electra_core import ElectraConfig, ElectraForSequenceClassification, load_tokenizer  # noqa: E402
from pipelines.finetune.data import LabelSpace, read_labeled  # noqa: E402
from pipelines.finetune.loop import collate, encode  # noqa: E402


def linear_probe(train: torch.Tensor, labels: torch.Tensor, test: torch.Tensor, test_labels: torch.Tensor) -> float:
    mean, std = train.mean(0), train.std(0) + 1e-6
    train, test = (train - mean) / std, (test - mean) / std
    best = 0.0
    for weight_decay in (1e-3, 1e-2, 1e-1):
        probe = torch.nn.Linear(train.shape[1], int(labels.max()) + 1)
        optimizer = torch.optim.Adam(probe.parameters(), lr=0.01, weight_decay=weight_decay)
        for _ in range(300):
            optimizer.zero_grad()
            F.cross_entropy(probe(train), labels).backward()
            optimizer.step()
        best = max(best, (probe(test).argmax(1) == test_labels).float().mean().item())
    return best


@torch.no_grad()
def features(model, examples) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    cls, mean, embedding_mean = [], [], []
    for start in range(0, len(examples), 128):
        batch = collate(examples[start: start + 128], 0, "cpu")
        hidden = model.electra(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        mask = batch["attention_mask"][..., None].float()
        cls.append(hidden[:, 0])
        mean.append((hidden * mask).sum(1) / mask.sum(1))
        words = model.electra.embeddings.word_embeddings(batch["input_ids"])
        embedding_mean.append((words * mask).sum(1) / mask.sum(1))
    return torch.cat(cls), torch.cat(mean), torch.cat(embedding_mean)


@torch.no_grad()
def cls_attention_entropy(model, batch) -> list[float]:
    electra = model.electra
    hidden = electra.embeddings(batch["input_ids"], batch["token_type_ids"])
    if hasattr(electra, "embeddings_project"):
        hidden = electra.embeddings_project(hidden)
    keep = batch["attention_mask"].bool()[:, None, None, :]
    entropies = []
    for layer in electra.encoder.layer:
        attention = layer.attention.self
        batch_size, length, _ = hidden.shape
        shape = (batch_size, length, attention.num_heads, attention.head_dim)
        query = attention.query(hidden).view(shape).transpose(1, 2)
        key = attention.key(hidden).view(shape).transpose(1, 2)
        weights = ((query @ key.transpose(-1, -2)) * attention.scale).masked_fill(~keep, float("-inf")).softmax(-1)
        from_cls = weights[:, :, 0]
        entropies.append(-(from_cls * from_cls.clamp_min(1e-12).log()).sum(-1).mean().item())
        hidden = layer(hidden, keep)
    return entropies


def describe(name: str, model, train, train_labels, evaluation, eval_labels) -> None:
    model.eval()
    words = model.electra.embeddings.word_embeddings.weight[5:]
    matrices = [p for n, p in model.electra.encoder.named_parameters() if p.dim() == 2]
    rms = torch.cat([p.flatten() for p in matrices]).pow(2).mean().sqrt().item()
    batch = collate(train[:256], 0, "cpu")
    with torch.no_grad():
        hidden = model.electra(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    tokens = hidden[batch["attention_mask"].bool()]
    entropy = cls_attention_entropy(model, batch)
    probes = [linear_probe(a, train_labels, b, eval_labels)
              for a, b in zip(features(model, train), features(model, evaluation))]
    print(f"{name:<40} embedding norm {words.norm(dim=1).mean():.3f} (common mean {words.mean(0).norm():.3f}), "
          f"encoder RMS {rms:.4f}; last layer std across tokens {tokens.std(0).mean():.3f}, [CLS] across inputs "
          f"{hidden[:, 0].std(0).mean():.3f}; [CLS] attention entropy {' '.join(f'{e:.2f}' for e in entropy)}; "
          f"frozen probe cls/mean/embeddings {probes[0]:.3f} / {probes[1]:.3f} / {probes[2]:.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, metavar="TRAIN,EVAL")
    parser.add_argument("--examples", type=int, default=3000, help="training examples the probe uses")
    parser.add_argument("models", nargs="+")
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("electra_core.pretrained").setLevel(logging.ERROR)
    train_uri, eval_uri = args.task.split(",")
    train = read_labeled(train_uri, None, None, None)
    evaluation = read_labeled(eval_uri, *train.columns)
    space = LabelSpace.from_training(train, "classification")
    train_labels = torch.tensor(space.encode(train))[: args.examples]
    eval_labels = torch.tensor(space.encode(evaluation))
    for directory in args.models:
        tokenizer = load_tokenizer(directory)
        tokenizer.enable_truncation(max_length=128)
        tokenizer.no_padding()
        train_examples = encode(tokenizer, train.texts[: args.examples], None)
        eval_examples = encode(tokenizer, evaluation.texts, None)
        config = ElectraConfig.load(directory)
        pretrained = ElectraForSequenceClassification.from_pretrained(directory, num_labels=space.num_labels)
        torch.manual_seed(0)
        scratch = ElectraForSequenceClassification(config.replace(num_labels=space.num_labels))
        for name, model in ((directory, pretrained), ("  random weights, same shape", scratch)):
            describe(name[-40:], model, train_examples, train_labels, eval_examples, eval_labels)


if __name__ == "__main__":
    main()
