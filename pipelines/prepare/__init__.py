"""`electra prepare`: raw text -> tokenized, packed Parquet shards + _manifest.json (Ray actors or local processes)."""

from pipelines.prepare.manifest import load_committed_dataset, read_manifest
from pipelines.prepare.stage import run_prepare

__all__ = ["load_committed_dataset", "read_manifest", "run_prepare"]
