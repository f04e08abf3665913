"""The `electra` command. Thin: each subcommand parses its flags and calls an importable function."""

from __future__ import annotations

import argparse
import logging
import sys

from pipelines.errors import InputError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="electra", description="ELECTRA pretraining pipeline on Ray.")
    commands = parser.add_subparsers(dest="command", required=True)

    prepare = commands.add_parser("prepare", help="tokenize raw text into Parquet shards with Ray Data")
    prepare.add_argument("--input", nargs="+", dest="inputs", metavar="URI",
                         help="files, directories or globs (.txt, .jsonl, .parquet; .gz/.bz2/.zst)")
    prepare.add_argument("--output", metavar="URI", help="output directory (valid once _manifest.json exists)")
    prepare.add_argument("--tokenizer", metavar="URI", help="tokenizer.json or its directory (default: train one)")
    prepare.add_argument("--vocab-size", type=int, dest="vocab_size")
    prepare.add_argument("--seq-len", type=int, dest="seq_len")
    prepare.add_argument("--documents", choices=["blank_lines", "lines"],
                         help=".txt documents are separated by blank lines (default) or are one per line")
    prepare.add_argument("--workers", type=int, help="tokenizer actors (default: one per CPU)")
    prepare.add_argument("--strict", action="store_const", const=True,
                         help="exit 2 before committing if any input file fails")
    add_common_flags(prepare)

    pretrain = commands.add_parser("pretrain", help="pretrain ELECTRA with Ray Train + DeepSpeed ZeRO")
    pretrain.add_argument("--data", metavar="URI", help="an `electra prepare` output")
    pretrain.add_argument("--storage", metavar="URI", help="where runs live (default: outputs/runs)")
    pretrain.add_argument("--name", help="run name; the same name resumes the run")
    pretrain.add_argument("--preset", choices=["tiny", "small", "base", "large"])
    pretrain.add_argument("--objective", choices=["electra", "mlm"])
    for flag, kind in (("workers", int), ("gpus-per-worker", int), ("cpus-per-worker", int), ("zero-stage", int),
                       ("global-batch-size", int), ("micro-batch-size", int), ("max-steps", int), ("lr", float),
                       ("warmup-steps", int), ("checkpoint-every", int), ("keep-checkpoints", int),
                       ("max-failures", int), ("seed", int)):
        pretrain.add_argument(f"--{flag}", type=kind, dest=flag.replace("-", "_"))
    pretrain.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"])
    pretrain.add_argument("--init-from", metavar="URI", dest="init_from",
                          help="continue from a Hugging Face discriminator/ + generator/ pair")
    add_common_flags(pretrain)

    finetune = commands.add_parser("finetune", help="fine-tune a pretrained discriminator on a labeled task")
    finetune.add_argument("--model", metavar="URI", help="a Hugging Face discriminator directory or a pretrain run")
    finetune.add_argument("--train", metavar="URI", help="training data: .tsv, .csv, .jsonl or .parquet")
    finetune.add_argument("--eval", metavar="URI", help="evaluation data, same format")
    finetune.add_argument("--output", metavar="URI", help="where the classifier, metrics and predictions go")
    finetune.add_argument("--task-type", dest="task_type", choices=["classification", "regression"])
    for flag in ("text-column", "text-pair-column", "label-column", "register", "tracking-uri"):
        finetune.add_argument(f"--{flag}", dest=flag.replace("-", "_"))
    for flag, kind in (("epochs", int), ("lr", float), ("layer-decay", float), ("batch-size", int),
                       ("workers", int), ("seed", int)):
        finetune.add_argument(f"--{flag}", type=kind, dest=flag.replace("-", "_"))
    add_common_flags(finetune)

    run = commands.add_parser("run", help="prepare, pretrain, finetune and register as one pipeline; stages whose "
                                          "outputs are up to date are skipped")
    run.add_argument("--config", metavar="FILE", required=True, help="pipeline config (YAML), e.g. configs/demo.yaml")
    run.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="overrides",
                     help="override a field of a section, e.g. --set pretrain.max_steps=2000 (repeatable)")
    run.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")
    return parser


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="pipeline config (YAML); this command reads its section")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a config field, e.g. --set seq_len=256 (repeatable)")
    parser.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")


def stage_flags(args: argparse.Namespace, names: tuple[str, ...]) -> dict:
    return {name: getattr(args, name) for name in names}


def run_command(args: argparse.Namespace) -> None:
    if args.command == "prepare":
        from pipelines.config import PrepareConfig, build_stage_config
        from pipelines.prepare import run_prepare

        flags = stage_flags(args, ("inputs", "output", "tokenizer", "vocab_size", "seq_len", "documents",
                                   "workers", "strict"))
        config = build_stage_config(PrepareConfig, "prepare", args.config, flags, args.overrides)
        run_prepare(config, address=args.address)
    if args.command == "pretrain":
        from pipelines.config import PretrainConfig, build_stage_config
        from pipelines.pretrain import run_pretrain

        names = ("data", "storage", "name", "preset", "objective", "workers", "gpus_per_worker", "cpus_per_worker",
                 "zero_stage", "precision", "global_batch_size", "micro_batch_size", "max_steps", "lr",
                 "warmup_steps", "checkpoint_every", "keep_checkpoints", "max_failures", "init_from", "seed")
        config = build_stage_config(PretrainConfig, "pretrain", args.config, stage_flags(args, names), args.overrides)
        run_pretrain(config, address=args.address)
    if args.command == "finetune":
        from pipelines.config import FinetuneConfig, build_stage_config
        from pipelines.finetune import run_finetune

        names = ("model", "train", "eval", "output", "task_type", "text_column", "text_pair_column", "label_column",
                 "register", "tracking_uri", "epochs", "lr", "layer_decay", "batch_size", "workers", "seed")
        config = build_stage_config(FinetuneConfig, "finetune", args.config, stage_flags(args, names), args.overrides)
        run_finetune(config, address=args.address)
    if args.command == "run":
        from pipelines.run import run_pipeline

        run_pipeline(args.config, args.overrides, address=args.address)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        run_command(args)
    except InputError as error:
        print(f"electra {args.command}: error: {error}", file=sys.stderr)
        return error.exit_status
    return 0


def console() -> None:
    """The `electra` command. After `prepare` it releases Ray itself: Ray's exit hook first sleeps half a second
    so that workers' last log lines reach the terminal, and prepare's actors print nothing a user needs (on a
    50 MB input that half second is ~5% of the command's time). Other stages keep Ray's exit as it is."""
    argv = sys.argv[1:]
    status = main(argv)
    if argv[:1] == ["prepare"]:
        from pipelines.ray_runtime import release_ray

        release_ray()
    sys.exit(status)


if __name__ == "__main__":
    console()
