"""The prepared dataset's commit marker, `_manifest.json`: written last, read by every consumer.

A directory without it is not a dataset. It lists every input file with its status and every shard with
its row count and sha256, so a reader needs no directory listing and can verify what it reads.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from electra_core import storage
from pipelines.errors import InputError

MANIFEST_NAME = "_manifest.json"
SCHEMA_VERSION = 1
KIND = "electra-prepared-dataset"


def manifest_uri(output: str) -> str:
    return storage.join(output, MANIFEST_NAME)


def read_manifest(output: str) -> dict[str, Any] | None:
    """The committed manifest of `output`, or None when there is none yet."""
    uri = manifest_uri(output)
    try:
        text = storage.read_text(uri)
    except FileNotFoundError:
        return None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"{uri}: not valid JSON ({error})") from None
    if manifest.get("kind") != KIND or manifest.get("schema_version") != SCHEMA_VERSION:
        raise InputError(f"{uri}: not an electra prepare manifest of schema version {SCHEMA_VERSION}")
    return manifest


def load_committed_dataset(uri: str) -> dict[str, Any]:
    """The manifest of a committed `electra prepare` output; a one-line InputError when there is none."""
    manifest = read_manifest(uri)
    if manifest is None:
        raise InputError(f"{uri}: no {MANIFEST_NAME}; not a committed `electra prepare` output "
                         "(run electra prepare, or wait for it to finish)")
    return manifest


def write_manifest(output: str, manifest: dict[str, Any]) -> None:
    """Writes the manifest in one atomic step (rename locally, a single PUT on object stores)."""
    storage.write_text(manifest_uri(output), json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def fingerprint(manifest: dict[str, Any]) -> str:
    """A short identity of the dataset's content: its shards' checksums and the tokenizer's."""
    digest = hashlib.sha256(manifest["tokenizer"]["sha256"].encode())
    for shard in manifest["shards"]:
        digest.update(shard["sha256"].encode())
    return digest.hexdigest()[:16]
