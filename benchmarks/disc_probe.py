"""Does the ELECTRA discriminator learn? One-process probe for issue #5 (ELECTRA vs MLM at equal compute).

Trains ElectraPretrainingModel (electra_core only, plain AdamW with the pipeline's schedule and weight-decay rule,
grad clip 1.0; no Ray/DeepSpeed) on a prepared dataset. Per log window it prints the training losses and the
entropy of the replaced-token base rate (`prior_entropy`: the loss of a discriminator that only knows the prior),
then held-out figures in eval mode with fixed masking: generator loss, discriminator loss, the prior's entropy,
`token_only_loss` (a context-free predictor P(replaced | token id) counted over the window's training batches:
what a discriminator gets from token identity alone), AUC of the discriminator's scores, recall on replaced and
original tokens, and how often a sample equals the original token (observed, and the generator's mean p(original)).
A discriminator that has learned context scores below both prior_entropy and token_only_loss.

    python benchmarks/disc_probe.py --shape tiny --lr 1e-3 --steps 600
    python benchmarks/disc_probe.py --shape mini --lr 5e-4 --steps 300 --log-every 50
    python benchmarks/disc_probe.py --shape narrow --lr 1e-3 --noise unigram   # discriminator alone vs fixed noise
    python benchmarks/disc_probe.py --shape narrow --lr 1e-3 --noise unigram --detector conv   # ... a convolution
    python benchmarks/disc_probe.py --shape narrow --noise unigram --local-attention 0.2,2.0  # local from step 0
    python benchmarks/disc_probe.py --check-sampling   # masking.sample_tokens against torch.multinomial

Shapes: `tiny` is electra_core's preset (hidden 32, 2 layers, embedding 16, FFN 37, 4 heads, generator 1/2);
`mini` is hidden 128, 4 layers, embedding 128, FFN 512, 2 heads, generator 1/4 (generator hidden 32, FFN 128,
1 head); `narrow` is hidden 64, 2 layers, embedding 64, FFN 256, 2 heads, generator 1/2. Any ElectraConfig
field can be overridden with --set FIELD=VALUE. Each run stops after --minutes of wall time (default 3).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from electra_core import masking
from electra_core.config import ElectraConfig
from electra_core.initialization import factors, neighbour_attention_init, set_query_key_product, sinusoids
from electra_core.modeling import (ElectraAttention, ElectraPretrainingModel, ElectraSelfAttention,
                                   takes_weight_decay)

SHAPES = {
    "tiny": dict(preset="tiny"),
    "mini": dict(preset="small", hidden_size=128, num_hidden_layers=4, embedding_size=128, intermediate_size=512,
                 num_attention_heads=2, generator_size_fraction=0.25),
    "narrow": dict(preset="small", hidden_size=64, num_hidden_layers=2, embedding_size=64, intermediate_size=256,
                   num_attention_heads=2, generator_size_fraction=0.5),
}


def bernoulli_entropy(p: float) -> float:
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def load_dataset(data: str, seq_len: int) -> dict[str, torch.Tensor]:
    manifest = json.loads((Path(data) / "_manifest.json").read_text())
    ids, types = [], []
    for shard in manifest["shards"]:
        table = pq.read_table(Path(data) / shard["path"], columns=["input_ids", "token_type_ids"])
        ids += table.column("input_ids").to_pylist()
        types += table.column("token_type_ids").to_pylist()
    input_ids = np.zeros((len(ids), seq_len), dtype=np.int64)
    token_type_ids = np.zeros((len(ids), seq_len), dtype=np.int64)
    for row, (a, b) in enumerate(zip(ids, types)):
        input_ids[row, : len(a)] = a
        token_type_ids[row, : len(b)] = b
    input_ids = torch.from_numpy(input_ids)
    return {"input_ids": input_ids, "token_type_ids": torch.from_numpy(token_type_ids),
            "attention_mask": (input_ids != 0).long(), "vocab_size": manifest.get("config", {}).get("vocab_size")}


def model_config(shape: str, vocab_size: int, **overrides) -> ElectraConfig:
    spec = dict(SHAPES[shape])
    preset = spec.pop("preset")
    return ElectraConfig.from_preset(preset, vocab_size=vocab_size, max_position_embeddings=128,
                                     **{**spec, **overrides})


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Probability that a replaced token scores above an original one (ties count half)."""
    order = scores.argsort()
    ranks = torch.empty_like(scores, dtype=torch.float64)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    positives = labels.bool()
    n_pos, n_neg = positives.sum().item(), (~positives).sum().item()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return ((ranks[positives].sum().item() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


class ConvDetector(torch.nn.Module):
    """Replaced-token detection by one convolution over 5 tokens: locality built in, no attention, no positions
    (`--detector conv`, a reference point for how fast the task can be learned from this data)."""

    def __init__(self, vocab_size: int, width: int):
        super().__init__()
        self.embeddings = torch.nn.Embedding(vocab_size, width)
        self.convolution = torch.nn.Conv1d(width, 2 * width, kernel_size=5, padding=2)
        self.prediction = torch.nn.Linear(2 * width, 1)

    def forward(self, input_ids, attention_mask, token_type_ids):
        states = self.convolution(self.embeddings(input_ids).transpose(1, 2)).transpose(1, 2)
        return self.prediction(F.gelu(states)).squeeze(-1)


class TransformersDetector(torch.nn.Module):
    """transformers' own ElectraForPreTraining of the discriminator's shape (`--detector transformers`)."""

    def __init__(self, config: ElectraConfig):
        super().__init__()
        import transformers

        fields = ("vocab_size", "embedding_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                  "intermediate_size", "max_position_embeddings", "hidden_dropout_prob",
                  "attention_probs_dropout_prob")
        self.model = transformers.ElectraForPreTraining(
            transformers.ElectraConfig(**{name: getattr(config, name) for name in fields}))

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits


@torch.no_grad()
def local_attention_init(model: ElectraPretrainingModel, config: ElectraConfig, position_scale: float,
                         beta: float, value_beta: float = 0.0, alpha: float = 0.3, offsets: bool = False) -> None:
    """`--local-attention SCALE,BETA`: attention that mixes neighbouring tokens from the first step. Position
    embeddings become sinusoids times SCALE (their dot product falls off with distance), and every head's
    query-key product is set to alpha Z + beta I (Z ~ N(0, 1/d); mimetic initialisation, Trockman & Kolter 2023)
    through a rank-k SVD, so that scores follow the positions' similarity. Only the initial values change: the
    checkpoint keeps transformers' layout. 0.2,2.0 on the narrow shape puts 0.33 of each token's attention on
    itself and 0.41 on its neighbours at distance 1-2 (uniform: 0.008 and 0.031). A third value sets the value-
    output product to alpha Z + VALUE_BETA I as well (the paper's other half), so that what attention gathers
    reaches the residual stream at full size from the first step instead of through two 0.02-std matrices.

    `offsets` (`--offset-heads`): each head attends to one neighbour instead: the product's
    `attention_init: neighbour` (electra_core.initialization) with these constants, applied to the generator and
    then the discriminator, whose position table the generator shares."""
    if offsets:
        for encoder in (model.generator.electra, model.discriminator.electra):
            neighbour_attention_init(encoder, alpha=alpha, beta=beta, position_scale=position_scale)
    for module in model.modules():
        if not offsets and isinstance(module, torch.nn.Embedding) \
                and module.num_embeddings == config.max_position_embeddings != config.vocab_size:
            rows, width = module.weight.shape
            module.weight.copy_(sinusoids(rows, width, width) * position_scale)
        if not offsets and isinstance(module, ElectraSelfAttention):
            width = module.query.weight.shape[1]
            for head in range(module.num_heads):
                set_query_key_product(module, head, alpha * torch.randn(width, width) / math.sqrt(width)
                                      + beta * torch.eye(width))
        if isinstance(module, ElectraAttention) and value_beta:
            width = module.self.value.weight.shape[1]
            target = alpha * torch.randn(width, width) / math.sqrt(width) + value_beta * torch.eye(width)
            output, value = factors(target, width)  # output.dense.weight @ value.weight ~ target
            module.output.dense.weight.copy_(output)
            module.self.value.weight.copy_(value)


def discriminator_logits(model: ElectraPretrainingModel, input_ids, attention_mask, token_type_ids) -> torch.Tensor:
    detector = getattr(model, "detector", None)  # --detector: another model in the discriminator's place
    if detector is not None:
        return detector(input_ids, attention_mask, token_type_ids)
    return model.discriminator.discriminator_predictions(
        model.discriminator.electra(input_ids, attention_mask, token_type_ids))


@torch.no_grad()
def corrupted_batch(model: ElectraPretrainingModel, batch: dict, rng: torch.Generator,
                    noise: torch.Tensor | None = None):
    """The discriminator's input and labels exactly as ElectraPretrainingModel.forward builds them; with
    `noise` (log-probabilities over the vocabulary) replacements come from that fixed distribution instead."""
    config = model.config
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    slots = masking.select_slots(input_ids, attention_mask, config.special_token_ids, config.mask_prob,
                                 masking.max_predictions_per_seq(input_ids.shape[1], config.mask_prob), rng)
    generator_input = masking.corrupt_slots(input_ids, slots, config.mask_token_id, config.mask_token_share, rng)
    selected = slots.selected(input_ids.shape[1])
    positions = selected.nonzero(as_tuple=True)
    if noise is None:
        hidden = model.generator.electra(generator_input, attention_mask, batch["token_type_ids"])
        logits = model.generator.vocabulary_logits(hidden[positions])
    else:
        logits = noise.expand(len(positions[0]), -1)
    sampled = masking.sample_tokens(logits, config.sampling_temperature, generator=rng)
    disc_input = input_ids.index_put(positions, sampled)
    return disc_input, (disc_input != input_ids), selected, sampled, input_ids[positions], logits


@torch.no_grad()
def evaluate(model, eval_batches, token_counts, noise=None) -> dict:
    model.eval()
    rng = torch.Generator().manual_seed(1234)
    scores, labels, tokens = [], [], []
    same, selected_total, p_original, gen_nll = 0, 0, 0.0, 0.0
    for batch in eval_batches:
        disc_input, replaced, selected, sampled, targets, logits = corrupted_batch(model, batch, rng, noise)
        active = batch["attention_mask"].bool()
        disc_logits = discriminator_logits(model, disc_input, batch["attention_mask"], batch["token_type_ids"])
        scores.append(disc_logits[active].float())
        labels.append(replaced[active].float())
        tokens.append(disc_input[active])
        same += (sampled == targets).sum().item()
        selected_total += targets.numel()
        p_original += logits.float().softmax(-1).gather(1, targets[:, None]).sum().item()
        gen_nll += F.cross_entropy(logits.float(), targets, reduction="sum").item()
    model.train()
    scores, labels, tokens = torch.cat(scores), torch.cat(labels), torch.cat(tokens)
    prior = labels.mean().item()
    loss = F.binary_cross_entropy_with_logits(scores, labels).item()
    predicted = scores > 0
    # Context-free predictor: P(replaced | token id) from last window's training counts, smoothed to the prior.
    replaced_counts, total_counts = token_counts
    alpha = 2.0
    p_token = ((replaced_counts[tokens] + alpha * prior) / (total_counts[tokens] + alpha)).float()
    token_only = F.binary_cross_entropy(p_token.clamp(1e-6, 1 - 1e-6), labels).item()
    return {"eval_gen_loss": gen_nll / max(1, selected_total), "eval_disc_loss": loss, "eval_prior_entropy": bernoulli_entropy(prior), "token_only_loss": token_only,
            "auc": auc(scores, labels), "recall_replaced": predicted[labels.bool()].float().mean().item(),
            "recall_original": (~predicted[~labels.bool()]).float().mean().item(),
            "sampled_is_original": same / max(1, selected_total), "gen_p_original": p_original / max(1, selected_total)}


def train(args) -> list[dict]:
    torch.set_num_threads(args.threads)
    data = load_dataset(args.data, args.seq_len)
    vocab_size = args.vocab_size or data.pop("vocab_size") or int(data["input_ids"].max()) + 1
    data.pop("vocab_size", None)
    overrides = {}
    if args.dropout is not None:
        overrides.update(hidden_dropout_prob=args.dropout, attention_probs_dropout_prob=args.dropout)
    if args.temperature is not None:
        overrides["sampling_temperature"] = args.temperature
    if args.disc_weight is not None:
        overrides["disc_loss_weight"] = args.disc_weight
    if args.gen_fraction is not None:
        overrides["generator_size_fraction"] = args.gen_fraction
    for item in args.set:
        key, value = item.split("=", 1)
        default = getattr(ElectraConfig, key, 0.0)
        overrides[key] = value if isinstance(default, str) else type(default)(float(value))
    config = model_config(args.shape, vocab_size, **overrides)
    torch.manual_seed(args.seed)
    model = ElectraPretrainingModel(config)
    if args.local_attention:
        local_attention_init(model, config, *args.local_attention, offsets=args.offset_heads)
    if args.detector != "electra":
        if args.noise == "generator":
            raise SystemExit("--detector conv|transformers needs --noise unigram or uniform")
        # Registered as a submodule: its parameters join the optimizer; the unused discriminator gets no grads.
        model.detector = (ConvDetector(vocab_size, config.hidden_size) if args.detector == "conv"
                          else TransformersDetector(config))
    gen_cfg = model.generator.config
    n_params = sum(p.numel() for p in model.parameters())
    print(f"# shape={args.shape} lr={args.lr} steps={args.steps} batch={args.batch} params={n_params:,} "
          f"disc hidden/layers/emb/ffn/heads={config.hidden_size}/{config.num_hidden_layers}/{config.embedding_size}/"
          f"{config.intermediate_size}/{config.num_attention_heads} gen hidden/ffn/heads={gen_cfg.hidden_size}/"
          f"{gen_cfg.intermediate_size}/{gen_cfg.num_attention_heads} temp={config.sampling_temperature} "
          f"lambda={config.disc_loss_weight} dropout={config.hidden_dropout_prob}", flush=True)

    n = data["input_ids"].shape[0]
    eval_rows = torch.arange(n - args.eval_rows, n)
    train_rows = n - args.eval_rows
    eval_batches = [{k: v[eval_rows[i:i + args.batch]] for k, v in data.items()}
                    for i in range(0, args.eval_rows, args.batch)]
    decay = [p for name, p in model.named_parameters() if takes_weight_decay(name)]
    no_decay = [p for name, p in model.named_parameters() if not takes_weight_decay(name)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=args.lr, betas=(0.9, 0.999), eps=1e-6)
    warmup = max(1, int(args.steps * args.warmup))

    def lr_at(step: int) -> float:
        if step < warmup:
            return args.lr * (step + 1) / warmup
        return args.lr * max(0.0, (args.steps - step) / max(1, args.steps - warmup))

    noise = None
    if args.noise != "generator":
        counts = torch.bincount(data["input_ids"][:train_rows][data["input_ids"][:train_rows] > 4].flatten(),
                                minlength=vocab_size).double()
        if args.noise == "uniform":
            counts = (counts > 0).double()
        noise = (counts / counts.sum()).clamp_min(1e-30).log().float()
        print(f"# discriminator only; replacements drawn from the corpus' {args.noise} distribution", flush=True)
    shuffle = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(train_rows, generator=shuffle)
    rng = torch.Generator().manual_seed(args.seed + 1)
    window = {"disc": 0.0, "gen": 0.0, "gen_acc": 0.0, "replaced": 0.0, "count": 0}
    replaced_counts = torch.zeros(vocab_size, dtype=torch.float64)
    total_counts = torch.zeros(vocab_size, dtype=torch.float64)
    records, cursor, started = [], 0, time.time()
    for step in range(args.steps):
        if cursor + args.batch > train_rows:
            order, cursor = torch.randperm(train_rows, generator=shuffle), 0
        rows = order[cursor:cursor + args.batch]
        cursor += args.batch
        batch = {k: v[rows] for k, v in data.items()}
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        if noise is None:
            output = model(**batch, rng=rng)
            loss, disc_loss, replaced_fraction = output.loss, output.discriminator_loss, output.replaced_fraction
            window["gen"] += output.generator_loss.item()
            window["gen_acc"] += output.generator_accuracy.item()
        else:  # discriminator alone against fixed noise: can it learn context at all in this many steps?
            disc_input, replaced, *_ = corrupted_batch(model, batch, rng, noise)
            active = batch["attention_mask"].bool()
            disc_logits = discriminator_logits(model, disc_input, batch["attention_mask"], batch["token_type_ids"])
            labels = replaced[active].float()
            loss = disc_loss = F.binary_cross_entropy_with_logits(disc_logits[active], labels)
            replaced_fraction = labels.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        window["disc"] += disc_loss.item()
        window["replaced"] += replaced_fraction.item()
        window["count"] += 1
        # token-identity statistics: a fresh corruption of this batch (eval mode) for the context-free baseline
        with torch.no_grad():
            stat_rng = torch.Generator().manual_seed(args.seed * 7919 + step)
            model.eval()
            disc_input, replaced, *_ = corrupted_batch(model, batch, stat_rng, noise) if args.token_stats else (None, None)
            model.train()
            if disc_input is not None:
                active = batch["attention_mask"].bool()
                total_counts += torch.bincount(disc_input[active], minlength=vocab_size).double()
                replaced_counts += torch.bincount(disc_input[active], weights=replaced[active].double(),
                                                  minlength=vocab_size)
        done = step + 1
        elapsed = time.time() - started
        out_of_time = args.minutes and elapsed > args.minutes * 60
        if done % args.log_every == 0 or done == args.steps or out_of_time:
            c = window["count"]
            record = {"step": done, "s": round(elapsed), "lr": f"{lr_at(step):.1e}", "gen_loss": window["gen"] / c,
                      "gen_acc": window["gen_acc"] / c, "disc_loss": window["disc"] / c,
                      "prior_entropy": bernoulli_entropy(window["replaced"] / c), "replaced": window["replaced"] / c}
            record.update(evaluate(model, eval_batches, (replaced_counts, total_counts), noise))
            records.append(record)
            print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()),
                  flush=True)
            window = dict.fromkeys(window, 0.0)
            window["count"] = 0
            replaced_counts.zero_()
            total_counts.zero_()
        if out_of_time:
            print(f"# stopped at step {done}: time limit {args.minutes} min", flush=True)
            break
    return records


def check_sampling(args) -> None:
    """sample_tokens against torch.multinomial on fixed logits, and how often a sample equals the argmax."""
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    vocab, rows, draws = 8000, 64, 2000
    for scale in (1.0, 3.0, 8.0):
        logits = torch.randn(rows, vocab, generator=g) * scale
        probs = logits.softmax(-1)
        ours = torch.stack([masking.sample_tokens(logits, generator=torch.Generator().manual_seed(s))
                            for s in range(draws)], 1)
        ref = torch.multinomial(probs, draws, replacement=True, generator=torch.Generator().manual_seed(1))
        tv_ours = tv_ref = 0.0
        for r in range(rows):
            f_ours = torch.bincount(ours[r], minlength=vocab).double() / draws
            f_ref = torch.bincount(ref[r], minlength=vocab).double() / draws
            tv_ours += 0.5 * (f_ours - probs[r].double()).abs().sum().item() / rows
            tv_ref += 0.5 * (f_ref - probs[r].double()).abs().sum().item() / rows
        # p(argmax): expected vs observed frequency of drawing each row's most likely token
        top = probs.argmax(-1)
        expected_top = probs.gather(1, top[:, None]).mean().item()
        observed_ours = (ours == top[:, None]).float().mean().item()
        observed_ref = (ref == top[:, None]).float().mean().item()
        # low-probability tail: share of draws from tokens outside the top 100
        top100 = probs.topk(100, -1).indices
        tail_expected = 1 - probs.gather(1, top100).sum(-1).mean().item()
        tail_ours = 1 - torch.isin(ours, top100).float().mean().item() if rows == 1 else 1 - torch.stack(
            [torch.isin(ours[r], top100[r]).float().mean() for r in range(rows)]).mean().item()
        print(f"logit scale {scale}: TV(sample_tokens, softmax)={tv_ours:.4f} TV(multinomial, softmax)={tv_ref:.4f} "
              f"P(top) expected={expected_top:.4f} sample_tokens={observed_ours:.4f} multinomial={observed_ref:.4f} "
              f"tail>100 expected={tail_expected:.4f} sample_tokens={tail_ours:.4f}", flush=True)
    # temperature: sample_tokens(T) must match softmax(logits / T)
    logits = torch.randn(8, 50, generator=g) * 2
    for temperature in (0.5, 2.0):
        ours = torch.stack([masking.sample_tokens(logits, temperature, generator=torch.Generator().manual_seed(s))
                            for s in range(20000)], 1)
        probs = (logits / temperature).softmax(-1)
        freq = torch.stack([torch.bincount(ours[r], minlength=50).double() / ours.shape[1] for r in range(8)])
        print(f"temperature {temperature}: TV={0.5 * (freq - probs.double()).abs().sum(-1).mean().item():.4f} "
              f"(sampling noise ~{math.sqrt(50 / 20000) / 2:.4f})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="/tmp/w/demo/data")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--warmup", type=float, default=0.1, help="warmup as a fraction of steps")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=None)
    parser.add_argument("--eval-rows", type=int, default=128)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--minutes", type=float, default=3.0, help="stop after this much wall time (0: no limit)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dropout", type=float, default=None)
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--disc-weight", type=float, default=None)
    parser.add_argument("--gen-fraction", type=float, default=None)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override an ElectraConfig field of the shape, e.g. --set hidden_size=64")
    parser.add_argument("--noise", choices=("generator", "unigram", "uniform"), default="generator",
                        help="replacements from the jointly trained generator (ELECTRA) or from fixed noise, "
                             "training the discriminator alone")
    parser.add_argument("--detector", choices=("electra", "transformers", "conv"), default="electra",
                        help="with fixed noise: train this model as the discriminator instead of ours")
    parser.add_argument("--no-token-stats", dest="token_stats", action="store_false",
                        help="skip the context-free baseline (saves one generator forward per step)")
    parser.add_argument("--local-attention", type=lambda s: tuple(float(v) for v in s.split(",")), default=None,
                        metavar="SCALE,BETA[,VALUE_BETA]", help="initialise attention to mix neighbouring tokens "
                        "(sinusoidal positions x SCALE, query-key product ~ BETA I, value-output ~ VALUE_BETA I); "
                        "e.g. 0.2,2.0 or 0.2,2.0,1.0")
    parser.add_argument("--offset-heads", action="store_true",
                        help="with --local-attention: each head attends to one neighbour (next, previous, ...)")
    parser.add_argument("--check-sampling", action="store_true")
    args = parser.parse_args()
    if args.check_sampling:
        check_sampling(args)
    else:
        train(args)


if __name__ == "__main__":
    main()
