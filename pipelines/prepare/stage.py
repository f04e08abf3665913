"""The prepare stage: find inputs, settle the tokenizer, tokenize new files (on Ray actors or local processes),
commit a manifest.

Skeleton: parse config -> plan (what is new since the last manifest) -> run (an actor pool over splits:
read, normalise, tokenize, pack, write Parquet) -> commit (_manifest.json last) -> result record.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import posixpath
import random
import signal
import sys
import threading
import time
import uuid
from dataclasses import asdict, replace
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from electra_core import storage
from electra_core.tokenizer import CLS, SEP, TOKENIZER_FILE, save_tokenizer, train_tokenizer
from pipelines.config import PrepareConfig, saved_dict, to_dict
from pipelines.errors import InputError, check_writable_directory
from pipelines.prepare import manifest as manifests
from pipelines.prepare.encoding import SentenceEncoder
from pipelines.prepare.packing import SequencePacker
from pipelines.prepare.sources import (
    InputFile,
    ReadStats,
    Split,
    discover,
    group_splits,
    make_splits,
    NotText,
    probe,
    read_sample,
    read_whole,
    describe_error,
    read_split_batches,
)

# Text handed to the tokenizer at once: large enough for encode_batch to be efficient, small enough to bound memory.
TOKENIZE_BLOCK_CHARS = 1 << 20
# Config fields that change the sequences a file yields; a change re-tokenizes everything.
_CONTENT_FIELDS = ("seq_len", "documents", "text_field", "single_segment_prob", "short_seq_prob", "packing", "seed",
                   "split_mb", "shard_rows", "max_line_chars")


def run_prepare(config: PrepareConfig, address: str | None = None, log: Callable[[str], None] = print) -> dict:
    """Runs the stage; returns {output, manifest, skipped, seconds}. Bad input raises InputError."""
    started = time.perf_counter()
    if not config.output:
        raise InputError("--output is required")
    config = with_absolute_local_paths(config)
    files = discover(config.inputs, config.output)
    check_writable_directory(config.output, "--output")
    previous = with_absolute_sources(manifests.read_manifest(config.output))
    tokenizer = resolve_tokenizer(config, previous, files, log)
    # The canonical serialisation: what is written, hashed and handed to the actors is the same text.
    tokenizer_json = tokenizer.to_str()
    tokenizer_sha = hashlib.sha256(tokenizer_json.encode()).hexdigest()
    content_key = content_fingerprint(config, tokenizer_sha)

    # --- plan: reuse what the last manifest already holds for unchanged files ---------------------------
    damaged = set()
    if previous is not None:
        for shard, problem in manifests.damaged_shards(config.output, previous, checksums=config.verify):
            log(f"warning: {storage.join(config.output, shard['path'])}: {problem}; reading its files again")
            damaged.add(shard["path"])
    kept, kept_shards = reusable_parts(previous, files, content_key, damaged)
    kept_uris = {entry["uri"] for entry in kept}
    new_files = [f for f in files if f.uri not in kept_uris]
    if previous is not None and not new_files and len(kept) == len(previous["files"]):
        counts = previous["counts"]
        log(f"electra prepare: {config.output} is up to date ({counts['files']} files, "
            f"{counts['sequences']:,} sequences); nothing to do")
        return {"output": config.output, "manifest": previous, "skipped": True,
                "seconds": time.perf_counter() - started}
    if kept:
        log(f"electra prepare: {len(kept)} files unchanged since the last run; tokenizing {len(new_files)} new or "
            "changed (with any file that shared a read task with one)")

    # --- run ---------------------------------------------------------------------------------------------
    run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    publish_tokenizer(config.output, tokenizer, tokenizer_sha)
    new_entries, new_shards = tokenize_files(new_files, config, tokenizer_sha, run_id, address, log)

    # --- commit ------------------------------------------------------------------------------------------
    failed = [entry for entry in new_entries if entry["status"] == "failed"]
    for entry in failed:
        log(f"warning: {entry['uri']}: {entry['reason']}")
    for line in read_warnings(new_entries):
        log(line)
    if failed and config.strict:
        raise InputError(f"{failed[0]['uri']}: {failed[0]['reason']} (--strict; {len(failed)} files failed, "
                         "nothing committed)")
    manifest = build_manifest(config, kept + new_entries, kept_shards + new_shards, tokenizer.get_vocab_size(),
                              tokenizer_sha, content_key, previous, run_id)
    manifests.write_manifest(config.output, manifest)
    remove_unlisted_shards(config.output, manifest)

    seconds = time.perf_counter() - started
    counts = manifest["counts"]
    megabytes = sum(f.size for f in new_files) / 1e6
    log(f"electra prepare: {counts['files']} files ({counts['files_failed']} failed, {counts['files_skipped']} "
        f"skipped), {counts['documents']:,} documents, {counts['sequences']:,} sequences, {counts['tokens']:,} "
        f"tokens, pad {counts['pad_fraction']:.1%}; {megabytes:.1f} MB new in {seconds:.1f} s "
        f"({megabytes / seconds:.2f} MB/s) -> {manifests.manifest_uri(config.output)}")
    return {"output": config.output, "manifest": manifest, "skipped": False, "seconds": seconds}


def with_absolute_local_paths(config: PrepareConfig) -> PrepareConfig:
    """Local paths made absolute on the driver: the tokenizer actors of a cluster started in another directory
    would otherwise read and write relative to theirs. The manifest records them so."""
    return replace(config, inputs=[storage.absolute(uri) for uri in config.inputs],
                   output=storage.absolute(config.output), tokenizer=storage.absolute(config.tokenizer))


def with_absolute_sources(manifest: dict | None) -> dict | None:
    """A manifest written before local paths were made absolute names its inputs relative to the directory
    that run started in; they are read as relative to this one, so that unchanged files are still recognised
    (a run from another directory tokenizes them again, as a different input)."""
    if manifest is None:
        return None
    return {**manifest, "files": [{**entry, "uri": storage.absolute(entry["uri"])} for entry in manifest["files"]],
            "shards": [{**shard, "sources": [storage.absolute(uri) for uri in shard_sources(shard)]}
                       for shard in manifest["shards"]]}


def shard_sources(shard: dict) -> list[str]:
    """The files a shard was packed from (manifests before read tasks were grouped name one `source`)."""
    return shard["sources"] if "sources" in shard else [shard["source"]]


def reusable_parts(previous: dict | None, files: list[InputFile], content_key: str,
                   damaged: set[str]) -> tuple[list[dict], list[dict]]:
    """(manifest entries, shards) of the last run that this one keeps. A shard is kept when it is not damaged
    (missing, or not what the manifest lists) and every file it was packed from is unchanged and still an
    input; a file is kept when all of its shards are (a file of a group whose other member changed, or whose
    shard was damaged, is read again with it)."""
    if previous is None or previous.get("content_fingerprint") != content_key:
        return [], []
    current = {(f.uri, f.fingerprint) for f in files}
    unchanged = {entry["uri"] for entry in previous["files"] if (entry["uri"], entry["fingerprint"]) in current}
    shards = previous["shards"]
    broken = {uri for shard in shards if shard["path"] in damaged or not unchanged.issuperset(shard["sources"])
              for uri in shard["sources"]}
    kept_uris = unchanged - broken
    kept = [entry for entry in previous["files"] if entry["uri"] in kept_uris]
    return kept, [shard for shard in shards if kept_uris.issuperset(shard["sources"])]


def content_fingerprint(config: PrepareConfig, tokenizer_sha: str) -> str:
    settings = {name: getattr(config, name) for name in _CONTENT_FIELDS}
    return hashlib.sha256(json.dumps([settings, tokenizer_sha], sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------------------


def resolve_tokenizer(config: PrepareConfig, previous: dict | None, files: list[InputFile], log):
    """The tokenizer: the one given, else the output's own (so re-runs agree), else one trained."""
    if config.tokenizer:
        uri = config.tokenizer if config.tokenizer.endswith(".json") else storage.join(config.tokenizer, TOKENIZER_FILE)
        return _validated_tokenizer(uri)
    own = storage.join(config.output, TOKENIZER_FILE)
    if previous is not None and storage.exists(own):
        return _validated_tokenizer(own)
    budget = int(config.tokenizer_sample_mb * 1e6)
    log(f"electra prepare: training a WordPiece tokenizer (vocab {config.vocab_size:,}) on up to "
        f"{config.tokenizer_sample_mb:g} MB of the input")
    sample = read_sample(files, config.documents, config.text_field, config.max_line_chars, budget)
    tokenizer = train_tokenizer(sample, vocab_size=config.vocab_size)
    if tokenizer.get_vocab_size() <= 5:
        raise InputError(f"{config.inputs[0]}: no readable text to train a tokenizer on")
    return tokenizer


def _validated_tokenizer(uri: str):
    from tokenizers import Tokenizer

    try:
        text = storage.read_text(uri)
        tokenizer = Tokenizer.from_str(text)
    except FileNotFoundError:
        raise InputError(f"{uri}: tokenizer not found") from None
    except Exception as error:  # tokenizers raises a bare Exception for malformed files
        raise InputError(f"{uri}: not a valid tokenizer.json ({error})") from None
    if tokenizer.token_to_id(CLS) is None or tokenizer.token_to_id(SEP) is None:
        raise InputError(f"{uri}: tokenizer has no {CLS} and {SEP} tokens")
    return tokenizer


def publish_tokenizer(output: str, tokenizer, tokenizer_sha: str) -> None:
    """Writes tokenizer.json (plus the transformers side files) at the output's root, unless already there."""
    own = storage.join(output, TOKENIZER_FILE)
    if storage.exists(own) and hashlib.sha256(storage.read_bytes(own)).hexdigest() == tokenizer_sha:
        return
    save_tokenizer(tokenizer, output)


# ----------------------------------------------------------------------------------------------------------
# Tokenizing: read tasks on Ray actors or on local processes
# ----------------------------------------------------------------------------------------------------------


def tokenize_files(files: list[InputFile], config: PrepareConfig, tokenizer_sha: str, run_id: str,
                   address: str | None, log) -> tuple[list[dict], list[dict]]:
    """Manifest entries for `files` and the shards of those that were read."""
    entries: list[dict] = []
    per_file: list[list[Split]] = []
    split_bytes = int(config.split_mb * 1e6)
    for index, file in enumerate(files):
        entry = {**asdict(file), "status": "read", "reason": None, "documents": 0, "tokens": 0,
                 "invalid_utf8": 0, "bad_records": 0, "bytes_read": 0, "prepared_in": run_id}
        entries.append(entry)
        # A whole file is judged by the worker that reads it; a file cut into splits here, before any is read.
        verdict = probe(file) if not read_whole(file, split_bytes) else None
        if verdict is not None:
            entry["status"], entry["reason"] = verdict
            continue
        try:
            per_file.append(make_splits(index, file, split_bytes))
        except Exception as error:  # unreadable Parquet footer and the like
            entry["status"], entry["reason"] = "failed", describe_error(error)
    if not per_file:
        return entries, []

    on_ray = runs_on_ray(config.executor, address)
    if on_ray:
        from pipelines.ray_runtime import cluster_cpus, ensure_ray

        ensure_ray(address, dashboard=False)
        workers = config.workers or cluster_cpus()
    else:
        workers = config.workers or local_cpus()
    tasks = group_splits(per_file, split_bytes, workers)
    run_read_tasks = read_tasks_on_ray if on_ray else read_tasks_locally
    shards: list[dict] = []
    worker_args = {"tokenizer_sha": tokenizer_sha, "config": to_dict(config), "run_id": run_id}
    for result in run_read_tasks(ordered_tasks(tasks, log), min(workers, len(tasks)), worker_args, log):
        for part in result["files"]:
            entry = entries[part["file_index"]]
            for name in ("documents", "tokens", "invalid_utf8", "bad_records", "bytes_read"):
                entry[name] += part[name]
            if part["status"] != "read" and entry["status"] != "failed":
                entry["status"], entry["reason"] = part["status"], part["reason"]
        shards.extend(result["shards"])

    # Nothing of a failed file is committed: a reader never sees part of it. (A file read in a group fails
    # alone: its text is left out before packing, so only a file cut into several splits has shards to drop.)
    failed = {entry["uri"] for entry in entries if entry["status"] == "failed"}
    committed = []
    for shard in shards:
        if failed.intersection(shard["sources"]):
            storage.delete(storage.join(config.output, shard["path"]))
        else:
            committed.append(shard)
    for entry in entries:
        if entry["status"] == "failed":
            entry.update(documents=0, tokens=0)
    return entries, sorted(committed, key=shard_order)


def shard_order(shard: dict) -> tuple:
    """Where a new shard goes in the manifest: by the files it holds, then its split and number. Not by its
    name, which holds the run: the same input prepared twice lists its shards in the same order, so it is the
    same dataset (fingerprint, training order)."""
    split_and_number = shard["path"].rsplit("/", 1)[-1].split("-", 1)[1]
    return tuple(shard["sources"]), split_and_number


def runs_on_ray(executor: str, address: str | None) -> bool:
    """Whether the read tasks go to Ray (see PrepareConfig.executor)."""
    if executor != "auto":
        return executor == "ray"
    ray = sys.modules.get("ray")  # not imported for the question: importing Ray alone costs half a second
    return bool(address or os.environ.get("RAY_ADDRESS") or (ray is not None and ray.is_initialized()))


def local_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def ordered_tasks(tasks: list[list[Split]], log) -> list[tuple[str, int]]:
    """(the task as the workers get it, its bytes), largest first, so that the last to finish are small ones
    and no worker idles long at the end."""
    files = sum(len(task) for task in tasks)
    log(f"electra prepare: {files} files or file parts in {len(tasks)} read tasks")
    sized = [(json.dumps([split.to_json() for split in task]), sum(split.size for split in task)) for task in tasks]
    return sorted(sized, key=lambda item: item[1], reverse=True)


def read_tasks_on_ray(tasks: list[tuple[str, int]], workers: int, worker_args: dict, log) -> list[dict]:
    """The tasks on Ray actors, one per CPU, each given its next task as it finishes one.

    Plain actors, not a Ray Data actor pool: Ray Data's actors import Ray Data (pandas and all) and its
    executor polls on the driver; on a running 2-CPU head that was about a second per run (8.8 MB in 4 tasks:
    2.3-2.7 s of reading against 3.2-3.9 s on Ray Data), the cost of every small incremental run. A task whose
    actor dies is retried on the restarted actor (a task rewrites the same shards, so a retry is harmless)."""
    import ray

    log(f"electra prepare: {workers} tokenizer actors on Ray")
    # The actors read the tokenizer from the output (published before this), not from the object store.
    actor_class = ray.remote(num_cpus=1, max_restarts=2, max_task_retries=2)(TaskTokenizer)
    actors = [actor_class.remote(**worker_args) for _ in range(workers)]
    queue, running, results = list(tasks), {}, []
    progress = TaskProgress(tasks, log)

    def give(actor) -> None:
        task, size = queue.pop(0)
        running[actor.run.remote(task)] = (actor, size)

    try:
        for actor in actors[: len(queue)]:
            give(actor)
        while running:
            [finished], _ = ray.wait(list(running), num_returns=1)
            actor, size = running.pop(finished)
            try:
                results.append(json.loads(ray.get(finished)))
            except ray.exceptions.RayActorError as error:
                raise RuntimeError(f"a tokenizer actor died ({describe_error(error)}); nothing was committed, "
                                   "and the next run starts over") from None
            progress.finished(size)
            if queue:
                give(actor)
    finally:
        for actor in actors:  # their CPUs are free for the next stage at once, not when this driver exits
            ray.kill(actor)
    return results


def read_tasks_locally(tasks: list[tuple[str, int]], workers: int, worker_args: dict, log) -> list[dict]:
    """The same tasks on worker processes of this machine."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    log(f"electra prepare: {workers} tokenizer processes on this machine")
    results = []
    progress = TaskProgress(tasks, log)
    # spawn, not fork: the driver may hold the tokenizer's and Arrow's thread pools, which a fork would copy
    # mid-state.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_start_local_worker, initargs=(worker_args,)) as pool:
        with sigint_ignored_by_new_processes():  # the pool starts its processes as tasks are submitted
            pending = {pool.submit(_run_local_task, task): size for task, size in tasks}
        try:
            for future in as_completed(pending):
                results.append(json.loads(future.result()))
                progress.finished(pending[future])
        except BrokenProcessPool:
            raise RuntimeError("a tokenizer process died (out of memory?); nothing was committed, and the next "
                               "run starts over") from None
        except KeyboardInterrupt:
            # The workers ignore Ctrl-C (each would print a traceback); they are stopped here instead of being
            # waited for. The pool has no public way to stop running tasks.
            processes = list(pool._processes.values())
            pool.shutdown(wait=False, cancel_futures=True)
            for process in processes:
                process.terminate()
            raise
    return results


@contextlib.contextmanager
def sigint_ignored_by_new_processes():
    """Processes started inside start with SIGINT ignored. Ctrl-C reaches the whole process group, and a worker
    still importing when it lands would print its own traceback; the driver handles Ctrl-C. An ignored signal
    stays ignored across exec, and Python then installs no handler of its own. Only the main thread may change
    handlers; elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# Seconds between progress lines.
PROGRESS_SECONDS = 10.0


class TaskProgress:
    """A progress line at most every PROGRESS_SECONDS as read tasks finish: tasks, megabytes and MB/s."""

    def __init__(self, tasks: list[tuple[str, int]], log):
        self.tasks, self.total, self.log = len(tasks), sum(size for _, size in tasks), log
        self.count = self.done = 0
        self.started = self.last_report = time.perf_counter()

    def finished(self, size: int) -> None:
        self.count += 1
        self.done += size
        now = time.perf_counter()
        if now - self.last_report >= PROGRESS_SECONDS and self.count < self.tasks:
            self.last_report = now
            self.log(f"electra prepare: {self.count}/{self.tasks} read tasks, {self.done / 1e6:,.1f}/"
                     f"{self.total / 1e6:,.1f} MB, {self.done / 1e6 / (now - self.started):.2f} MB/s")


_local_worker: "TaskTokenizer | None" = None


def _start_local_worker(worker_args: dict) -> None:
    global _local_worker
    _local_worker = TaskTokenizer(**worker_args)


def _run_local_task(task: str) -> str:
    return _local_worker.run(task)


class TaskTokenizer:
    """A tokenizer worker (a Ray actor or a local process): loads the tokenizer once, then reads,
    tokenizes, packs and writes each task it gets."""

    def __init__(self, tokenizer_sha: str, config: dict, run_id: str):
        # One tokenizer thread per worker: there is already one worker per CPU.
        os.environ["RAYON_NUM_THREADS"] = "1"
        from tokenizers import Tokenizer

        self.config = PrepareConfig(**config)
        uri = storage.join(self.config.output, TOKENIZER_FILE)
        text = storage.read_bytes(uri)
        if hashlib.sha256(text).hexdigest() != tokenizer_sha:
            raise RuntimeError(f"{uri} changed while this run was using it")
        self.encoder = SentenceEncoder(Tokenizer.from_str(text.decode()))
        self.run_id = run_id

    def run(self, task: str) -> str:
        splits = [Split.from_json(item) for item in json.loads(task)]
        return json.dumps(process_task(splits, self.encoder, self.config, self.run_id))


def process_task(splits: list[Split], encoder: SentenceEncoder, config: PrepareConfig, run_id: str) -> dict:
    """Reads the task's splits, packs them into one stream of sequences and writes its shards. Errors are
    returned per file, not raised, so the run goes on."""
    first = splits[0]
    packer = SequencePacker(
        config.seq_len, encoder.tokenizer.token_to_id(CLS), encoder.sep_id,
        # Seeded by the file's name, not its whole URI: the same files give the same sequences wherever they are.
        random.Random(f"{config.seed}:{posixpath.basename(first.uri)}:{first.split_index}"),
        config.single_segment_prob, config.short_seq_prob, dense=config.packing == "dense",
    )
    # Named by the task's first file and split and by the run: shards sort in split order within a file, no two
    # tasks of a run share a name, and a run never writes over a shard that the last manifest lists (killed
    # half way, it would leave that manifest pointing at other data).
    file_key = hashlib.sha256(f"{first.uri}|{run_id}".encode()).hexdigest()[:16]
    writer = ShardWriter(config.output, f"shards/{file_key}-{first.split_index:05d}", config.shard_rows,
                         config.seq_len)
    if len(splits) == 1:
        # Streamed: a file that fails part way has text in the shards already, so they name it, and the
        # driver drops them with the rest of the file.
        parts = [stream_split(first, encoder, packer, writer, config)]
        sources = [first.uri]
    else:
        parts = pack_whole_files(splits, encoder, packer, writer, config)
        sources = sorted({split.uri for split, part in zip(splits, parts) if part["status"] == "read"})
    packer.finish()
    writer.add(*packer.take())
    writer.flush(final=True)
    for shard in writer.shards:
        shard["sources"] = sources
    return {"files": parts, "shards": writer.shards}


def sentence_batches(split: Split, config: PrepareConfig, stats: ReadStats):
    return read_split_batches(split, config.documents, config.text_field, config.max_line_chars, stats)


def stream_split(split: Split, encoder: SentenceEncoder, packer: SequencePacker, writer: "ShardWriter",
                 config: PrepareConfig) -> dict:
    """One split read block by block (a large file's byte range, or a compressed file of any size)."""
    stats = ReadStats()
    tokens = 0
    try:
        block = SentenceBlock()
        for batch in sentence_batches(split, config, stats):
            if block.add(*batch) >= TOKENIZE_BLOCK_CHARS:
                tokens += sum(block.pack(encoder, packer))
                writer.add(*packer.take())
                block = SentenceBlock()
        block.add([], [0])  # the split's last document ends here
        tokens += sum(block.pack(encoder, packer))
        writer.add(*packer.take())
    except NotText as verdict:  # found in the first block, before anything of it was packed
        return split_result(split, stats, 0, "skipped", str(verdict))
    except Exception as failure:  # a corrupt or truncated file fails alone; the others carry on
        return split_result(split, stats, tokens, "failed", describe_error(failure))
    return split_result(split, stats, tokens, *read_status(split, stats))


def pack_whole_files(splits: list[Split], encoder: SentenceEncoder, packer: SequencePacker,
                     writer: "ShardWriter", config: PrepareConfig) -> list[dict]:
    """Files of a group: each is read whole first, so that one that fails is left out before anything of it
    is packed; the others are tokenized together (one encode per block of text, not per file)."""
    parts, owners = [], []
    block = SentenceBlock()
    for split in splits:
        own, part = read_file_whole(split, config)
        parts.append(part)
        if part["status"] == "read":
            block.add(own.sentences, own.document_ends)
            owners.append((len(block.sentences), part))
        if block.chars >= TOKENIZE_BLOCK_CHARS or split is splits[-1]:
            lengths = block.pack(encoder, packer)
            start = 0
            for end, part in owners:
                part["tokens"] = int(sum(lengths[start:end]))
                start = end
            writer.add(*packer.take())
            block, owners = SentenceBlock(), []
    return parts


def read_file_whole(split: Split, config: PrepareConfig) -> tuple["SentenceBlock", dict]:
    """A whole file's sentences, and what was read of it (a file that fails holds no sentences)."""
    stats = ReadStats()
    own = SentenceBlock()
    try:
        for batch in sentence_batches(split, config, stats):
            own.add(*batch)
        own.add([], [0])  # the file's last document ends here
    except NotText as verdict:
        return SentenceBlock(), split_result(split, stats, 0, "skipped", str(verdict))
    except Exception as failure:
        return SentenceBlock(), split_result(split, stats, 0, "failed", describe_error(failure))
    return own, split_result(split, stats, 0, *read_status(split, stats))


def read_status(split: Split, stats: ReadStats) -> tuple[str, None]:
    """(status, reason) of a split read to its end: a whole file that held nothing (compressed, say) is empty."""
    return ("empty" if split.end == -1 and stats.bytes_read == 0 else "read"), None


def split_result(split: Split, stats: ReadStats, tokens: int, status: str, reason: str | None) -> dict:
    """What a task read of one split; status as in the manifest (read, empty, skipped or failed)."""
    return {"file_index": split.file_index, "documents": stats.documents, "tokens": tokens,
            "invalid_utf8": stats.invalid_utf8, "bad_records": stats.bad_records, "bytes_read": stats.bytes_read,
            "status": status, "reason": reason}


class SentenceBlock:
    """Sentences read since the last tokenization, and where documents end among them."""

    def __init__(self) -> None:
        self.sentences: list[str] = []
        self.document_ends: list[int] = []  # sentence counts at which a document ended
        self.chars = 0

    def add(self, sentences: list[str], document_ends: list[int]) -> int:
        """Adds a batch from read_split_batches; returns the characters held."""
        offset = len(self.sentences)
        self.document_ends.extend(offset + end for end in document_ends)
        self.sentences.extend(sentences)
        self.chars += sum(map(len, sentences))
        return self.chars

    def pack(self, encoder: SentenceEncoder, packer: SequencePacker) -> list[int]:
        """Tokenizes the block and feeds it, document by document, to the packer; returns each sentence's
        number of tokens."""
        ids, lengths = encoder.encode(self.sentences)
        sentence = token = 0
        # None: the sentences after the last document end, whose document goes on in the next block.
        for end in [*self.document_ends, None]:
            stop = len(self.sentences) if end is None else end
            document_lengths = lengths[sentence:stop]
            count = sum(document_lengths)
            packer.add_sentences(ids[token: token + count], document_lengths)
            if end is not None:
                packer.end_document()
            sentence, token = stop, token + count
        return lengths


class ShardWriter:
    """Buffers packed sequences and writes them as zstd Parquet shards of at most `rows_per_shard` rows."""

    def __init__(self, output: str, prefix: str, rows_per_shard: int, seq_len: int):
        self.output, self.prefix, self.rows_per_shard = output, prefix, rows_per_shard
        self.sequences: list[np.ndarray] = []
        self.token_types: list[np.ndarray] = []
        self.shards: list[dict] = []
        self.rows = 0
        self.tokens = 0

    def add(self, sequences: list[np.ndarray], token_types: list[np.ndarray]) -> None:
        self.sequences.extend(sequences)
        self.token_types.extend(token_types)
        self.flush(final=False)

    def flush(self, final: bool) -> None:
        while len(self.sequences) >= self.rows_per_shard or (final and self.sequences):
            count = min(len(self.sequences), self.rows_per_shard)
            self._write(self.sequences[:count], self.token_types[:count])
            del self.sequences[:count], self.token_types[:count]

    def _write(self, sequences: list[np.ndarray], token_types: list[np.ndarray]) -> None:
        path = f"{self.prefix}-{len(self.shards):04d}.parquet"
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int32, count=len(sequences))
        offsets = arrow_array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
        table = pa.table({
            "input_ids": pa.ListArray.from_arrays(offsets, arrow_array(np.concatenate(sequences))),
            "token_type_ids": pa.ListArray.from_arrays(offsets, arrow_array(np.concatenate(token_types))),
        })
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd")
        data = sink.getvalue()
        storage.write_bytes(storage.join(self.output, path), data)
        tokens = int(lengths.sum())
        self.shards.append({"path": path, "rows": len(sequences), "tokens": tokens, "bytes": len(data),
                            "sha256": hashlib.sha256(data).hexdigest()})
        self.rows += len(sequences)
        self.tokens += tokens


def arrow_array(values: np.ndarray) -> pa.Array:
    """A numpy array as an Arrow array without a copy. pa.array() would do the same, but on its first numpy
    array in a process it imports pandas, 0.3 s of each worker's start."""
    values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])


# ----------------------------------------------------------------------------------------------------------
# Commit
# ----------------------------------------------------------------------------------------------------------


def build_manifest(config: PrepareConfig, entries: list[dict], shards: list[dict], vocab_size: int,
                   tokenizer_sha: str, content_key: str, previous: dict | None, run_id: str) -> dict:
    read = [e for e in entries if e["status"] == "read"]
    sequences = sum(shard["rows"] for shard in shards)
    tokens = sum(shard["tokens"] for shard in shards)  # special tokens included: what fills the sequences
    slots = sequences * config.seq_len
    runs = list((previous or {}).get("runs", []))
    runs.append({"run_id": run_id, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "files_added": [e["uri"] for e in entries if e["prepared_in"] == run_id]})
    manifest = {
        "kind": manifests.KIND,
        "schema_version": manifests.SCHEMA_VERSION,
        "run_id": run_id,
        "config": saved_dict(config),
        "content_fingerprint": content_key,
        "seq_len": config.seq_len,
        "tokenizer": {"path": TOKENIZER_FILE, "sha256": tokenizer_sha,
                      "vocab_size": vocab_size},
        "counts": {
            "files": len(entries),
            "files_read": len(read),
            "files_empty": sum(e["status"] == "empty" for e in entries),
            "files_skipped": sum(e["status"] == "skipped" for e in entries),
            "files_failed": sum(e["status"] == "failed" for e in entries),
            "documents": sum(e["documents"] for e in read),
            "sequences": sequences,
            "tokens": tokens,
            "pad_fraction": 1.0 - tokens / slots if slots else 0.0,
            "invalid_utf8": sum(e["invalid_utf8"] for e in entries),
            "bad_records": sum(e["bad_records"] for e in entries),
        },
        "files": entries,
        "shards": shards,
        "runs": runs,
    }
    manifest["dataset_fingerprint"] = manifests.fingerprint(manifest)
    return manifest


def remove_unlisted_shards(output: str, manifest: dict) -> None:
    """Deletes shard files no manifest refers to (left by a changed config, a failed file or a killed run)."""
    fs, path = storage.filesystem(storage.join(output, "shards"))
    if not fs.exists(path):
        return
    listed = {shard["path"].split("/")[-1] for shard in manifest["shards"]}
    stale = [p for p in fs.find(path) if p.rsplit("/", 1)[-1] not in listed]
    if stale:
        fs.rm(stale)


def read_warnings(entries: list[dict]) -> list[str]:
    """What the user is told about files read with replaced bytes or skipped (each is in the manifest too):
    one line per text file in another encoding, one line for the rest of each kind."""
    lines = []
    replaced = [e for e in entries if e["invalid_utf8"]]
    if replaced:
        named = ", ".join(f"{e['uri']} ({e['invalid_utf8']:,})" for e in replaced[:3])
        lines.append(f"warning: invalid UTF-8 bytes replaced with U+FFFD in {files(len(replaced))}: {named}"
                     f"{', ...' if len(replaced) > 3 else ''}")
    skipped = [e for e in entries if e["status"] == "skipped"]
    wide = [e for e in skipped if "byte-order mark" in (e["reason"] or "")]
    lines += [f"warning: {e['uri']}: skipped, {e['reason']}" for e in wide]
    binary = [e for e in skipped if e not in wide]
    if binary:
        named = ", ".join(e["uri"].rsplit("/", 1)[-1] for e in binary[:3])
        lines.append(f"note: {files(len(binary))} skipped as not text ({named}{', ...' if len(binary) > 3 else ''}); "
                     "the manifest lists each with its reason")
    return lines


def files(count: int) -> str:
    return f"{count:,} file" if count == 1 else f"{count:,} files"

