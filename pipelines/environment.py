"""Changing process environment variables for a block only."""

from __future__ import annotations

import contextlib
import os


@contextlib.contextmanager
def scoped_environment(*kept: str, **values: str):
    """Sets `values` for the block; afterwards those and the variables named in `kept` (which the block may
    change, as mlflow.set_tracking_uri does) are as they were before."""
    saved = {key: os.environ.get(key) for key in (*kept, *values)}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
