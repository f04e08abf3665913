"""`electra prepare` on a real local Ray (the in-process runs join this session's Ray, so they run on Ray actors; a
command started without a cluster runs on local processes): what a user gets in the output, and how it behaves."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

import electra_core
from electra_core import storage
from pipelines.cli import main
from pipelines.config import PrepareConfig
from pipelines.prepare import load_committed_dataset, run_prepare
from pipelines.errors import InputError
from tests.pipelines.conftest import command_errors, make_sentences

pytestmark = pytest.mark.usefixtures("local_ray")


def prepare(inputs, output, **settings):
    logs: list[str] = []
    settings.setdefault("vocab_size", 300)
    result = run_prepare(PrepareConfig(inputs=[str(i) for i in inputs], output=str(output), **settings),
                         log=logs.append)
    return result, "\n".join(logs)


def read_shards(output: str, manifest: dict) -> list[tuple[list[int], list[int]]]:
    """Rows of the listed shards in manifest order, after checking each shard's checksum and row count."""
    rows = []
    for shard in manifest["shards"]:
        data = storage.read_bytes(storage.join(output, shard["path"]))
        assert hashlib.sha256(data).hexdigest() == shard["sha256"]
        table = pq.read_table(io.BytesIO(data))
        assert table.num_rows == shard["rows"]
        rows.extend(zip(table["input_ids"].to_pylist(), table["token_type_ids"].to_pylist()))
    return rows


def token_stream(rows, special_ids) -> list[int]:
    return [token for ids, _ in rows for token in ids if token not in special_ids]


def write_documents(path, documents: list[list[str]]) -> None:
    path.write_text("\n\n".join("\n".join(sentences) for sentences in documents) + "\n")


# ----------------------------------------------------------------------------------------------------------
# What the output holds
# ----------------------------------------------------------------------------------------------------------


def test_sequences_decode_back_to_the_input_text_and_counts_agree(tmp_path):
    documents = [make_sentences(40, seed=i) for i in range(3)]
    write_documents(tmp_path / "a.txt", documents)
    result, _ = prepare([tmp_path / "a.txt"], tmp_path / "out", seq_len=64)

    manifest = load_committed_dataset(str(tmp_path / "out"))
    tokenizer = electra_core.load_tokenizer(str(tmp_path / "out"))
    rows = read_shards(str(tmp_path / "out"), manifest)
    special = {tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")}

    sentences = [sentence for document in documents for sentence in document]
    expected = [t for s in sentences for t in tokenizer.encode(s, add_special_tokens=False).ids]
    assert token_stream(rows, special) == expected
    assert tokenizer.decode(token_stream(rows, special)) == " ".join(sentences)

    counts = manifest["counts"]
    assert counts["sequences"] == len(rows) == sum(s["rows"] for s in manifest["shards"])
    assert counts["tokens"] == sum(len(ids) for ids, _ in rows)
    assert counts["documents"] == 3
    assert manifest["tokenizer"]["sha256"] == hashlib.sha256((tmp_path / "out" / "tokenizer.json").read_bytes()).hexdigest()
    assert manifest["config"]["seq_len"] == 64 and result["skipped"] is False


def test_sequences_are_cls_a_sep_b_sep_with_segment_ids(tmp_path):
    write_documents(tmp_path / "a.txt", [make_sentences(400)])
    prepare([tmp_path / "a.txt"], tmp_path / "out", seq_len=64)
    manifest = load_committed_dataset(str(tmp_path / "out"))
    tokenizer = electra_core.load_tokenizer(str(tmp_path / "out"))
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    rows = read_shards(str(tmp_path / "out"), manifest)

    two_segments = 0
    for ids, types in rows:
        assert len(ids) <= 64 and len(ids) == len(types)
        assert ids[0] == cls and ids[-1] == sep
        separators = [i for i, token in enumerate(ids) if token == sep]
        if len(separators) == 2:
            two_segments += 1
            assert set(types[: separators[0] + 1]) == {0} and set(types[separators[0] + 1:]) == {1}
        else:
            assert separators == [len(ids) - 1] and set(types) == {0}
    # About 10% single-segment and 5% short sequences, as in the reference implementation.
    assert 0.75 < two_segments / len(rows) < 0.97
    assert sum(len(ids) < 64 for ids, _ in rows) / len(rows) < 0.15


def write_shape(root, shape: str) -> tuple[list[str], dict]:
    """A small corpus of one of the shapes people bring; returns its texts (in file order) and the settings."""
    root.mkdir()
    if shape == "sentence_a_line":  # the review corpus
        sentences = make_sentences(6000)
        (root / "reviews.txt").write_text("\n".join(sentences) + "\n")
        return sentences, {}
    if shape == "paragraphs_in_many_files":  # a documentation tree
        texts = []
        for i in range(120):
            paragraphs = [" ".join(make_sentences(2, seed=1000 * i + j)) for j in range(6)]
            (root / f"page{i:03d}.txt").write_text("\n\n".join(paragraphs) + "\n")
            texts += paragraphs
        return texts, {}
    if shape == "short_document_a_file":
        texts = make_sentences(800, seed=3)
        for i, text in enumerate(texts):
            (root / f"note{i:04d}.txt").write_text(text + "\n")
        return texts, {}
    records = [" ".join(s.split()[:4]) for s in make_sentences(8000, seed=4)]  # JSONL of a few words each
    (root / "records.jsonl").write_text("\n".join(json.dumps({"text": r}) for r in records) + "\n")
    return records, {}


@pytest.mark.parametrize("shape", ["sentence_a_line", "paragraphs_in_many_files", "short_document_a_file",
                                   "jsonl_short_records"])
def test_dense_packing_pads_at_most_5_percent_on_every_corpus_shape(tmp_path, shape):
    texts, settings = write_shape(tmp_path / "in", shape)
    prepare([tmp_path / "in"], tmp_path / "out", seq_len=128, **settings)
    manifest = load_committed_dataset(str(tmp_path / "out"))
    assert manifest["counts"]["pad_fraction"] <= 0.05

    # Nothing lost or repeated: the tokens of the sequences are the tokens of the texts.
    tokenizer = electra_core.load_tokenizer(str(tmp_path / "out"))
    special = {tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")}
    expected = [t for text in texts for t in tokenizer.encode(text, add_special_tokens=False).ids]
    assert Counter(token_stream(read_shards(str(tmp_path / "out"), manifest), special)) == Counter(expected)


def document_ends_and_separators(rows, cls: int, sep: int):
    """Walks the sequences in order: (positions in the text-token stream where a [SEP] stands inside a
    sequence, positions where a sequence ends)."""
    separators, sequence_ends, position = set(), set(), 0
    for ids, _ in rows:
        for token in ids[1:-1]:
            if token == sep:
                separators.add(position)
            elif token != cls:
                position += 1
        sequence_ends.add(position)
    return separators, sequence_ends


@pytest.mark.parametrize("packing", ["dense", "reference"])
def test_document_boundaries_are_marked_by_sep_or_end_a_sequence(tmp_path, packing):
    """dense: a [SEP] inside a sequence is a document boundary or closes segment A, and every boundary
    inside a sequence has one; reference: every document boundary ends a sequence."""
    documents = make_sentences(1500, seed=5)  # one document a line
    (tmp_path / "lines.txt").write_text("\n".join(documents) + "\n")
    prepare([tmp_path / "lines.txt"], tmp_path / "out", seq_len=64, documents="lines", packing=packing)
    manifest = load_committed_dataset(str(tmp_path / "out"))
    tokenizer = electra_core.load_tokenizer(str(tmp_path / "out"))
    rows = read_shards(str(tmp_path / "out"), manifest)
    lengths = [len(tokenizer.encode(d, add_special_tokens=False).ids) for d in documents]
    document_ends = set(itertools.accumulate(lengths))
    separators, sequence_ends = document_ends_and_separators(
        rows, tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]"))
    if packing == "reference":
        assert document_ends <= sequence_ends
        assert manifest["counts"]["pad_fraction"] > 0.3  # review-length documents: the reason dense exists
        return
    # Segment A ends at a sentence, and a sentence is a document here: every inner [SEP] is a boundary,
    # and every boundary that does not end a sequence has its [SEP].
    assert separators <= document_ends
    assert document_ends - sequence_ends <= separators
    assert len(separators) > len(rows)  # several documents a sequence


def test_reads_jsonl_parquet_and_compressed_text(tmp_path):
    sentences = make_sentences(60)
    (tmp_path / "docs.jsonl").write_text(
        "\n".join(json.dumps({"text": s, "id": i}) for i, s in enumerate(sentences[:20]))
        + "\nnot json at all\n" + json.dumps({"title": "no text field"}) + "\n"
    )
    pq.write_table(pa.table({"text": sentences[20:30] + [None]}), tmp_path / "docs.parquet")
    (tmp_path / "a.txt.gz").write_bytes(gzip.compress("\n".join(sentences[30:40]).encode()))
    (tmp_path / "b.txt.bz2").write_bytes(bz2.compress("\n".join(sentences[40:50]).encode()))
    (tmp_path / "c.txt.zst").write_bytes(zstandard.ZstdCompressor().compress("\n".join(sentences[50:]).encode()))

    prepare([tmp_path], tmp_path / "out")
    manifest = load_committed_dataset(str(tmp_path / "out"))
    by_name = {os.path.basename(f["uri"]): f for f in manifest["files"]}

    assert {name: f["status"] for name, f in by_name.items()} == dict.fromkeys(by_name, "read")
    assert by_name["docs.jsonl"]["documents"] == 20 and by_name["docs.jsonl"]["bad_records"] == 2
    assert by_name["docs.parquet"]["documents"] == 10 and by_name["docs.parquet"]["bad_records"] == 1
    for name in ("a.txt.gz", "b.txt.bz2", "c.txt.zst"):
        assert by_name[name]["tokens"] > 0
    assert manifest["counts"]["bad_records"] == 3
    tokenizer = electra_core.load_tokenizer(str(tmp_path / "out"))
    special = {tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")}
    # Small files are read in groups: each file's text is in the stream whole and in order.
    text = tokenizer.decode(token_stream(read_shards(str(tmp_path / "out"), manifest), special))
    for name, part in (("a.txt.gz", sentences[30:40]), ("c.txt.zst", sentences[50:])):
        assert " ".join(part) in text, name


def test_large_text_files_are_split_into_byte_ranges_without_losing_or_repeating_lines(tmp_path):
    sentences = make_sentences(3000)
    (tmp_path / "big.txt").write_text("\n".join(sentences) + "\n")
    prepare([tmp_path / "big.txt"], tmp_path / "out", split_mb=0.05, documents="lines")
    manifest = load_committed_dataset(str(tmp_path / "out"))
    assert len({shard["path"].split("-")[1] for shard in manifest["shards"]}) > 3  # several splits
    assert manifest["files"][0]["documents"] == 3000  # each line once, whichever split it starts in
    tokenizer = electra_core.load_tokenizer(str(tmp_path / "out"))
    special = {tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")}
    stream = token_stream(read_shards(str(tmp_path / "out"), manifest), special)
    assert stream == [t for s in sentences for t in tokenizer.encode(s, add_special_tokens=False).ids]


def test_given_tokenizer_is_used_and_copied_into_the_output(tmp_path):
    tokenizer = electra_core.train_tokenizer(make_sentences(200), vocab_size=150)
    electra_core.save_tokenizer(tokenizer, str(tmp_path / "tok"))
    (tmp_path / "a.txt").write_text("\n".join(make_sentences(50)))
    prepare([tmp_path / "a.txt"], tmp_path / "out", tokenizer=str(tmp_path / "tok"))
    assert (tmp_path / "out" / "tokenizer.json").read_text() == (tmp_path / "tok" / "tokenizer.json").read_text()
    assert load_committed_dataset(str(tmp_path / "out"))["tokenizer"]["vocab_size"] == 150


# ----------------------------------------------------------------------------------------------------------
# Re-runs
# ----------------------------------------------------------------------------------------------------------


def test_rerun_with_unchanged_inputs_writes_nothing_and_says_so_quickly(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("\n".join(make_sentences(200)))
    prepare([tmp_path / "in"], tmp_path / "out")
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*")}

    started = time.perf_counter()
    result, logs = prepare([tmp_path / "in"], tmp_path / "out")
    assert time.perf_counter() - started < 5
    assert result["skipped"] and "up to date" in logs
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*")} == before


@pytest.mark.parametrize("damage", ["truncated", "deleted", "all deleted", "same size, other bytes"])
def test_a_rerun_rebuilds_damaged_shards_instead_of_calling_the_output_up_to_date(tmp_path, capsys, damage):
    (tmp_path / "in").mkdir()
    for i in range(6):
        write_documents(tmp_path / "in" / f"{i}.txt", [make_sentences(200, seed=i)])
    command = ["prepare", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--vocab-size", "300",
               "--set", "split_mb=0.01"]
    assert main(command) == 0
    first = load_committed_dataset(str(tmp_path / "out"))
    tokenizer = electra_core.load_tokenizer(str(tmp_path / "out"))
    special = {tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")}
    tokens = Counter(token_stream(read_shards(str(tmp_path / "out"), first), special))
    shards = [tmp_path / "out" / shard["path"] for shard in first["shards"]]
    if damage == "truncated":
        shards[1].write_bytes(shards[1].read_bytes()[:300])
    elif damage == "deleted":
        shards[1].unlink()
    elif damage == "all deleted":
        for shard in shards:
            shard.unlink()
    else:
        shards[1].write_bytes(bytes(len(shards[1].read_bytes())))
        capsys.readouterr()
        assert main(command) == 0 and "up to date" in capsys.readouterr().out  # the listing cannot tell
        command.append("--verify")
    capsys.readouterr()
    assert main(command) == 0
    out = capsys.readouterr().out
    assert "up to date" not in out and "warning: " in out and shards[-1 if damage == "all deleted" else 1].name in out
    second = load_committed_dataset(str(tmp_path / "out"))
    # Every listed shard is there, whole, with its checksum, and the dataset holds all of the input again.
    assert Counter(token_stream(read_shards(str(tmp_path / "out"), second), special)) == tokens
    capsys.readouterr()
    assert main(command) == 0 and "up to date" in capsys.readouterr().out


def test_new_files_are_tokenized_alone_and_added_under_a_new_manifest(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("\n".join(make_sentences(200, seed=1)))
    prepare([tmp_path / "in"], tmp_path / "out")
    first = load_committed_dataset(str(tmp_path / "out"))

    (tmp_path / "in" / "b.txt").write_text("\n".join(make_sentences(200, seed=2)))
    result, logs = prepare([tmp_path / "in"], tmp_path / "out")
    second = load_committed_dataset(str(tmp_path / "out"))

    assert "1 files unchanged" in logs and "tokenizing 1 new" in logs
    old_entry, new_entry = second["files"]
    assert old_entry["prepared_in"] == first["run_id"] and new_entry["prepared_in"] == second["run_id"]
    assert second["shards"][: len(first["shards"])] == first["shards"]  # old shards kept as they were
    assert second["counts"]["sequences"] > first["counts"]["sequences"]
    assert second["tokenizer"]["sha256"] == first["tokenizer"]["sha256"]
    assert [run["files_added"] for run in second["runs"]] == [[old_entry["uri"]], [new_entry["uri"]]]


def test_hidden_files_and_commit_markers_are_left_out_but_underscore_directories_are_read(tmp_path):
    """A Sphinx documentation tree keeps its text in html/_sources; .git and _SUCCESS are not text to train on."""
    sources = tmp_path / "docs" / "html" / "_sources"
    sources.mkdir(parents=True)
    (sources / "intro.rst.txt").write_text("\n".join(make_sentences(20)) + "\n")
    (tmp_path / "docs" / ".git").mkdir()
    (tmp_path / "docs" / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (tmp_path / "docs" / "_SUCCESS").write_text("")
    prepare([tmp_path / "docs"], tmp_path / "out")
    manifest = load_committed_dataset(str(tmp_path / "out"))
    assert [os.path.basename(entry["uri"]) for entry in manifest["files"]] == ["intro.rst.txt"]


def test_an_output_inside_the_input_and_other_prepared_datasets_are_never_read_as_input(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    (corpus / "docs").mkdir(parents=True)
    write_documents(corpus / "docs" / "a.txt", [make_sentences(50, seed=1)])
    command = ["prepare", "--input", str(corpus), "--output", str(corpus / "prep"), "--vocab-size", "300"]
    assert main(command) == 0
    shutil.copytree(corpus / "prep", corpus / "docs" / "older-dataset")  # a committed output under the input
    write_documents(corpus / "docs" / "b.txt", [make_sentences(50, seed=2)])
    assert main(command) == 0
    manifest = load_committed_dataset(str(corpus / "prep"))
    assert sorted(os.path.relpath(entry["uri"], corpus) for entry in manifest["files"]) == ["docs/a.txt", "docs/b.txt"]
    assert manifest["counts"]["files_failed"] == manifest["counts"]["files_skipped"] == 0
    assert "tokenizing 1 new" in capsys.readouterr().out


def test_thousands_of_tiny_files_are_read_in_one_task_into_full_shards(tmp_path):
    (tmp_path / "in").mkdir()
    for i, sentence in enumerate(make_sentences(2000, seed=6)):
        (tmp_path / "in" / f"{i:04d}.txt").write_text(sentence + "\n")
    result, logs = prepare([tmp_path / "in"], tmp_path / "out", shard_rows=32, workers=1)
    manifest = load_committed_dataset(str(tmp_path / "out"))
    assert "2000 files or file parts in 1 read tasks" in logs
    assert manifest["counts"]["files_read"] == 2000 and manifest["counts"]["pad_fraction"] <= 0.05
    rows = [shard["rows"] for shard in manifest["shards"]]
    assert len(rows) > 5 and set(rows[:-1]) == {32} and 0 < rows[-1] <= 32


def test_incremental_runs_on_grouped_files_tokenize_only_what_changed(tmp_path):
    (tmp_path / "in").mkdir()
    for i in range(60):
        (tmp_path / "in" / f"{i:02d}.txt").write_text("\n".join(make_sentences(3, seed=i)) + "\n")
    settings = {"split_mb": 0.002, "workers": 2}  # read tasks of about 2 KB: several files each
    prepare([tmp_path / "in"], tmp_path / "out", **settings)
    first = load_committed_dataset(str(tmp_path / "out"))
    assert 4 < len({tuple(shard["sources"]) for shard in first["shards"]}) < 60

    (tmp_path / "in" / "new.txt").write_text("\n".join(make_sentences(3, seed=99)) + "\n")
    _, logs = prepare([tmp_path / "in"], tmp_path / "out", **settings)
    second = load_committed_dataset(str(tmp_path / "out"))
    assert "60 files unchanged" in logs and "tokenizing 1 new" in logs
    assert second["shards"][: len(first["shards"])] == first["shards"]

    changed = str(tmp_path / "in" / "07.txt")
    group = next(shard["sources"] for shard in second["shards"] if changed in shard["sources"])
    time.sleep(0.01)
    (tmp_path / "in" / "07.txt").write_text("\n".join(make_sentences(3, seed=1234)) + "\n")
    _, logs = prepare([tmp_path / "in"], tmp_path / "out", **settings)
    third = load_committed_dataset(str(tmp_path / "out"))
    assert f"tokenizing {len(group)} new or changed" in logs  # the changed file and the files it was read with
    untouched = [shard for shard in second["shards"] if changed not in shard["sources"]]
    assert untouched and all(shard in third["shards"] for shard in untouched)
    entries = {entry["uri"]: entry for entry in third["files"]}
    assert {uri for uri, entry in entries.items() if entry["prepared_in"] == third["run_id"]} == set(group)
    assert third["counts"]["files_read"] == 61


def test_the_same_files_give_the_same_dataset_wherever_they_are(tmp_path):
    """Tokenizer and packing depend on the input's content and names, not on where it lies (a pipeline
    root elsewhere, another clone): the same dataset, so the same training."""
    (tmp_path / "a" / "in").mkdir(parents=True)
    write_documents(tmp_path / "a" / "in" / "reviews.txt", [make_sentences(60, seed=seed) for seed in range(8)])
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    first, _ = prepare([tmp_path / "a" / "in"], tmp_path / "a" / "out", vocab_size=400)
    second, _ = prepare([tmp_path / "b" / "in"], tmp_path / "b" / "out", vocab_size=400)
    assert first["manifest"]["tokenizer"]["sha256"] == second["manifest"]["tokenizer"]["sha256"]
    assert first["manifest"]["dataset_fingerprint"] == second["manifest"]["dataset_fingerprint"]
    assert read_shards(str(tmp_path / "a" / "out"), first["manifest"]) == \
        read_shards(str(tmp_path / "b" / "out"), second["manifest"])


def test_relative_paths_name_the_callers_directory_not_the_actors(tmp_path, monkeypatch):
    """The tokenizer actors run where their Ray started (a cluster's directory; here the test session's), so
    relative --input and --output are resolved by the command. A manifest from before that, which records
    relative paths, still finds its unchanged files."""
    from pipelines.prepare import manifest as manifests

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("\n".join(make_sentences(200)))
    monkeypatch.chdir(tmp_path)
    assert os.getcwd() != ray_worker_directory()
    result, _ = prepare(["in"], "out")
    manifest = load_committed_dataset(str(tmp_path / "out"))
    assert [entry["uri"] for entry in manifest["files"]] == [str(tmp_path / "in" / "a.txt")]
    assert manifest["counts"]["sequences"] > 0 and len(read_shards(str(tmp_path / "out"), manifest)) == \
        manifest["counts"]["sequences"]

    relative = {**manifest, "files": [{**entry, "uri": "in/a.txt"} for entry in manifest["files"]],
                "shards": [{**shard, "sources": ["in/a.txt"]} for shard in manifest["shards"]]}
    manifests.write_manifest(str(tmp_path / "out"), relative)
    result, logs = prepare(["in"], "out")
    assert result["skipped"] and "up to date" in logs


def ray_worker_directory() -> str:
    import ray

    @ray.remote
    def directory() -> str:
        return os.getcwd()

    return ray.get(directory.remote())


def test_changed_settings_rebuild_everything_and_remove_the_old_shards(tmp_path):
    (tmp_path / "a.txt").write_text("\n".join(make_sentences(300)))
    prepare([tmp_path / "a.txt"], tmp_path / "out", seq_len=64)
    old_paths = {s["path"] for s in load_committed_dataset(str(tmp_path / "out"))["shards"]}
    prepare([tmp_path / "a.txt"], tmp_path / "out", seq_len=32)
    manifest = load_committed_dataset(str(tmp_path / "out"))
    assert manifest["seq_len"] == 32
    on_disk = {str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out" / "shards").iterdir()}
    assert on_disk == {s["path"] for s in manifest["shards"]} and not on_disk & old_paths


def without_paths(shards: list[dict]) -> list[dict]:
    """Shards as their content and origin, in manifest order; their names hold the run that wrote them."""
    return [{key: value for key, value in shard.items() if key != "path"} for shard in shards]


def mixed_corpus(root) -> None:
    """Small files read in groups, a file cut into byte ranges, and a truncated one that fails."""
    (root / "small").mkdir(parents=True)
    for i in range(30):
        write_documents(root / "small" / f"{i:02d}.txt", [make_sentences(4, seed=i), make_sentences(2, seed=100 + i)])
    (root / "large.txt").write_text("\n".join(make_sentences(1500, seed=7)) + "\n")
    data = gzip.compress("\n".join(make_sentences(2000, seed=8)).encode())
    (root / "truncated.txt.gz").write_bytes(data[: len(data) // 2])


def test_without_a_cluster_the_command_runs_on_local_processes_and_writes_what_ray_actors_write(tmp_path):
    """No --address and no RAY_ADDRESS: the command starts no Ray (on one machine its start and stop cost more
    than the tokenizing of tens of MB), and its shards are byte for byte those of the Ray actors."""
    mixed_corpus(tmp_path / "in")
    settings = ["--set", "split_mb=0.02", "--set", "shard_rows=50"]
    _, ray_logs = prepare([tmp_path / "in"], tmp_path / "ray", split_mb=0.02, shard_rows=50, executor="ray")
    assert "tokenizer actors on Ray" in ray_logs
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "prepare", "--input", str(tmp_path / "in"),
                           "--output", str(tmp_path / "local"), "--tokenizer", str(tmp_path / "ray"), *settings],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "tokenizer processes on this machine" in done.stdout and "actors on Ray" not in done.stdout
    on_ray = load_committed_dataset(str(tmp_path / "ray"))
    local = load_committed_dataset(str(tmp_path / "local"))
    assert local["counts"] == on_ray["counts"] and on_ray["counts"]["files_failed"] == 1
    assert len(on_ray["shards"]) > 3 and without_paths(local["shards"]) == without_paths(on_ray["shards"])
    assert local["dataset_fingerprint"] == on_ray["dataset_fingerprint"]
    assert [(f["uri"], f["status"], f["tokens"]) for f in local["files"]] == \
        [(f["uri"], f["status"], f["tokens"]) for f in on_ray["files"]]


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_long_run_reports_its_progress(tmp_path, monkeypatch, executor):
    from pipelines.prepare import stage

    monkeypatch.setattr(stage, "PROGRESS_SECONDS", 0.0)
    mixed_corpus(tmp_path / "in")
    _, logs = prepare([tmp_path / "in"], tmp_path / "out", split_mb=0.02, executor=executor, workers=2)
    progress = [line for line in logs.splitlines() if " read tasks, " in line and line.endswith("MB/s")]
    assert ("2 tokenizer processes on this machine" if executor == "local" else "2 tokenizer actors on Ray") in logs
    assert len(progress) >= 3
    assert load_committed_dataset(str(tmp_path / "out"))["counts"]["files_read"] == 31


def prepare_until_its_first_shard(tmp_path, *flags, **popen):
    """`electra prepare` of 4 large files started as a user starts it (a process group of its own), returned
    once it has written a shard: (process, output)."""
    (tmp_path / "in").mkdir()
    for i in range(4):
        (tmp_path / "in" / f"part{i}.txt").write_text("\n".join(make_sentences(20000, seed=i)))
    output = tmp_path / "out"
    command = [sys.executable, "-m", "pipelines.cli", "prepare", "--input", str(tmp_path / "in"),
               "--output", str(output), "--vocab-size", "300", "--set", "split_mb=0.2", "--set", "shard_rows=200",
               *flags]
    process = subprocess.Popen(command, start_new_session=True, **popen)
    deadline = time.time() + 120
    while time.time() < deadline and not list((output / "shards").glob("*.parquet")) and process.poll() is None:
        time.sleep(0.1)
    return process, output


def test_a_run_killed_mid_write_leaves_no_manifest_and_the_next_run_completes(tmp_path):
    process, output = prepare_until_its_first_shard(tmp_path, "--workers", "1", stdout=subprocess.DEVNULL,
                                                    stderr=subprocess.DEVNULL)
    try:
        assert list((output / "shards").glob("*.parquet")), "the run wrote no shard in time"
        os.killpg(process.pid, 9)
        process.wait()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, 9)
    assert not (output / "_manifest.json").exists()
    with pytest.raises(InputError, match="_manifest.json"):
        load_committed_dataset(str(output))

    prepare([tmp_path / "in"], output, workers=1, split_mb=0.2, shard_rows=200)
    manifest = load_committed_dataset(str(output))
    rows = read_shards(str(output), manifest)
    assert manifest["counts"]["files_read"] == 4 and len(rows) == manifest["counts"]["sequences"]
    on_disk = {str(p.relative_to(output)) for p in (output / "shards").iterdir()}
    assert on_disk == {s["path"] for s in manifest["shards"]}


def test_ctrl_c_prints_one_line_exits_130_and_the_next_run_completes(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    for attempt in range(3):
        # The Ctrl-C is sent once the first shard is seen. A run that had finished by then (exit 0, its manifest
        # committed: seen once in a fresh-clone suite, never when run alone) was not interrupted, so that
        # attempt is made again in a new directory.
        attempt_path = tmp_path / f"attempt{attempt}"
        attempt_path.mkdir()
        process, output = prepare_until_its_first_shard(attempt_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                        text=True, env=env)
        try:
            os.killpg(process.pid, signal.SIGINT)  # as Ctrl-C does: the whole process group
            _, stderr = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, 9)
        if not (process.returncode == 0 and (output / "_manifest.json").exists()):
            break
    assert process.returncode == 130, stderr[-2000:]
    assert stderr.strip().splitlines() == ["electra prepare: interrupted; run the same command to continue"]
    assert not (output / "_manifest.json").exists()
    prepare([attempt_path / "in"], output, split_mb=0.2, shard_rows=200)
    assert load_committed_dataset(str(output))["counts"]["files_read"] == 4


def test_tokenizer_processes_start_with_ctrl_c_ignored_so_only_the_driver_answers_it():
    # Ctrl-C reaches the whole process group; a worker that had Python's handler while still importing would
    # print its own traceback. The disposition is read inside a freshly spawned worker.
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from pipelines.prepare.stage import sigint_ignored_by_new_processes

    handler_before = signal.getsignal(signal.SIGINT)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        with sigint_ignored_by_new_processes():
            in_worker = pool.submit(signal.getsignal, signal.SIGINT)
        assert in_worker.result(timeout=60) == signal.SIG_IGN
    assert signal.getsignal(signal.SIGINT) is handler_before


# ----------------------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("split_mb", [4.0, 0.001], ids=["files-grouped", "truncated-file-streamed-alone"])
def test_every_kind_of_bad_file_is_accounted_for_and_the_rest_is_read(tmp_path, split_mb):
    good = make_sentences(100)
    (tmp_path / "good.txt").write_text("\n".join(good))
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me and more text here\n".encode("latin-1") * 3)
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4)
    (tmp_path / "utf16.txt").write_bytes("\n".join(make_sentences(20)).encode("utf-16"))  # Windows' "Unicode"
    truncated = gzip.compress(("\n".join(make_sentences(3000))).encode())
    (tmp_path / "truncated.txt.gz").write_bytes(truncated[: len(truncated) // 2])

    result, logs = prepare([tmp_path], tmp_path / "out", split_mb=split_mb)
    manifest = load_committed_dataset(str(tmp_path / "out"))
    by_name = {os.path.basename(f["uri"]): f for f in manifest["files"]}

    assert by_name["good.txt"]["status"] == "read" and by_name["good.txt"]["tokens"] > 0
    assert by_name["latin1.txt"]["status"] == "read" and by_name["latin1.txt"]["invalid_utf8"] == 6
    assert by_name["empty.txt"]["status"] == "empty"
    assert by_name["image.png"]["status"] == "skipped" and "binary" in by_name["image.png"]["reason"]
    assert by_name["truncated.txt.gz"]["status"] == "failed" and by_name["truncated.txt.gz"]["reason"]
    assert by_name["utf16.txt"]["status"] == "skipped"
    assert "warning: " in logs and "truncated.txt.gz" in logs
    # Each kind is said once, by name: the replaced bytes, a text file in another encoding, binary files.
    assert f"warning: invalid UTF-8 bytes replaced with U+FFFD in 1 file: {tmp_path / 'latin1.txt'} (6)" in logs
    assert (f"warning: {tmp_path / 'utf16.txt'}: skipped, UTF-16 text (byte-order mark), not UTF-8: convert it "
            "(iconv -f UTF-16 -t UTF-8)") in logs
    assert "note: 1 file skipped as not text (image.png); the manifest lists each with its reason" in logs
    # Nothing of the failed file is in the dataset.
    assert not [s for s in manifest["shards"] if by_name["truncated.txt.gz"]["uri"] in s["sources"]]
    assert manifest["counts"]["files"] == 6 and manifest["counts"]["files_failed"] == 1
    tokenizer = electra_core.load_tokenizer(str(tmp_path / "out"))
    special = {tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")}
    read_text = good + ["caf\ufffd cr\ufffdme and more text here"] * 3
    expected = [t for text in read_text for t in tokenizer.encode(text, add_special_tokens=False).ids]
    assert Counter(token_stream(read_shards(str(tmp_path / "out"), manifest), special)) == Counter(expected)


def test_strict_mode_exits_2_before_committing(tmp_path, capsys):
    (tmp_path / "good.txt").write_text("\n".join(make_sentences(100)))
    data = gzip.compress("\n".join(make_sentences(2000)).encode())
    (tmp_path / "bad.txt.gz").write_bytes(data[: len(data) // 2])
    status = main(["prepare", "--input", str(tmp_path / "good.txt"), str(tmp_path / "bad.txt.gz"),
                   "--output", str(tmp_path / "out"), "--vocab-size", "300", "--strict"])
    assert status == 2
    error = command_errors(capsys.readouterr().err)
    assert len(error) == 1 and "bad.txt.gz" in error[0]
    assert not (tmp_path / "out" / "_manifest.json").exists()


def test_a_giant_line_without_newline_is_split_with_bounded_memory(tmp_path):
    """A 20 MB line, read in bounded pieces: peak Python memory stays well below what a whole-line read holds."""
    import random
    import tracemalloc

    from pipelines.prepare.encoding import SentenceEncoder
    from pipelines.prepare.sources import InputFile, make_splits
    from pipelines.prepare.stage import process_task

    rng = random.Random(0)
    words = [f"w{rng.randint(0, 999)}" for _ in range(2000)]
    with open(tmp_path / "giant.txt", "w") as handle:
        while handle.tell() < 20_000_000:
            handle.write(" ".join(words) + " ")
    size = (tmp_path / "giant.txt").stat().st_size
    tokenizer = electra_core.train_tokenizer([" ".join(words)], vocab_size=1200)
    config = PrepareConfig(inputs=[str(tmp_path)], output=str(tmp_path / "out"), shard_rows=4096)
    split = make_splits(0, InputFile(str(tmp_path / "giant.txt"), size, "x", "text", None), split_bytes=1 << 62)[0]

    tracemalloc.start()
    result = process_task([split], SentenceEncoder(tokenizer), config, run_id="test")["files"][0]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    assert (result["status"], result["reason"]) == ("read", None)
    assert result["bytes_read"] == size
    assert result["tokens"] > size / 6
    assert peak < 1.6 * size  # a whole-line read would hold several times the file's size


def test_missing_input_exits_2_naming_it_before_any_work(tmp_path, capsys):
    status = main(["prepare", "--input", str(tmp_path / "nope.txt"), "--output", str(tmp_path / "out")])
    assert status == 2
    (error,) = command_errors(capsys.readouterr().err)
    assert "nope.txt" in error
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("output, message", [("a-file", "--output is a file, not a directory"),
                                             ("a-file/data", "--output cannot be written (NotADirectoryError")])
def test_an_output_that_cannot_be_a_directory_exits_2_before_any_work(tmp_path, capsys, output, message):
    (tmp_path / "in.txt").write_text("\n".join(make_sentences(50)))
    (tmp_path / "a-file").write_text("not a directory")
    status = main(["prepare", "--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / output),
                   "--vocab-size", "300"])
    (error,) = command_errors(capsys.readouterr().err)
    assert status == 2 and f"{tmp_path / output}: {message}" in error
    assert (tmp_path / "a-file").read_text() == "not a directory"


def test_an_empty_glob_and_a_wrong_config_key_exit_2(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("hello there\n")
    assert main(["prepare", "--input", str(tmp_path / "*.jsonl"), "--output", str(tmp_path / "out")]) == 2
    assert "no files match" in capsys.readouterr().err
    assert main(["prepare", "--input", str(tmp_path), "--output", str(tmp_path / "out"),
                 "--set", "seq_lenn=64"]) == 2
    assert "seq_len" in capsys.readouterr().err


def test_reading_a_directory_without_a_manifest_is_refused(tmp_path):
    (tmp_path / "shards").mkdir()
    with pytest.raises(InputError, match="no _manifest.json"):
        load_committed_dataset(str(tmp_path))


# ----------------------------------------------------------------------------------------------------------
# Object storage
# ----------------------------------------------------------------------------------------------------------


def test_input_and_output_on_s3(s3_bucket, tmp_path):
    sentences = make_sentences(300)
    storage.write_text(f"{s3_bucket}/raw/a.txt", "\n".join(sentences[:150]))
    storage.write_bytes(f"{s3_bucket}/raw/b.txt.gz", gzip.compress("\n".join(sentences[150:]).encode()))
    output = f"{s3_bucket}/prepared"

    prepare([f"{s3_bucket}/raw"], output, seq_len=64)
    manifest = load_committed_dataset(output)
    assert [f["status"] for f in manifest["files"]] == ["read", "read"]
    assert all(f["uri"].startswith("s3://") for f in manifest["files"])
    rows = read_shards(output, manifest)
    assert len(rows) == manifest["counts"]["sequences"] > 0

    result, logs = prepare([f"{s3_bucket}/raw"], output, seq_len=64)
    assert result["skipped"] and "up to date" in logs
