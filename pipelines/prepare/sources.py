"""Input files: finding them, probing them, cutting them into work units, and reading their text.

Reading never holds more than one bounded block of a file in memory: lines longer than max_line_chars
are cut into pieces, compressed files are streamed, Parquet is read a row group at a time.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import pyarrow.parquet as pq

from electra_core import storage
from pipelines.errors import InputError
from pipelines.prepare.manifest import MANIFEST_NAME

COMPRESSIONS = {".gz": "gzip", ".gzip": "gzip", ".bz2": "bz2", ".zst": "zstd", ".zstd": "zstd", ".xz": "xz"}
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
GLOB_CHARS = set("*?[")
PROBE_BYTES = 8192
READ_BLOCK = 1 << 20
# A new document starts here: emitted between documents by read_split.
DOCUMENT_BREAK = None
# Very long lines are split into sentences so that segments A and B stay meaningful.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_LONG_LINE = 1000


@dataclass
class InputFile:
    """One input file as found at the start of a run."""

    uri: str
    size: int
    fingerprint: str
    format: str
    compression: str | None


@dataclass
class Split:
    """A unit of work: a byte range of an uncompressed text file, a whole compressed file, or row groups."""

    file_index: int
    split_index: int
    uri: str
    format: str
    compression: str | None
    start: int
    end: int  # exclusive; -1 means to the end
    size: int = 0  # input bytes it covers, about (compressed, for a compressed file): for scheduling

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Split":
        return cls(**json.loads(text))


# ----------------------------------------------------------------------------------------------------------
# Finding files
# ----------------------------------------------------------------------------------------------------------


def discover(inputs: list[str], output: str | None = None) -> list[InputFile]:
    """Every file named by `inputs` (files, directories searched recursively, globs), sorted and deduplicated.

    An input that matches nothing, or a file named on its own that cannot be opened, is an InputError before
    any work starts. Files found in a directory or by a glob are described from the listing alone (on object
    storage one request per thousand files, not two per file); one that cannot be read fails alone when it is
    read. Inside directories, hidden files and directories ('.') and files named like commit markers ('_') are
    left out, and so are `output` and any prepared dataset (a directory holding _manifest.json): a run whose
    output lies inside its input would otherwise read its own shards and vocabulary back as text.
    """
    if not inputs:
        raise InputError("no --input given")
    found: dict[str, InputFile] = {}
    inside_output = (output.rstrip("/") + "/") if output else None
    for uri in inputs:
        fs, path = _filesystem(uri)
        for file_path, info in _expand(fs, path, uri).items():
            file_uri = _full_uri(fs, file_path, uri)
            if inside_output and file_uri.startswith(inside_output) and info is not None:
                continue
            if file_uri not in found:
                found[file_uri] = _describe(fs, file_path, file_uri, info)
    return [found[uri] for uri in sorted(found)]


def _filesystem(uri: str):
    try:
        return storage.filesystem(uri)
    except (ValueError, ImportError) as error:
        raise InputError(f"{uri}: cannot open this location ({error})") from None


def _expand(fs, path: str, uri: str) -> dict[str, dict | None]:
    """{path: its listing entry} of the files `uri` names; None for a file named on its own."""
    try:
        if GLOB_CHARS & set(path):
            matches = {p: info for p, info in fs.glob(path, detail=True).items() if info.get("type") == "file"}
            if not matches:
                raise InputError(f"{uri}: no files match")
            return matches
        if fs.isdir(path):
            listing = fs.find(path, detail=True)
            datasets = tuple(p[: -len(MANIFEST_NAME)] for p in listing if p.endswith("/" + MANIFEST_NAME))
            files = {p: info for p, info in listing.items()
                     if not _hidden(p, path) and not (datasets and p.startswith(datasets))}
            if not files:
                raise InputError(f"{uri}: directory holds no input files")
            return files
        if fs.isfile(path):
            return {path: None}
    except PermissionError:
        raise InputError(f"{uri}: permission denied") from None
    raise InputError(f"{uri}: no such file or directory")


def _hidden(file_path: str, root: str) -> bool:
    """Hidden files and directories (.git, .cache) and files named like commit markers (_SUCCESS,
    _manifest.json). Directories starting with '_' are read: Sphinx keeps a documentation tree's text in
    html/_sources (the Linux kernel's documentation is all there)."""
    *directories, name = file_path[len(root.rstrip("/")) + 1:].split("/")
    return name.startswith((".", "_")) or any(part.startswith(".") for part in directories)


def _full_uri(fs, path: str, original: str) -> str:
    return fs.unstrip_protocol(path) if "://" in original else path


def _describe(fs, path: str, uri: str, info: dict | None) -> InputFile:
    if info is None:
        info = _readable_file_info(fs, path, uri)
    version = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or ""
    fingerprint = hashlib.sha256(f"{info.get('size')}:{version}".encode()).hexdigest()[:16]
    compression, file_format = detect_format(path)
    return InputFile(uri=uri, size=int(info.get("size") or 0), fingerprint=fingerprint,
                     format=file_format, compression=compression)


def _readable_file_info(fs, path: str, uri: str) -> dict:
    try:
        info = fs.info(path)
        with fs.open(path, "rb") as handle:
            handle.read(1)
    except PermissionError:
        raise InputError(f"{uri}: permission denied") from None
    except (FileNotFoundError, IsADirectoryError):
        raise InputError(f"{uri}: no such file") from None
    except OSError as error:
        raise InputError(f"{uri}: cannot be read ({error})") from None
    return info


def detect_format(path: str) -> tuple[str | None, str]:
    """(compression, format) from the file name: format is text unless it ends in .jsonl or .parquet."""
    name = path.lower()
    compression = None
    for suffix, kind in COMPRESSIONS.items():
        if name.endswith(suffix):
            compression, name = kind, name[: -len(suffix)]
            break
    for suffix, kind in FORMATS.items():
        if name.endswith(suffix):
            return compression, kind
    return compression, "text"


def probe(file: InputFile | Split) -> tuple[str, str | None] | None:
    """(status, reason) when a file is to be recorded without reading it, judged from its first bytes:
    ('empty', None), ('skipped', 'binary file: ...') or ('failed', a corrupt compressed stream, say).
    None when it looks readable. The driver probes the files it cuts into several splits (all of them must
    agree). A whole file is judged by the worker that reads it, from the same first bytes (reading raises
    NotText, or reads no bytes), so that a tree of many small files is opened once per file, and not on the
    driver."""
    if file.size == 0:
        return "empty", None
    try:
        with _open_binary(file) as handle:
            head = handle.read(PROBE_BYTES)
    except Exception as error:  # any decompression or read error: this file fails, the run goes on
        return "failed", describe_error(error)
    if not head:
        return "empty", None
    if file.format == "parquet":
        return None if head.startswith(b"PAR1") else ("skipped", "binary file: not Parquet (no PAR1 magic)")
    if b"\x00" in head:
        return "skipped", not_text_reason(head)
    return None


NUL_BYTES = "binary file: NUL bytes in the first 8 KiB"
# Text in these encodings has NUL bytes too; its byte-order mark tells it from a binary file.
WIDE_ENCODINGS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe", "UTF-16"),
                  (b"\xfe\xff", "UTF-16"))


def not_text_reason(head: bytes) -> str:
    """Why a file whose first bytes hold NUL is skipped: UTF-16/32 text (said so, with the fix) or binary."""
    for mark, encoding in WIDE_ENCODINGS:
        if head.startswith(mark):
            return f"{encoding} text (byte-order mark), not UTF-8: convert it (iconv -f {encoding} -t UTF-8)"
    return NUL_BYTES


class NotText(ValueError):
    """A file found to be binary while it is read; it is skipped, as probe() would have said."""


def read_whole(file: InputFile, split_bytes: int) -> bool:
    """Whether `file` becomes one split, a whole file that the worker reading it judges (see probe)."""
    return file.format != "parquet" and (file.compression is not None or file.size <= split_bytes)


def describe_error(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _open_binary(file: InputFile | Split):
    fs, path = storage.filesystem(file.uri)
    return fs.open(path, "rb", compression=file.compression)


# ----------------------------------------------------------------------------------------------------------
# Cutting files into splits
# ----------------------------------------------------------------------------------------------------------


def make_splits(file_index: int, file: InputFile, split_bytes: int) -> list[Split]:
    """Byte ranges for uncompressed text and JSONL, row groups for Parquet, one split for compressed files."""
    if file.format == "parquet":
        fs, path = storage.filesystem(file.uri)
        with fs.open(path, "rb") as handle:
            groups = pq.ParquetFile(handle).num_row_groups
        return [Split(file_index, i, file.uri, file.format, None, i, i + 1, file.size // max(1, groups))
                for i in range(groups)]
    if read_whole(file, split_bytes):
        return [Split(file_index, 0, file.uri, file.format, file.compression, 0, -1, file.size)]
    splits = []
    step = even_share(file.size, split_bytes, 1)  # 10 MB at 4: three ranges of 3.3 MB, not 4, 4 and 2
    for index, start in enumerate(range(0, file.size, step)):
        end = min(start + step, file.size)
        splits.append(Split(file_index, index, file.uri, file.format, None, start, end, end - start))
    return splits


def group_splits(per_file: list[list[Split]], split_bytes: int, workers: int) -> list[list[Split]]:
    """Read tasks. Each split of a file cut in several is a task of its own. Files read in one split (small
    ones, compressed ones) are grouped, in order, into tasks of up to `split_bytes`, and into at least
    `workers` tasks when there are that many files, so that a tree of many small files costs a few tasks
    (and a few shards) instead of one each, and every worker still has work."""
    tasks = [[split] for splits in per_file if len(splits) > 1 for split in splits]
    whole_files = [splits[0] for splits in per_file if len(splits) == 1]
    target = even_share(sum(split.size for split in whole_files), split_bytes, workers)
    group: list[Split] = []
    size = 0
    for split in whole_files:
        if split.size >= target:  # a large compressed file is a task of its own
            tasks.append([split])
            continue
        group.append(split)
        size += split.size
        if size >= target:
            tasks.append(group)
            group, size = [], 0
    if group:
        tasks.append(group)
    return tasks


def even_share(total: int, most: int, workers: int) -> int:
    """Bytes per piece when `total` is cut into the fewest pieces of at most `most` bytes whose count is a
    multiple of `workers`: 8.8 MB of small files at 4 MB on 2 workers are 4 tasks of 2.2 MB, not 4, 4 and 0.8
    (one worker idle while the other reads its second task)."""
    pieces = -(-max(1, total) // max(1, most))
    pieces = -(-pieces // max(1, workers)) * max(1, workers)
    return max(1, -(-total // pieces))


# ----------------------------------------------------------------------------------------------------------
# Reading text: sentences and document breaks
# ----------------------------------------------------------------------------------------------------------


class ReadStats:
    """What reading one split saw, beyond its text."""

    def __init__(self) -> None:
        self.documents = 0
        self.bad_records = 0
        self.invalid_utf8 = 0
        self.bytes_read = 0


_replacements = threading.local()


def _count_and_replace(error: UnicodeDecodeError):
    _replacements.count = getattr(_replacements, "count", 0) + 1
    return "\ufffd", error.end


codecs.register_error("electra-count-replace", _count_and_replace)


def _decode(data: bytes, stats: ReadStats) -> str:
    try:
        return data.decode("utf-8")  # the common case, without the counting error handler's set-up
    except UnicodeDecodeError:
        pass
    _replacements.count = 0
    text = data.decode("utf-8", errors="electra-count-replace")
    stats.invalid_utf8 += _replacements.count
    return text


# Sentences of a split come in batches: (sentences, document_ends), where document_ends lists the positions in
# `sentences` after which a document ended (0: before the batch's first sentence). A document may go on
# into the next batch. Batching keeps the per-line Python work to a few list operations.
SentenceBatch = tuple[list[str], list[int]]
_ITEM_BATCH = 4096


def read_split_batches(split: Split, documents: str, text_field: str, max_line_chars: int,
                       stats: ReadStats) -> Iterator[SentenceBatch]:
    """The sentences of a split and where its documents end, in batches (see SentenceBatch)."""
    if split.format == "parquet":
        yield from _batched(_parquet_documents(split, text_field, max_line_chars, stats))
    elif split.format == "jsonl":
        yield from _batched(_jsonl_documents(split, text_field, max_line_chars, stats))
    else:
        yield from _text_batches(split, documents, max_line_chars, stats)


def read_split(split: Split, documents: str, text_field: str, max_line_chars: int,
               stats: ReadStats) -> Iterator[str | None]:
    """Sentences of a split one by one, with DOCUMENT_BREAK (None) between documents."""
    for sentences, document_ends in read_split_batches(split, documents, text_field, max_line_chars, stats):
        position = 0
        for end in document_ends:
            yield from sentences[position:end]
            yield DOCUMENT_BREAK
            position = end
        yield from sentences[position:]


def _batched(items: Iterator[str | None]) -> Iterator[SentenceBatch]:
    sentences: list[str] = []
    document_ends: list[int] = []
    for item in items:
        if item is DOCUMENT_BREAK:
            document_ends.append(len(sentences))
        else:
            sentences.append(item)
            if len(sentences) >= _ITEM_BATCH:
                yield sentences, document_ends
                sentences, document_ends = [], []
    if sentences or document_ends:
        yield sentences, document_ends


def _text_batches(split: Split, documents: str, max_line_chars: int, stats: ReadStats) -> Iterator[SentenceBatch]:
    """Documents are separated by blank lines (documents="blank_lines") or are single lines ("lines");
    lines longer than _LONG_LINE are cut into sentences."""
    one_per_line = documents == "lines"
    in_document = False
    for raw_lines, continues in _bounded_line_batches(split, max_line_chars, stats):
        sentences: list[str] = []
        document_ends: list[int] = []
        for line in _decode(b"\n".join(raw_lines), stats).split("\n"):
            line = line.strip()
            if not line:
                if in_document and not one_per_line:
                    document_ends.append(len(sentences))
                    in_document = False
                continue
            if not in_document:
                stats.documents += 1
                in_document = True
            if len(line) <= _LONG_LINE:  # most lines: appended without a _sentences generator
                sentences.append(line)
            else:
                sentences.extend(_sentences(line))
            if one_per_line and not continues:
                document_ends.append(len(sentences))
                in_document = False
        yield sentences, document_ends


def _jsonl_documents(split: Split, text_field: str, max_line_chars: int, stats: ReadStats) -> Iterator[str | None]:
    for raw_line, continues in _bounded_lines(split, max_line_chars * 4, stats):
        if continues or not raw_line.strip():
            stats.bad_records += bool(continues)  # a record longer than the bound is refused, not split
            continue
        try:
            record = json.loads(_decode(raw_line, stats))
            text = record[text_field]
        except (ValueError, KeyError, TypeError):
            stats.bad_records += 1
            continue
        if not isinstance(text, str):
            stats.bad_records += 1
            continue
        yield from _document(text, max_line_chars, stats)


def _parquet_documents(split: Split, text_field: str, max_line_chars: int, stats: ReadStats) -> Iterator[str | None]:
    fs, path = storage.filesystem(split.uri)
    with fs.open(path, "rb") as handle:
        parquet = pq.ParquetFile(handle)
        if text_field not in parquet.schema_arrow.names:
            raise ValueError(f"no {text_field!r} column (columns: {', '.join(parquet.schema_arrow.names)})")
        for group in range(split.start, split.end):
            stats.bytes_read += parquet.metadata.row_group(group).total_byte_size
            for batch in parquet.iter_batches(batch_size=1024, row_groups=[group], columns=[text_field]):
                for text in batch.column(0).to_pylist():
                    if not isinstance(text, str):
                        stats.bad_records += 1
                        continue
                    yield from _document(text, max_line_chars, stats)


def _document(text: str, max_line_chars: int, stats: ReadStats) -> Iterator[str | None]:
    """One record's text as one document; its lines (cut to max_line_chars) are its sentences."""
    emitted = False
    for line in text.splitlines():
        for start in range(0, len(line), max_line_chars):
            piece = line[start: start + max_line_chars].strip()
            if piece:
                emitted = True
                yield from _sentences(piece)
    if emitted:
        stats.documents += 1
        yield DOCUMENT_BREAK


def _sentences(line: str) -> Iterator[str]:
    if len(line) <= _LONG_LINE:
        yield line
        return
    for sentence in _SENTENCE_END.split(line):
        if sentence:
            yield sentence


def _bounded_lines(split: Split, max_bytes: int, stats: ReadStats) -> Iterator[tuple[bytes, bool]]:
    """(line, continues) one by one; see _bounded_line_batches."""
    for lines, continues in _bounded_line_batches(split, max_bytes, stats):
        for line in lines:
            yield line, continues


def _bounded_line_batches(split: Split, max_bytes: int, stats: ReadStats) -> Iterator[tuple[list[bytes], bool]]:
    """(lines, continues) for the lines that start inside the split, a read block's worth at a time. A line
    longer than max_bytes comes in pieces, each alone in a batch with `continues` set, its rest in the next
    batch. Pieces end at whitespace where there is one, and never inside a UTF-8 character, so memory stays
    bounded by max_bytes plus one read block."""
    fs, path = storage.filesystem(split.uri)
    with fs.open(path, "rb", compression=split.compression) as handle:
        line_start = split.start
        if split.start > 0:
            # A line belongs to the split in which it starts: skip the one in progress at `start`.
            handle.seek(split.start - 1)
            line_start = split.start - 1 + _skip_past_newline(handle)
        end = split.end if split.end >= 0 else float("inf")
        buffer, consumed = b"", 0  # consumed: bytes of the current line already given out as pieces
        while line_start < end:
            block = handle.read(READ_BLOCK)
            if line_start == 0 and not buffer and b"\x00" in block[:PROBE_BYTES]:
                raise NotText(not_text_reason(block))  # as probe() says, found by the read itself: one open per file
            buffer += block
            lines = buffer.split(b"\n")
            buffer = lines.pop()
            if lines:
                lines = _starting_before(lines, line_start + consumed, end)
                size = sum(map(len, lines)) + len(lines)
                stats.bytes_read += size
                line_start += consumed + size
                consumed = 0
                if lines:
                    yield lines, False
                if line_start >= end:
                    return
            while len(buffer) > max_bytes and line_start < end:
                piece, buffer = _cut(buffer, max_bytes)
                stats.bytes_read += len(piece)
                consumed += len(piece)
                yield [piece], True
            if not block:
                if buffer and line_start < end:
                    stats.bytes_read += len(buffer)
                    yield [buffer], False
                return


def _starting_before(lines: list[bytes], first_end: int, end: float) -> list[bytes]:
    """The leading lines that start before `end`; the first starts before it already, and ends (with its
    newline) at `first_end` + its length + 1."""
    if end == float("inf"):
        return lines
    position = first_end
    for index, line in enumerate(lines):
        position += len(line) + 1
        if position >= end:  # the next line starts at or after `end`
            return lines[:index + 1]
    return lines


def _skip_past_newline(handle) -> int:
    skipped = 0
    while True:
        block = handle.read(READ_BLOCK)
        if not block:
            return skipped
        newline = block.find(b"\n")
        if newline >= 0:
            handle.seek(handle.tell() - len(block) + newline + 1)
            return skipped + newline + 1
        skipped += len(block)


def _cut(data: bytes, limit: int) -> tuple[bytes, bytes]:
    cut = data.rfind(b" ", limit // 2, limit)
    if cut < 0:
        cut = limit
        while cut > 0 and (data[cut] & 0xC0) == 0x80:  # don't split a multi-byte UTF-8 character
            cut -= 1
    return data[:cut], data[cut:]


def read_sample(files: list[InputFile], documents: str, text_field: str, max_line_chars: int,
                budget_bytes: int) -> Iterator[str]:
    """Sentences from the start of each file, an equal share of budget_bytes per file, for tokenizer training."""
    share = max(1, budget_bytes // max(1, len(files)))
    for index, file in enumerate(files):
        stats = ReadStats()
        # No probe first: the read itself refuses a binary file (NotText) before it yields anything, as it does
        # in the workers, so each file is opened once.
        try:
            split = make_splits(index, file, split_bytes=1 << 62)[0]
            for sentence in read_split(split, documents, text_field, max_line_chars, stats):
                if sentence is not DOCUMENT_BREAK:
                    yield sentence
                if stats.bytes_read >= share:
                    break
        except Exception:  # a binary or corrupt file is reported by the main pass; the sample just stops there
            continue
