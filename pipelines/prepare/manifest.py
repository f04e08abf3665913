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


def damaged_shards(uri: str, manifest: dict[str, Any], checksums: bool = False) -> list[tuple[dict, str]]:
    """(shard, what is wrong) for each shard the manifest lists that is missing or not the size it lists, from
    one listing of the shards directory; with `checksums`, also each whose sha256 differs (every shard read)."""
    fs, path = storage.filesystem(storage.join(uri, "shards"))
    found = fs.find(path, detail=True) if fs.exists(path) else {}
    sizes = {name.rsplit("/", 1)[-1]: info.get("size") for name, info in found.items()}
    damaged = []
    for shard in manifest["shards"]:
        size = sizes.get(shard["path"].rsplit("/", 1)[-1])
        if size is None:
            damaged.append((shard, "missing"))
        elif size != shard["bytes"]:
            damaged.append((shard, f"{size:,} bytes where the manifest lists {shard['bytes']:,}"))
        elif checksums:
            digest = hashlib.sha256(storage.read_bytes(storage.join(uri, shard["path"]))).hexdigest()
            if digest != shard["sha256"]:
                damaged.append((shard, "sha256 differs from the manifest's"))
    return damaged


def verified_dataset(uri: str) -> dict[str, Any]:
    """load_committed_dataset, and every shard present at its listed size, and the tokenizer the manifest
    names: a damaged dataset is an InputError here, on the driver, not a failure of every training worker."""
    manifest = load_committed_dataset(uri)
    damaged = damaged_shards(uri, manifest)
    if damaged:
        shard, problem = damaged[0]
        raise InputError(f"{storage.join(uri, shard['path'])}: {problem} ({len(damaged)} of "
                         f"{len(manifest['shards'])} shards damaged); run electra prepare on it again to rebuild them")
    tokenizer = storage.join(uri, manifest["tokenizer"]["path"])
    try:
        data = storage.read_bytes(tokenizer)
    except FileNotFoundError:
        raise InputError(f"{tokenizer}: missing; run electra prepare on {uri} again") from None
    if hashlib.sha256(data).hexdigest() != manifest["tokenizer"]["sha256"]:
        raise InputError(f"{tokenizer}: not the tokenizer the manifest lists (sha256 differs); run electra prepare "
                         f"on {uri} again, or restore it")
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
