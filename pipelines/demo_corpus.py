"""A demo corpus that every Python installation carries: the standard library's docstrings.

Read with `ast` from the source files, never imported, so it is fast, has no side effects and is the same on
every machine with the same Python. Nothing is downloaded.
"""

from __future__ import annotations

import ast
import sysconfig
from collections.abc import Iterator
from pathlib import Path


def stdlib_docstrings(max_chars: int | None = None) -> Iterator[str]:
    """Module, class and function docstrings of the standard library, one paragraph at a time."""
    root = Path(sysconfig.get_paths()["stdlib"])
    emitted = 0
    for path in sorted(root.rglob("*.py")):
        if any(part in {"site-packages", "test", "tests", "idlelib", "lib2to3"} for part in path.parts):
            continue
        for docstring in _docstrings(path):
            for paragraph in docstring.split("\n\n"):
                text = " ".join(paragraph.split())
                if len(text) < 40 or text.startswith((">>>", "..")):
                    continue
                yield text
                emitted += len(text)
                if max_chars is not None and emitted >= max_chars:
                    return


def _docstrings(path: Path) -> Iterator[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            docstring = ast.get_docstring(node)
            if docstring:
                yield docstring
