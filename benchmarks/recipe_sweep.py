"""One point of the recipe search: pretrain one configuration in one process, fine-tune it and a scratch
encoder of the same shape on labeled tasks over several seeds, and append the result to a JSONL file.

The step is the pipeline's: electra_core's model, the pipeline's forward (pipelines.pretrain.step: seeds, masking
draw, padding decision), AdamW, weight-decay rule, clipping and warmup-then-linear-decay schedule, and fine-tuning through the pipeline's own
`train_trial` (pipelines.finetune.loop), the function each Ray Train worker runs. Only Ray and DeepSpeed are
left out, so that many configurations fit on two cores; a sweep winner is then checked through `electra run`.

`--device cuda` runs it on a GPU (benchmarks/gpu_check.sh, with `--data`: a dataset prepared here and carried, since
the GPU machine has no Ray to prepare one).

Budgets are counted in training FLOPs (pipelines.pretrain.metrics.training_flops_per_token times the tokens
of every step, pads included), or given in minutes of this process's wall time; both are recorded.

    python benchmarks/recipe_sweep.py --corpus DIR --task demo=TRAIN,EVAL,accuracy --preset tiny \\
        --set hidden_size=64 --objective electra --flops 2e14 --lr 1e-3 --seeds 3 --labels all,200 \\
        --results benchmarks/results/sweep.jsonl --tag my-try
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from electra_core import ElectraConfig, ElectraPretrainingModel, load_tokenizer, save_tokenizer  # noqa: E402
from pipelines.config import FinetuneConfig, PretrainConfig, parse_override  # noqa: E402
from pipelines.pretrain.step import MicroBatchForward, learning_rate, parameter_groups  # noqa: E402
from pipelines.pretrain.metrics import prior_loss, training_flops_per_token  # noqa: E402


def prepared_dataset(corpus: list[str], vocab_size: int, seq_len: int, cache: Path, packing: dict) -> str:
    """`electra prepare` of the corpus (once per corpus, vocabulary and sequence length)."""
    key = hashlib.sha256(json.dumps([sorted(corpus), vocab_size, seq_len, packing]).encode()).hexdigest()[:12]
    output = cache / f"prepared-{key}"
    if not (output / "_manifest.json").exists():
        from pipelines.config import PrepareConfig
        from pipelines.prepare import run_prepare

        run_prepare(PrepareConfig(inputs=corpus, output=str(output), vocab_size=vocab_size, seq_len=seq_len,
                                  **packing), log=lambda line: print("  " + line, flush=True))
        import ray

        ray.shutdown()
    return str(output)


def load_rows(data: str) -> dict[str, torch.Tensor]:
    import pyarrow.parquet as pq

    manifest = json.loads((Path(data) / "_manifest.json").read_text())
    seq_len = manifest["seq_len"]
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
            "attention_mask": (input_ids != 0).long()}


def model_config(args, data: str) -> ElectraConfig:
    """The shape the pipeline would build: the preset fitted to the dataset, `--set` fields as pretrain.model."""
    from pipelines.pretrain.stage import resolve_model_config

    overrides = dict(parse_override(item, "model") for item in args.set)  # YAML values, as `--set` in the CLI
    objective = "electra" if args.objective == "none" else args.objective
    manifest = json.loads((Path(data) / "_manifest.json").read_text())
    return resolve_model_config(PretrainConfig(data=data, preset=args.preset, objective=objective, model=overrides),
                                manifest)


def warm_start_encoder(model: ElectraPretrainingModel, source: str) -> None:
    """The encoder (embeddings and layers) of a saved model of the same shape, e.g. a masked-LM run's, as the
    starting point of the model the run trains: the discriminator's, or the masked LM's for objective mlm
    (two-stage pretraining, Clark et al. 2020 section 3.2, with an MLM-trained start instead of a generator)."""
    from safetensors.torch import load_file

    state = load_file(str(Path(source) / "model.safetensors"))
    encoder_state = {k.removeprefix("electra."): v for k, v in state.items() if k.startswith("electra.")}
    target = model.discriminator if model.discriminator is not None else model.generator
    target.electra.load_state_dict(encoder_state, strict=True)


def pretrain(config: ElectraConfig, rows: dict, args) -> tuple[ElectraPretrainingModel, dict]:
    """The pipeline's step in one process; returns the model and what the run did."""
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    model = ElectraPretrainingModel(config).train()
    if args.warm_start:
        warm_start_encoder(model, args.warm_start)
    if args.unigram_bias:
        # The generator starts out sampling words at their corpus frequency instead of uniformly.
        counts = torch.bincount(rows["input_ids"].flatten(), minlength=config.vocab_size).double()
        with torch.no_grad():
            model.generator.generator_lm_head.bias.copy_((counts + 1).log() - (counts + 1).log().mean())
    seq_len = rows["input_ids"].shape[1]
    flops_per_step = training_flops_per_token(config, seq_len) * args.batch * seq_len
    steps = args.steps or (max(1, int(args.flops / flops_per_step)) if args.flops else None)
    schedule = PretrainConfig(data="-", name="sweep", preset="tiny", max_steps=steps or 1_000_000,
                              lr=args.lr, warmup_steps=None, global_batch_size=args.batch, micro_batch_size=args.batch,
                              weight_decay=args.weight_decay)
    model.to(device)
    optimizer = torch.optim.AdamW(parameter_groups(model, schedule.weight_decay), lr=args.lr, betas=(0.9, 0.999),
                                  eps=schedule.adam_epsilon, fused=True)
    forward = MicroBatchForward(model, model, args.seed, device)
    bf16 = args.precision == "bf16"
    disc_loss_weight = config.disc_loss_weight  # the target of --disc-warmup's ramp
    count = rows["input_ids"].shape[0]
    order_rng = np.random.default_rng(args.seed)
    order = order_rng.permutation(count)
    cursor, step, records = 0, 0, []
    window = []
    started = time.perf_counter()
    budget_s = args.minutes * 60 if args.minutes else None
    while True:
        elapsed = time.perf_counter() - started
        if steps is not None and step >= steps:
            break
        if budget_s is not None and elapsed >= budget_s:
            break
        if steps is not None:
            lr = learning_rate(schedule, step)
        else:  # a wall-clock budget: the same warmup-then-decay shape over the fraction of time used
            progress = elapsed / budget_s
            warmup = args.warmup
            lr = args.lr * (min(1.0, progress / warmup) if progress < warmup else max(0.0, (1 - progress) / (1 - warmup)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        if cursor + args.batch > count:
            order, cursor = order_rng.permutation(count), 0
        index = torch.from_numpy(order[cursor: cursor + args.batch])
        cursor += args.batch
        batch = {k: v[index] for k, v in rows.items()}
        if args.temperature_from:  # Fast-ELECTRA's curriculum (Dong et al. 2024): smooth samples first, then 1
            progress = step / steps if steps else (time.perf_counter() - started) / budget_s
            config.sampling_temperature = args.temperature_from + (1.0 - args.temperature_from) * min(1.0, progress)
        if args.disc_warmup:  # the discriminator's weight ramps up from 0 while the generator gets past random
            config.disc_loss_weight = disc_loss_weight * min(1.0, step / max(1, args.disc_warmup * (steps or 1)))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            output, _ = forward(batch, step, index=0)
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        if args.clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()
        window.append(output.statistics()[1])
        step += 1
        if step % args.log_every == 0:
            names = output.statistics()[0]
            record = {"step": step, "s": round(time.perf_counter() - started, 1), "lr": lr,
                      **dict(zip(names, torch.stack(window).mean(0).tolist()))}
            if "replaced_fraction" in record:
                record["prior"] = prior_loss(record["replaced_fraction"])
            records.append(record)
            window = []
            print("   " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()),
                  flush=True)
    seconds = time.perf_counter() - started
    return model, {"steps": step, "seconds": round(seconds, 1), "flops": step * flops_per_step,
                   "tokens": step * args.batch * seq_len, "tokens_per_s": step * args.batch * seq_len / seconds,
                   "records": records[-4:]}


# ----------------------------------------------------------------------------------------------------------
# Fine-tuning through the pipeline's own trial function
# ----------------------------------------------------------------------------------------------------------


def labeled_task(spec: str, labels: str, model_dir: str, recipe: FinetuneConfig):
    from pipelines.finetune.data import LabelSpace, read_labeled
    from pipelines.finetune.loop import EncodedTask

    name, files = spec.split("=", 1)
    train_uri, eval_uri, metric = files.split(",")
    train = read_labeled(train_uri, None, None, None)
    evaluation = read_labeled(eval_uri, train.columns[0], train.columns[1], train.columns[2])
    space = LabelSpace.from_training(train, "classification")
    texts, pairs, values = train.texts, train.pairs, space.encode(train)
    if labels != "all":  # the same subset for every configuration
        keep = sorted(random.Random(0).sample(range(len(texts)), int(labels)))
        texts, values = [texts[i] for i in keep], [values[i] for i in keep]
        pairs = None if pairs is None else [pairs[i] for i in keep]
    task = EncodedTask.from_texts(load_tokenizer(model_dir), recipe.max_seq_len, (texts, pairs, values),
                                  (evaluation.texts, evaluation.pairs, space.encode(evaluation)),
                                  "classification", space.num_labels, metric)
    return name, task, space.names


def use_relative_lr() -> None:
    """Fine-tuning's matrices get lr x max(1, RMS / initializer_range), fixed at the start: a pretrained tensor
    grown k times past its initial scale moves, relative to its size, as fast as a fresh one under Adam (the
    trust-ratio idea of LARS / LAMB, You et al. 2019). Fresh weights keep the plain rate."""
    import pipelines.finetune.loop as loop

    plain = loop.layerwise_parameter_groups

    def groups(model, config, num_layers):
        init = getattr(model, "module", model).config.initializer_range  # DDP wraps the model
        result = []
        for group in plain(model, config, num_layers):
            if not group["weight_decay"] and config.weight_decay:
                result.append(group)
                continue
            for param in group["params"]:
                ratio = max(1.0, param.detach().pow(2).mean().sqrt().item() / init)
                result.append({**group, "params": [param], "lr_scale": group["lr_scale"] * ratio})
        return result

    loop.layerwise_parameter_groups = groups


def finetune_values(model_dir: str, start: str, task, names, recipe: FinetuneConfig, seeds: int,
                    reinit_layers: int = 0, rescale: bool = False, device: str = "cpu") -> list[float]:
    from pipelines.finetune.loop import build_classifier, train_trial

    values = []
    for seed in range(seeds):
        model = build_classifier(model_dir, start, seed, task, names, rescale_embeddings=rescale)
        if start == "pretrained" and reinit_layers:  # fresh top layers (Zhang et al. 2021, few-sample fine-tuning)
            for layer in model.electra.encoder.layer[-reinit_layers:]:
                layer.apply(model._init_module)
        result = train_trial(model.to(device), task, recipe, seed, start=start,
                             num_layers=model.config.num_hidden_layers, device=device, keep_state=False)
        values.append(round(result.value, 4))
    return values


def scratch_key(model_dir: str, spec: str, labels: str, recipe: FinetuneConfig, seeds: int) -> str:
    shape = json.loads((Path(model_dir) / "config.json").read_text())
    tokenizer = hashlib.sha256((Path(model_dir) / "tokenizer.json").read_bytes()).hexdigest()
    recipe_fields = {k: getattr(recipe, k) for k in ("lr", "epochs", "batch_size", "layer_decay", "warmup_fraction",
                                                     "weight_decay", "max_seq_len")}
    shape = {k: v for k, v in shape.items() if k not in PRETRAINING_ONLY}
    return hashlib.sha256(json.dumps([shape, tokenizer, spec, labels, recipe_fields, seeds],
                                     sort_keys=True).encode()).hexdigest()[:16]


# Fields of config.json that do not change the fine-tuned encoder's shape.
PRETRAINING_ONLY = ("objective", "generator_size_fraction", "mask_prob", "mask_token_share", "disc_loss_weight",
                    "sampling_temperature", "max_predictions_per_seq", "architectures")


def scratch_model_dir(model_dir: str, changes: list[str], work: Path) -> str:
    """Where the scratch baseline's config.json and tokenizer are read: the model's own directory, or with
    `--scratch-set` a copy whose config.json has those fields changed (the same tokenizer files)."""
    if not changes:
        return model_dir
    import shutil

    target = work / "scratch-config"
    target.mkdir(exist_ok=True)
    for name in Path(model_dir).iterdir():
        if name.suffix in (".json", ".txt") and name.name != "config.json":
            shutil.copy(name, target / name.name)
    config = ElectraConfig.load(str(Path(model_dir) / "config.json"))
    config.replace(**dict(parse_override(item, "model") for item in changes)).save(str(target / "config.json"))
    return str(target)


def read_results(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--corpus", nargs="+", help="text to prepare (with `electra prepare`, cached)")
    source.add_argument("--data", help="a dataset prepared before (a directory with _manifest.json)")
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--task", action="append", required=True, metavar="NAME=TRAIN,EVAL,METRIC")
    parser.add_argument("--labels", default="all", help="comma-separated labeled-set sizes, e.g. all,200")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--objective", default="electra", choices=["electra", "mlm", "none"])
    parser.add_argument("--flops", type=float, default=None)
    parser.add_argument("--minutes", type=float, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=float, default=0.1)
    parser.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping (0: none)")
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--unigram-bias", action="store_true",
                        help="initialise the generator's output bias to the corpus' log unigram frequencies")
    parser.add_argument("--temperature-from", type=float, default=0.0,
                        help="sampling temperature falling linearly from this value to 1 over the run (0: fixed)")
    parser.add_argument("--disc-warmup", type=float, default=0.0,
                        help="ramp the discriminator loss weight from 0 over this fraction of the steps")
    parser.add_argument("--finetune-dropout", type=float, default=None,
                        help="dropout of the fine-tuned model (pretraining may run without)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--ft-lr", type=float, default=3e-3)
    parser.add_argument("--ft-epochs", type=int, default=4)
    parser.add_argument("--ft-batch", type=int, default=32)
    parser.add_argument("--ft-layer-decay", type=float, default=0.8)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--ft-rescale-embeddings", action=argparse.BooleanOptionalAction,
                        default=FinetuneConfig.rescale_embeddings,
                        help="fine-tuning's rescale_embeddings (FinetuneConfig, on by default as in the product): the "
                             "pretrained embedding tables at the initialisation's RMS, a function-preserving change")
    parser.add_argument("--ft-relative-lr", action="store_true",
                        help="scale each matrix's fine-tuning lr by its RMS over the initialisation's")
    parser.add_argument("--ft-reinit-layers", type=int, default=0, help="re-initialise the top N encoder layers")
    parser.add_argument("--cache", default="/tmp/recipe-sweep")
    parser.add_argument("--results", default=str(HERE / "results" / "sweep.jsonl"))
    parser.add_argument("--tag", default="")
    parser.add_argument("--warm-start", default=None, metavar="MODEL_DIR",
                        help="start the encoder from a saved model of the same shape (e.g. a masked-LM run's); "
                             "its budget is not counted here")
    parser.add_argument("--reuse", default=None, metavar="MODEL_DIR",
                        help="fine-tune a discriminator saved by an earlier run instead of pretraining")
    parser.add_argument("--scratch-set", action="append", default=[], metavar="FIELD=VALUE",
                        help="the scratch baseline's config.json fields that differ from the pretrained model's "
                             "(e.g. attention_init=normal: the random weights a user would start from)")
    parser.add_argument("--ft-min-steps", type=int, default=200,
                        help="more epochs for small labeled sets: at least this many optimizer steps")
    args = parser.parse_args()
    if args.objective != "none" and not (args.flops or args.minutes or args.steps or args.reuse):
        parser.error("give a budget: --flops, --minutes or --steps")
    torch.set_num_threads(args.threads)
    if args.ft_relative_lr:
        use_relative_lr()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("electra_core.pretrained").setLevel(logging.ERROR)  # "head newly initialised", each trial

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    if args.data:
        data = str(Path(args.data).resolve())
        corpus = json.loads((Path(data) / "_manifest.json").read_text())["config"].get("inputs") or [data]
    else:
        corpus = [str(Path(c).resolve()) for c in args.corpus]
        data = prepared_dataset(corpus, args.vocab_size, args.seq_len, cache, {})
    config = model_config(args, data)
    work = Path(tempfile.mkdtemp(prefix=f"{args.tag or 'sweep'}-", dir=cache))
    model_dir = args.reuse or str(work / "discriminator")
    record = {"time": time.strftime("%Y-%m-%d %H:%M"), "tag": args.tag, "corpus": [Path(c).name for c in corpus],
              "vocab_size": args.vocab_size, "seq_len": args.seq_len, "preset": args.preset, "set": args.set,
              "objective": args.objective, "precision": args.precision, "threads": args.threads, "device": args.device,
              "lr": args.lr,
              "warmup": args.warmup, "clip": args.clip, "unigram_bias": args.unigram_bias, "weight_decay": args.weight_decay, "disc_warmup": args.disc_warmup, "temperature_from": args.temperature_from, "finetune_dropout": args.finetune_dropout, "warm_start": args.warm_start, "batch": args.batch, "budget": {"flops": args.flops, "minutes": args.minutes, "steps": args.steps}}
    print(f"# {args.tag}: {json.dumps({k: record[k] for k in ('preset', 'set', 'objective', 'precision', 'lr', 'budget')})}",
          flush=True)
    if args.reuse:  # another fine-tuning recipe for a model pretrained before
        record["reused"] = args.reuse
    elif args.objective == "none":  # only the scratch baseline of this shape
        from electra_core import ElectraForPreTraining

        torch.manual_seed(args.seed)
        ElectraForPreTraining(config.replace(objective="electra")).save_pretrained(model_dir)
    else:
        model, run = pretrain(config, load_rows(data), args)
        record["pretrain"] = run
        encoder = model.discriminator if model.discriminator is not None else model.generator
        if args.finetune_dropout is not None:
            encoder.config = encoder.config.replace(hidden_dropout_prob=args.finetune_dropout,
                                                    attention_probs_dropout_prob=args.finetune_dropout)
        encoder.save_pretrained(model_dir)
    if not args.reuse:
        save_tokenizer(load_tokenizer(data), model_dir)
    record["model_dir"] = model_dir
    scratch_dir = scratch_model_dir(model_dir, args.scratch_set, work)
    record["scratch_set"] = args.scratch_set

    base_recipe = recipe = FinetuneConfig(lr=args.ft_lr, epochs=args.ft_epochs, batch_size=args.ft_batch,
                                          layer_decay=args.ft_layer_decay, cpus_per_worker=args.threads)
    record["finetune"] = {"lr": recipe.lr, "epochs": recipe.epochs, "batch_size": recipe.batch_size,
                          "layer_decay": recipe.layer_decay, "seeds": args.seeds, "min_steps": args.ft_min_steps,
                          "reinit_layers": args.ft_reinit_layers, "rescale_embeddings": args.ft_rescale_embeddings,
                          "relative_lr": args.ft_relative_lr}
    results_path = Path(args.results)
    known = {r["key"]: r["values"] for r in read_results(results_path) if r.get("kind") == "scratch"}
    tasks = {}
    for spec in args.task:
        for labels in args.labels.split(","):
            name, task, names = labeled_task(spec, labels, model_dir, recipe)
            steps_per_epoch = math.ceil(len(task.train) / recipe.batch_size)
            recipe = dataclasses.replace(base_recipe, epochs=max(base_recipe.epochs,
                                                                 math.ceil(args.ft_min_steps / steps_per_epoch)))
            key = scratch_key(scratch_dir, spec, labels, recipe, args.seeds)
            if key not in known:
                known[key] = finetune_values(scratch_dir, "scratch", task, names, recipe, args.seeds,
                                             device=args.device)
                with results_path.open("a") as handle:
                    handle.write(json.dumps({"kind": "scratch", "key": key, "task": name, "labels": labels,
                                             "values": known[key]}) + "\n")
            scratch = known[key]
            entry = {"epochs": recipe.epochs, "scratch": scratch, "scratch_mean": round(float(np.mean(scratch)), 4)}
            if args.objective != "none":
                pretrained = finetune_values(model_dir, "pretrained", task, names, recipe, args.seeds,
                                             args.ft_reinit_layers, args.ft_rescale_embeddings, args.device)
                entry.update(pretrained=pretrained, mean=round(float(np.mean(pretrained)), 4),
                             gain=round(float(np.mean(pretrained) - np.mean(scratch)), 4))
            tasks[f"{name}@{labels}"] = entry
            print(f"  {name}@{labels}: " + json.dumps(entry), flush=True)
    record["tasks"] = tasks
    results_path.parent.mkdir(parents=True, exist_ok=True)
    with results_path.open("a") as handle:
        handle.write(json.dumps({"kind": "run", **record}) + "\n")
    print(f"# done: {args.tag}", flush=True)


if __name__ == "__main__":
    main()
