"""Demo data that every Python installation carries: the standard library's docstrings.

Read with `ast` from the source files, never imported, so it is fast, has no side effects and is the same on
every machine with the same Python. Nothing is downloaded. Two things are derived from it:

- a pretraining corpus: .txt files, one module's docstrings per document (blank lines between documents);
- a labeled task: is a docstring's summary paragraph that of a `function` or of a `class`? (string labels,
  balanced, split into train and eval JSONL). Summaries read differently ("Return the ..." against "A
  mutable set is ..."), so a small model can learn it, and it is a task the pipeline has never seen labels of.
"""

from __future__ import annotations

import ast
import json
import random
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from electra_core import storage

_SKIPPED_PARTS = {"site-packages", "test", "tests", "idlelib", "lib2to3"}
_KINDS = {ast.Module: "module", ast.ClassDef: "class", ast.FunctionDef: "function", ast.AsyncFunctionDef: "function"}
TASK_LABELS = ("function", "class")


def stdlib_docstrings() -> Iterator[tuple[str, str, list[str]]]:
    """(module path, kind, paragraphs) of every module, class and function docstring of the standard library."""
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        if _SKIPPED_PARTS.intersection(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            kind = _KINDS.get(type(node))
            docstring = ast.get_docstring(node) if kind else None
            if docstring:
                paragraphs = [" ".join(p.split()) for p in docstring.split("\n\n")]
                paragraphs = [p for p in paragraphs if len(p) >= 20 and not p.startswith((">>>", ".."))]
                if paragraphs:
                    yield str(path.relative_to(root)), kind, paragraphs


def write_demo_data(root: str, corpus_chars: int = 3_000_000, files: int = 4, eval_fraction: float = 0.2,
                    seed: int = 0, log=print) -> dict[str, str]:
    """Writes the corpus and the task under ROOT (once: existing files are left untouched, so a scheduled
    re-run sees unchanged inputs). Returns the URIs: corpus (a directory), train and eval (JSONL files)."""
    uris = {"corpus": storage.join(root, "corpus"), "train": storage.join(root, "task", "train.jsonl"),
            "eval": storage.join(root, "task", "eval.jsonl")}
    if storage.exists(uris["eval"]):
        return uris
    docstrings = list(stdlib_docstrings())
    # One document per module, one paragraph a line: sequences are packed from consecutive sentences of a
    # document, so documents as long as a module's docs keep padding low (one docstring each: ~65% padding).
    modules: dict[str, list[str]] = {}
    used = 0
    for module, _, paragraphs in docstrings:
        if used >= corpus_chars:
            break
        modules.setdefault(module, []).extend(paragraphs)
        used += sum(map(len, paragraphs))
    documents = ["\n".join(paragraphs) for paragraphs in modules.values()]
    per_file = -(-len(documents) // files)
    for index in range(files):
        chunk = documents[index * per_file: (index + 1) * per_file]
        storage.write_text(storage.join(uris["corpus"], f"docstrings-{index:02d}.txt"), "\n\n".join(chunk) + "\n")

    train, evaluation = summary_task(docstrings, eval_fraction, seed)
    for name, rows in (("train", train), ("eval", evaluation)):
        storage.write_text(uris[name], "".join(json.dumps(row) + "\n" for row in rows))
    log(f"demo data: docstrings of {len(documents):,} stdlib modules ({used / 1e6:.1f} M characters) in {files} files; task "
        f"'function or class?' with {len(train):,} training and {len(evaluation):,} eval summaries -> {root}")
    return uris


def summary_task(docstrings: list[tuple[str, str, list[str]]], eval_fraction: float, seed: int):
    """Balanced function/class examples from docstring summaries (first paragraphs), split train/eval."""
    by_label: dict[str, list[str]] = {label: [] for label in TASK_LABELS}
    seen = set()
    for _, kind, paragraphs in docstrings:
        summary = paragraphs[0]
        if kind in by_label and summary not in seen and len(summary) <= 300:
            seen.add(summary)  # one-line docstrings repeat (overloads, subclasses); keep each text once
            by_label[kind].append(summary)
    rng = random.Random(seed)
    per_label = min(map(len, by_label.values()))
    rows = []
    for label, texts in by_label.items():
        rows += [{"sentence": text, "label": label} for text in rng.sample(texts, per_label)]
    rng.shuffle(rows)
    cut = int(len(rows) * (1 - eval_fraction))
    return rows[:cut], rows[cut:]
