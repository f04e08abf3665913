"""URIs for everything persisted: a plain path, file://, s3://bucket/prefix or any other fsspec protocol.

s3:// honours AWS_ENDPOINT_URL (boto's own convention), so any S3-compatible store works unchanged.
"""

from __future__ import annotations

import os
import posixpath
import uuid

import fsspec


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for `uri` and the path inside it."""
    return fsspec.core.url_to_fs(uri, **_storage_options(uri))


def _storage_options(uri: str) -> dict:
    # s3fs does not read AWS_ENDPOINT_URL by itself in every version; pass it explicitly.
    if uri.startswith(("s3://", "s3a://")) and os.environ.get("AWS_ENDPOINT_URL"):
        return {"client_kwargs": {"endpoint_url": os.environ["AWS_ENDPOINT_URL"]}}
    return {}


def join(base: str, *parts: str) -> str:
    """Joins path parts onto a URI without touching its scheme."""
    if "://" in base:
        scheme, rest = base.split("://", 1)
        return f"{scheme}://" + posixpath.join(rest, *parts)
    return os.path.join(base, *parts)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def absolute(uri: str | None) -> str | None:
    """A local path made absolute (processes on other workers may run in another directory); URIs unchanged."""
    return os.path.abspath(uri) if uri and "://" not in uri else uri


def delete(uri: str) -> None:
    """Removes a file; one that is already gone is not an error."""
    fs, path = filesystem(uri)
    try:
        fs.rm(path)
    except FileNotFoundError:
        pass


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    try:
        with fs.open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri}: no such file") from None


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_bytes(uri: str, data: bytes) -> None:
    """Writes a whole file so that no reader sees it half-written.

    Object stores publish an object only when its upload completes; a local file is written next to its
    destination under a temporary name and renamed into place.
    """
    fs, path = filesystem(uri)
    parent = posixpath.dirname(path) if "://" in uri else os.path.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    if _is_local(fs):
        temporary = f"{path}.tmp-{uuid.uuid4().hex}"
        with open(temporary, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    else:
        with fs.open(path, "wb") as handle:
            handle.write(data)


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def is_local(uri: str) -> bool:
    """Whether a URI names the local disk (a plain path or file://)."""
    return _is_local(filesystem(uri)[0])


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")
