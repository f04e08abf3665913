"""The paper's equal-compute comparison in miniature: ELECTRA vs masked-LM pretraining vs no pretraining.

1. `electra prepare` on ../shared/data/reviews (sequence length 128).
2. `electra pretrain` twice, objective electra and objective mlm, same preset and the same wall-clock budget:
   a short calibration run of each measures its tokens/s, and max_steps is set so both get the budget.
3. `electra finetune` of each pretrained encoder and of a randomly initialised one (same shape, same tokenizer)
   on SST-2 (accuracy) and CoLA (Matthews correlation), over several seeds.
4. A table of mean and spread. Expected from the paper: pretraining beats scratch, ELECTRA beats MLM.

    python benchmarks/quality.py [--budget-minutes 5] [--seeds 3] [--preset tiny] [--workers 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
TASKS = {"sst2": "accuracy", "cola": "mcc"}


def quiet(_: str) -> None:
    pass


def pretrain_for_budget(data: str, work: Path, objective: str, args) -> str:
    from electra_core import storage
    from pipelines.config import PretrainConfig
    from pipelines.pretrain import run_pretrain

    common = dict(data=data, storage=str(work / "runs"), preset=args.preset, objective=objective,
                  workers=args.workers, cpus_per_worker=args.cpus_per_worker, global_batch_size=args.batch,
                  micro_batch_size=args.batch // args.workers, seed=0, log_every=10)
    calibration = f"{objective}-calibration"
    run_pretrain(PretrainConfig(name=calibration, max_steps=30, checkpoint_every=1000, **common), log=quiet)
    records = [json.loads(line) for line in
               storage.read_text(str(work / "runs" / calibration / "metrics.jsonl")).splitlines()]
    tokens_per_s = statistics.mean(r["tokens_per_s"] for r in records[1:])
    tokens_per_step = records[-1]["tokens_per_s"] / records[-1]["samples_per_s"] * args.batch
    steps = max(50, int(args.budget_minutes * 60 * tokens_per_s / tokens_per_step))
    print(f"{objective}: {tokens_per_s:,.0f} tokens/s -> {steps} steps in {args.budget_minutes} min", flush=True)
    result = run_pretrain(PretrainConfig(name=objective, max_steps=steps, checkpoint_every=max(100, steps // 4),
                                         **common), log=quiet)
    final = result["final_metrics"]
    summary = f"{objective}: final loss {final['loss']:.3f}, generator accuracy {final['generator_accuracy']:.3f}"
    if "discriminator_loss" in final:  # near its prior, the discriminator has learned nothing from context
        summary += (f", discriminator loss {final['discriminator_loss']:.3f} "
                    f"(prior {final['discriminator_prior_loss']:.3f}), accuracy {final['discriminator_accuracy']:.3f}")
    print(summary, flush=True)
    return str(Path(result["export"].get("discriminator") or result["export"]["generator"]))


def scratch_model(pretrained: str, work: Path) -> str:
    """Same shape and tokenizer as the ELECTRA discriminator, random weights."""
    import torch

    from electra_core import ElectraConfig, ElectraForPreTraining, load_tokenizer, save_tokenizer

    torch.manual_seed(0)
    target = str(work / "scratch")
    ElectraForPreTraining(ElectraConfig.load(pretrained)).save_pretrained(target)
    save_tokenizer(load_tokenizer(pretrained), target)
    return target


def finetune_score(name: str, model: str, task: str, seed: int, work: Path, args) -> float:
    from pipelines.config import FinetuneConfig
    from pipelines.finetune import run_finetune

    output = work / "finetune" / f"{name}-{task}-{seed}"
    config = FinetuneConfig(model=model, train=str(SHARED / task / "train.tsv"), eval=str(SHARED / task / "dev.tsv"),
                            output=str(output), epochs=args.epochs, lr=args.finetune_lr, batch_size=32, seed=seed,
                            metric=TASKS[task], cpus_per_worker=args.cpus_per_worker)
    return run_finetune(config, log=quiet)["metrics"]["value"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-minutes", type=float, default=5.0)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--cpus-per-worker", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--finetune-lr", type=float, default=1e-3)
    args = parser.parse_args()

    from pipelines.config import PrepareConfig
    from pipelines.prepare import run_prepare

    work = Path(tempfile.mkdtemp(prefix="quality-"))
    data = str(work / "prepared")
    run_prepare(PrepareConfig(inputs=[str(SHARED / "reviews")], output=data, seq_len=128), log=quiet)
    models = {"electra": pretrain_for_budget(data, work, "electra", args),
              "mlm": pretrain_for_budget(data, work, "mlm", args)}
    models["scratch"] = scratch_model(models["electra"], work)

    scores = {(name, task): [finetune_score(name, path, task, seed, work, args) for seed in range(args.seeds)]
              for name, path in models.items() for task in TASKS}
    print(f"\n{args.preset} preset, {args.budget_minutes} min of pretraining each on the review corpus, "
          f"{args.seeds} fine-tuning seeds; mean ± standard deviation (work dir {work})")
    print(f"{'':>10} " + " ".join(f"{f'{task} ({metric})':>22}" for task, metric in TASKS.items()))
    for name in models:
        cells = []
        for task in TASKS:
            values = scores[(name, task)]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):>14.4f} ± {spread:.4f}")
        print(f"{name:>10} " + " ".join(f"{cell:>22}" for cell in cells))


if __name__ == "__main__":
    main()
