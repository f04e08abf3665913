"""The `electra` command. Thin: each subcommand parses its flags and calls an importable function."""

from __future__ import annotations

import argparse
import logging
import sys

from pipelines.errors import InputError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="electra", description="ELECTRA pretraining pipeline on Ray.")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="train a tiny ELECTRA on stdlib docstrings in one process and export it")
    demo.add_argument("--output", default="outputs/demo", help="output URI (default: outputs/demo)")
    demo.add_argument("--steps", type=int, default=300, help="optimizer steps (default: 300)")
    demo.add_argument("--seed", type=int, default=0)
    return parser


def run_command(args: argparse.Namespace) -> None:
    if args.command == "demo":
        from pipelines.demo import DemoConfig, run_demo

        if args.steps < 1:
            raise InputError(f"--steps must be at least 1, got {args.steps}")
        run_demo(DemoConfig(output=args.output, steps=args.steps, seed=args.seed))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        run_command(args)
    except InputError as error:
        print(f"electra {args.command}: error: {error}", file=sys.stderr)
        return InputError.exit_status
    return 0


if __name__ == "__main__":
    sys.exit(main())
