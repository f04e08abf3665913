"""Does pretraining pay for itself? ELECTRA, masked-LM pretraining and no pretraining, at equal FLOPs.

For each corpus and its labeled tasks, at each budget, pretrain the same encoder shape with objective electra
and objective mlm for the same number of training FLOPs (counted by pipelines.pretrain.metrics, pads included),
then fine-tune each and a randomly initialised encoder of the same shape (no pretraining) on every task, at
about 200 labels and with all of them, over several seeds. Each point is one run of benchmarks/recipe_sweep.py
(the pipeline's step and fine-tuning function in one process) appended to benchmarks/results/sweep.jsonl.

    corpora and tasks:  reviews (../shared/data) -> SST-2 (accuracy), CoLA (MCC)
                        stdlib docstrings (the demo's)  -> function or class? (accuracy)
                        Linux kernel documentation (--linux-doc DIR, see benchmarks/tasks/linux_doc.py)
                                                        -> which of five topics? (accuracy)

    python benchmarks/quality.py --budgets 1,4 [--seeds 3] [--linux-doc /tmp/linux-doc-task]   # runs, then prints
    python benchmarks/quality.py --show        # prints every recorded run (the recipe search too) and the table

A budget of 1 is ELECTRA's FLOPs in `--unit-steps` steps of the shape at batch 32 (about 4 minutes of one CPU
core in bf16 for the default shape, the demo's budget).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
RESULTS = HERE / "results" / "sweep.jsonl"
DEFAULT_SHAPE = ["hidden_size=64", "embedding_size=64", "intermediate_size=256", "num_attention_heads=2",
                 "generator_size_fraction=0.25"]


def corpora(args) -> dict[str, dict]:
    """name -> corpus paths and task specs (NAME=TRAIN,EVAL,METRIC)."""
    found = {}
    if (SHARED / "reviews").is_dir():
        found["reviews"] = {"corpus": [str(SHARED / "reviews")], "tasks": [
            f"sst2={SHARED}/sst2/train.tsv,{SHARED}/sst2/dev.tsv,accuracy",
            f"cola={SHARED}/cola/train.tsv,{SHARED}/cola/dev.tsv,mcc"]}
    demo = Path(args.cache) / "demo_data"
    if not (demo / "task" / "eval.jsonl").exists():
        sys.path.insert(0, str(HERE.parent))
        from pipelines.demo_data import write_demo_data

        write_demo_data(str(demo))
    found["docstrings"] = {"corpus": [str(demo / "corpus")],
                           "tasks": [f"demo={demo}/task/train.jsonl,{demo}/task/eval.jsonl,accuracy"]}
    if args.linux_doc:
        root = Path(args.linux_doc)
        found["linux-doc"] = {"corpus": [str(root / "corpus")],
                              "tasks": [f"linux={root}/task/train.tsv,{root}/task/dev.tsv,accuracy"]}
    return found


def unit_flops(shape: list[str], steps: int) -> float:
    """ELECTRA's training FLOPs of `steps` steps of the shape at batch 32, sequence length 128 (vocabulary 8,000)."""
    sys.path.insert(0, str(HERE.parent))
    from electra_core import ElectraConfig
    from pipelines.pretrain.metrics import training_flops_per_token

    fields = {k: json.loads(v) if v[:1].isdigit() else v for k, v in (item.split("=", 1) for item in shape)}
    config = ElectraConfig.from_preset("tiny", vocab_size=8000, **fields)
    return training_flops_per_token(config, 128) * 32 * 128 * steps


def run_point(tag: str, corpus: dict, objective: str, flops: float, args) -> None:
    command = [sys.executable, str(HERE / "recipe_sweep.py"), "--tag", tag, "--corpus", *corpus["corpus"],
               "--labels", args.labels, "--seeds", str(args.seeds), "--objective", objective, "--flops", str(flops),
               "--lr", str(args.lr), "--precision", args.precision, "--cache", args.cache, "--results", str(RESULTS),
               "--log-every", "1000", "--ft-rescale-embeddings"]  # fine-tuning as the product does it
    for task in corpus["tasks"]:
        command += ["--task", task]
    for item in args.shape:
        if objective == "mlm" and item.startswith("generator_size_fraction"):
            continue
        command += ["--set", item]
    print(f"$ {tag}", flush=True)
    subprocess.run(command, check=True)


def read_runs() -> list[dict]:
    if not RESULTS.exists():
        return []
    return [r for r in (json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip())
            if r.get("kind") == "run"]


def describe(run: dict) -> str:
    settings = " ".join(s.replace("hidden_size", "h").replace("num_hidden_layers", "L") for s in run["set"])
    extras = [f"{k}={run[k]}" for k in ("disc_warmup", "finetune_dropout") if run.get(k)]
    ft = run["finetune"]
    if run.get("reused"):  # another fine-tuning recipe for a model of an earlier run (named by its directory)
        source = Path(run["reused"]).parent.name.rsplit("-", 1)[0]
        return f"fine-tunes the model of {source} | ft lr={ft['lr']} epochs={ft['epochs']}" + (
            f" reinit={ft['reinit_layers']}" if ft.get("reinit_layers") else "")
    return (f"{run['objective']:7} {settings} lr={run['lr']} {run['precision']} {' '.join(extras)} "
            f"| ft lr={ft['lr']} epochs={ft['epochs']}" + (f" reinit={ft['reinit_layers']}" if ft.get("reinit_layers") else ""))


def show_sweep(runs: list[dict]) -> None:
    print(f"\nEvery recorded run ({RESULTS.relative_to(HERE.parent)}): configuration, budget, pretraining FLOPs, "
          "and per task the mean over seeds, pretrained / scratch, gain")
    for run in runs:
        pretrain = run.get("pretrain", {})
        budget = (f"{pretrain.get('steps', 0):>6} steps {pretrain.get('flops', 0):.2e} FLOPs "
                  f"{pretrain.get('seconds', 0):>5.0f} s") if pretrain else " " * 33
        final = (pretrain.get("records") or [{}])[-1]
        disc = (f" disc {final['discriminator_loss']:.3f}/{final['prior']:.3f}"
                if "discriminator_loss" in final else "")
        cells = "  ".join(f"{name} {t.get('mean', float('nan')):.3f}/{t['scratch_mean']:.3f} {t.get('gain', 0):+.3f}"
                          for name, t in run["tasks"].items())
        print(f"{run['tag']:<28} {budget}{disc}  {describe(run)}\n{'':<28} {cells}")


def show_table(runs: list[dict]) -> None:
    """The equal-FLOPs comparison: mean ± standard deviation over seeds, by budget, task and labeled-set size."""
    table = [r for r in runs if r["tag"].startswith("quality-")]
    if not table:
        return
    print("\nEqual-FLOPs comparison (mean ± std over fine-tuning seeds; metric per task)")
    print(f"{'budget':<10} {'task@labels':<16} {'electra':>16} {'mlm':>16} {'no pretraining':>16}")
    cells: dict[tuple, dict] = {}
    for run in table:
        budget = "x" + re.search(r"-x([0-9.]+)-", run["tag"]).group(1)  # quality-CORPUS-xN-OBJECTIVE
        for task, entry in run["tasks"].items():
            cell = cells.setdefault((budget, task), {})
            cell[run["objective"]] = entry.get("pretrained", [])
            cell["scratch"] = entry["scratch"]

    def fmt(values):
        if not values:
            return f"{'-':>16}"
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):>9.3f} ± {spread:.3f}"

    for (budget, task), cell in sorted(cells.items()):
        print(f"{budget:<10} {task:<16} {fmt(cell.get('electra'))} {fmt(cell.get('mlm'))} {fmt(cell.get('scratch'))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", default="1,4", help="multiples of the unit budget, comma-separated")
    parser.add_argument("--unit-steps", type=int, default=1600)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--labels", default="all,200")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--shape", nargs="+", default=DEFAULT_SHAPE, metavar="FIELD=VALUE")
    parser.add_argument("--linux-doc", default=None, help="output of benchmarks/tasks/linux_doc.py")
    parser.add_argument("--only", nargs="+", default=None, help="corpora to run (reviews, docstrings, linux-doc)")
    parser.add_argument("--cache", default="/tmp/recipe-sweep")
    parser.add_argument("--show", action="store_true", help="print the recorded runs and the table; run nothing")
    args = parser.parse_args()
    if not args.show:
        unit = unit_flops(args.shape, args.unit_steps)
        for name, corpus in corpora(args).items():
            if args.only and name not in args.only:
                continue
            for multiple in args.budgets.split(","):
                for objective in ("electra", "mlm"):
                    run_point(f"quality-{name}-x{multiple}-{objective}", corpus, objective, unit * float(multiple), args)
    runs = read_runs()
    show_sweep(runs)
    show_table(runs)


if __name__ == "__main__":
    main()
