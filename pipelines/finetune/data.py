"""Labeled data for fine-tuning: TSV, CSV, JSONL or Parquet on any storage URI, checked row by row.

Every problem is a one-line InputError naming the file, and where it applies the row and the column.
Rows are numbered from 1 for the first data row (the header, if any, is not counted).
"""

from __future__ import annotations

import codecs
import io
import json
import math
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from electra_core import storage
from pipelines.errors import InputError

TEXT_COLUMNS = ("sentence", "text", "sentence1", "question", "premise", "question1")
PAIR_COLUMNS = ("sentence2", "text_pair", "question2", "hypothesis")
LABEL_COLUMNS = ("label", "labels", "score", "target")


@dataclass
class LabeledData:
    """Texts (and second texts of pairs) with their labels as read, from one file."""

    source: str
    texts: list[str]
    pairs: list[str] | None
    labels: list
    columns: tuple[str, str | None, str]
    warnings: list[str] = field(default_factory=list)  # what was repaired on reading, one line each


class Utf8Repair:
    """Invalid UTF-8 found in one file: bytes replaced with U+FFFD (as prepare does), counted by line or row."""

    def __init__(self, uri: str, strict: bool):
        self.uri, self.strict = uri, strict
        self.replaced = 0
        self.places: list[str] = []

    def text(self, raw: bytes, place: str) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            if self.strict:
                raise InputError(f"{self.uri}: {place}: invalid UTF-8 (--strict refuses it; without it the bytes "
                                 "are replaced with U+FFFD and counted)") from None
        fixed = raw.decode("utf-8", errors="replace")
        self.replaced += len(fixed) - len(raw.decode("utf-8", errors="ignore"))
        self.places.append(place)
        return fixed

    def whole_file(self, data: bytes) -> bytes:
        """A text file's bytes made valid UTF-8, line by line (only when the file as a whole is not). A UTF-8
        byte-order mark is dropped (pyarrow would make it part of the first column's name); UTF-16 and UTF-32
        text is refused: its ASCII letters are valid UTF-8 with NUL bytes between them, so it would be read as
        text, garbled."""
        if data.startswith(codecs.BOM_UTF8):
            data = data[len(codecs.BOM_UTF8):]
        if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or b"\x00" in data:
            raise InputError(f"{self.uri}: holds NUL bytes (UTF-16 or UTF-32 text?); save it as UTF-8")
        try:
            data.decode("utf-8")
            return data
        except UnicodeDecodeError:
            pass
        return "\n".join(self.text(line, f"line {number}")
                          for number, line in enumerate(data.split(b"\n"), start=1)).encode()

    def warning(self) -> str | None:
        if not self.replaced:
            return None
        shown = ", ".join(self.places[:5]) + (f" and {len(self.places) - 5} more" if len(self.places) > 5 else "")
        return (f"{self.uri}: {self.replaced} invalid UTF-8 bytes replaced with U+FFFD ({shown}); "
                "--strict refuses such a file")


def jsonl_objects(uri: str, text: str, expected: str):
    """(row, object) for each non-blank line of a JSONL text, rows from 1; a line that is not a JSON object is
    a one-line InputError naming the row and what the object should hold (`expected`)."""
    rows = (line for line in text.split("\n") if line.strip())
    for row, line in enumerate(rows, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise InputError(f"{uri}: row {row}: not JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise InputError(f"{uri}: row {row}: not a JSON object with {expected}")
        yield row, record


def read_file_bytes(uri: str) -> bytes:
    """A file's bytes, gunzipped when its name ends in .gz; a missing or broken file is a one-line InputError."""
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        raise InputError(f"{uri}: no such file") from None
    if uri.lower().endswith(".gz"):
        import gzip
        import zlib

        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as error:  # not gzip, or cut short
            raise InputError(f"{uri}: not a readable gzip file ({error})") from None
    return data


def read_table(uri: str, repair: Utf8Repair | None = None) -> pa.Table:
    name = uri.lower().removesuffix(".gz")
    repair = repair or Utf8Repair(uri, strict=False)
    data = read_file_bytes(uri)
    if not name.endswith((".parquet", ".pq")):
        # pyarrow would read a column holding one invalid byte as binary, every value of it then bytes.
        data = repair.whole_file(data)
    try:
        if name.endswith(".tsv"):
            # GLUE-style TSV: tab separated, no quoting (sentences contain quote characters).
            return pacsv.read_csv(io.BytesIO(data), parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False))
        if name.endswith(".csv"):
            return pacsv.read_csv(io.BytesIO(data))
        if name.endswith((".jsonl", ".json", ".ndjson")):
            return pajson.read_json(io.BytesIO(data))
        if name.endswith((".parquet", ".pq")):
            return pq.read_table(io.BytesIO(data))
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as error:
        raise InputError(f"{uri}: cannot be read ({str(error).splitlines()[0]})") from None
    raise InputError(f"{uri}: unknown format; use .tsv, .csv, .jsonl or .parquet")


def _pick(uri: str, columns: list[str], wanted: str | None, candidates: tuple[str, ...], what: str,
          required: bool) -> str | None:
    if wanted is not None:
        if wanted not in columns:
            raise InputError(f"{uri}: no column {wanted!r} (columns: {', '.join(columns)})")
        return wanted
    found = [c for c in candidates if c in columns]
    if found:
        return found[0]
    if required:
        raise InputError(f"{uri}: cannot tell which column holds the {what} (columns: {', '.join(columns)}); "
                         f"name it with --{what.replace(' ', '-')}-column")
    return None


def read_labeled(uri: str, text_column: str | None, pair_column: str | None, label_column: str | None,
                 strict: bool = False) -> LabeledData:
    repair = Utf8Repair(uri, strict)
    table = read_table(uri, repair)
    columns = table.column_names
    text = _pick(uri, columns, text_column, TEXT_COLUMNS, "text", required=True)
    pair = _pick(uri, columns, pair_column, PAIR_COLUMNS, "text pair", required=False)
    label = _pick(uri, columns, label_column, LABEL_COLUMNS, "label", required=True)
    texts = _texts(uri, table, text, repair)
    pairs = _texts(uri, table, pair, repair) if pair else None
    labels = _decoded(table.column(label).to_pylist(), label, repair)
    for row, value in enumerate(labels, start=1):
        if value is None or (isinstance(value, str) and not value.strip()) or (isinstance(value, float) and math.isnan(value)):
            raise InputError(f"{uri}: row {row}: column {label!r} is empty")
    if not texts:
        raise InputError(f"{uri}: no rows")
    warning = repair.warning()
    return LabeledData(uri, texts, pairs, labels, (text, pair, label), [warning] if warning else [])


def _decoded(values: list, column: str, repair: Utf8Repair) -> list:
    """A binary column's values (Parquet's, or a column pyarrow could not read as text) as text; str() of
    bytes would be "b'...'"."""
    return [repair.text(value, f"row {row}, column {column!r}") if isinstance(value, bytes) else value
            for row, value in enumerate(values, start=1)]


def _texts(uri: str, table: pa.Table, column: str, repair: Utf8Repair) -> list[str]:
    values = _decoded(table.column(column).to_pylist(), column, repair)
    for row, value in enumerate(values, start=1):
        if isinstance(value, (dict, list)):  # JSON objects and arrays: str() would train on their repr
            raise InputError(f"{uri}: row {row}: column {column!r} holds a JSON {type(value).__name__}, not text")
        if value is None or not str(value).strip():
            raise InputError(f"{uri}: row {row}: column {column!r} is empty")
    return [str(value) for value in values]


@dataclass
class LabelSpace:
    """How labels as read map to model outputs: class ids for classification, floats for regression."""

    task_type: str
    names: list[str]  # classification: id -> name
    kind: str  # int, str or float: the type the labels are given back in

    @classmethod
    def from_training(cls, data: LabeledData, task_type: str) -> "LabelSpace":
        if task_type == "regression":
            for row, value in enumerate(data.labels, start=1):
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise InputError(f"{data.source}: row {row}: column {data.columns[2]!r} holds {value!r}, "
                                     "not a number (task_type regression)")
            return cls("regression", [], "float")
        fractional = [v for v in data.labels if isinstance(v, float) and not v.is_integer()]
        if fractional:  # STS-B style scores read as classes would make every distinct score a class
            raise InputError(f"{data.source}: column {data.columns[2]!r} holds fractional numbers such as "
                             f"{fractional[0]!r}, not class labels; for scores use --task-type regression")
        kind = "int" if all(isinstance(v, int) and not isinstance(v, bool) for v in data.labels) else "str"
        names = sorted({str(v) for v in data.labels}, key=lambda v: (int(v) if kind == "int" else 0, v))
        if len(names) < 2:
            raise InputError(f"{data.source}: column {data.columns[2]!r} has a single label ({names[0]!r}); "
                             "classification needs at least two")
        return cls("classification", names, kind)

    @property
    def num_labels(self) -> int:
        return 1 if self.task_type == "regression" else len(self.names)

    def encode(self, data: LabeledData) -> list:
        if self.task_type == "regression":
            return [float(v) for v in data.labels]
        index = {name: i for i, name in enumerate(self.names)}
        encoded = []
        for row, value in enumerate(data.labels, start=1):
            if str(value) not in index:
                raise InputError(f"{data.source}: row {row}: label {value!r} in column {data.columns[2]!r} never "
                                 "appears in the training data")
            encoded.append(index[str(value)])
        return encoded

    def decode(self, class_id: int):
        name = self.names[class_id]
        return int(name) if self.kind == "int" else name
