"""The `electra` command. Thin: each subcommand parses its flags and calls an importable function.

A stage command's flags are its config dataclass's fields (`--field-name`, the field's docstring as help), so
the two never disagree; `--config FILE` reads the stage's section of a pipeline config and `--set key=value`
overrides any field, including those (mappings) that have no flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import types
import typing

from pipelines.errors import InputError

# Flags whose name is not the field's (kept from before flags were derived from the configs).
_FLAG_NAMES = {"inputs": "--input"}
STAGES = {
    "prepare": ("PrepareConfig", "tokenize raw text into Parquet shards (on Ray actors, or local processes without a cluster)"),
    "pretrain": ("PretrainConfig", "pretrain ELECTRA with Ray Train + DeepSpeed ZeRO"),
    "finetune": ("FinetuneConfig", "fine-tune a pretrained discriminator on a labeled task"),
    "export": ("ExportConfig", "export a fine-tuned classifier to ONNX (fp32 or int8) that runs without torch"),
    "serve": ("ServeConfig", "serve a fine-tuned classifier or its ONNX export over HTTP with Ray Serve"),
}
RAY_STAGES = ("prepare", "pretrain", "finetune", "serve")


def stage_config_class(command: str) -> type:
    import pipelines.config

    return getattr(pipelines.config, STAGES[command][0])


def optional_inner(annotation: object) -> object:
    """`X` for `X | None` (or `Optional[X]`); any other annotation, `list[str]` included, as it is."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


def add_config_flags(parser: argparse.ArgumentParser, cls: type) -> list[str]:
    """One flag per field of `cls` (mappings excepted: --set sets them); returns the fields that got one."""
    from pipelines.config import field_docs

    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    names = []
    for field in dataclasses.fields(cls):
        annotation = hints[field.name]
        kind = optional_inner(annotation)
        if typing.get_origin(kind) is dict:
            continue
        flag = _FLAG_NAMES.get(field.name, "--" + field.name.replace("_", "-"))
        help_text = docs.get(field.name, "").replace("%", "%%")
        if kind is bool:
            # --flag / --no-flag, so that a field whose default is true can be turned off as well
            parser.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        elif typing.get_origin(kind) is list:
            parser.add_argument(flag, dest=field.name, nargs="+", metavar="URI", help=help_text)
        else:
            parser.add_argument(flag, dest=field.name, type=kind if kind in (int, float) else str, help=help_text)
        names.append(field.name)
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="electra", description="ELECTRA pretraining pipeline on Ray.")
    commands = parser.add_subparsers(dest="command", required=True)
    for command, (cls_name, summary) in STAGES.items():
        stage = commands.add_parser(command, help=summary, description=summary)
        stage.set_defaults(config_fields=add_config_flags(stage, stage_config_class(command)))
        stage.add_argument("--config", metavar="FILE", help="pipeline config (YAML); this command reads its section")
        stage.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                           help="override a config field, e.g. --set seq_len=256 (repeatable)")
        if command in RAY_STAGES:
            stage.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")

    run = commands.add_parser("run", help="prepare, pretrain, finetune and register as one pipeline; stages whose "
                                          "outputs are up to date are skipped")
    run.add_argument("--config", metavar="FILE", required=True, help="pipeline config (YAML), e.g. configs/demo.yaml")
    run.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="overrides",
                     help="override a field of a section, e.g. --set pretrain.max_steps=2000 (repeatable)")
    run.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")
    return parser


def run_command(args: argparse.Namespace) -> None:
    if args.command == "run":
        from pipelines.run import run_pipeline

        run_pipeline(args.config, args.overrides, address=args.address)
        return
    from pipelines.config import build_stage_config

    flags = {name: getattr(args, name) for name in args.config_fields}
    config = build_stage_config(stage_config_class(args.command), args.command, args.config, flags, args.overrides)
    if args.command == "prepare":
        from pipelines.prepare import run_prepare

        run_prepare(config, address=args.address)
    elif args.command == "pretrain":
        from pipelines.pretrain import run_pretrain

        run_pretrain(config, address=args.address)
    elif args.command == "export":
        from pipelines.deploy.export import run_export

        run_export(config)
    elif args.command == "serve":
        from pipelines.deploy.serve import run_serve

        run_serve(config, address=args.address)
    else:
        from pipelines.finetune import run_finetune

        run_finetune(config, address=args.address)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        run_command(args)
    except InputError as error:
        print(f"electra {args.command}: error: {error}", file=sys.stderr)
        return error.exit_status
    except KeyboardInterrupt:
        # Every stage commits last (a manifest, a checkpoint, a record), so what an interrupted run leaves is
        # either complete or ignored and redone by the next run.
        print(f"electra {args.command}: interrupted; run the same command to continue", file=sys.stderr)
        return 130
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
