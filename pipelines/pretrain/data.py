"""Training data: a deterministic sample order over a prepared dataset, and padded batches from it.

Every sample has a global id: its row's position when the manifest's shards are laid end to end. The order of
epoch e is a function of (seed, e) alone: shards are permuted, taken in windows of `shuffle_window`, and the
rows of each window permuted. Global position p of the run (step * global_batch + offset) maps to
epoch p // N and to the (p % N)-th id of that epoch's order, so a restart at any step reads exactly the samples
an uninterrupted run would have read, for any number of workers.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
import queue
import tempfile
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Callable

import numpy as np
import pyarrow.parquet as pq
import torch

from electra_core import storage


class SampleOrder:
    """Maps global positions of the run to sample ids."""

    def __init__(self, shard_rows: list[int], seed: int, shuffle_window: int):
        self.shard_rows = np.asarray(shard_rows, dtype=np.int64)
        self.shard_offsets = np.concatenate([[0], np.cumsum(self.shard_rows)])
        self.num_samples = int(self.shard_offsets[-1])
        if self.num_samples == 0:
            raise ValueError("the dataset has no sequences")
        self.seed = seed
        self.shuffle_window = shuffle_window

    def sample_ids(self, start: int, count: int) -> np.ndarray:
        """Ids of the samples at run positions start .. start + count - 1 (wrapping into later epochs)."""
        positions = np.arange(start, start + count, dtype=np.int64)
        ids = np.empty(count, dtype=np.int64)
        for epoch in np.unique(positions // self.num_samples):
            in_epoch = positions // self.num_samples == epoch
            ids[in_epoch] = self._epoch_ids(int(epoch), positions[in_epoch] % self.num_samples)
        return ids

    def locate(self, sample_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard index, row within shard) of each sample id."""
        shards = np.searchsorted(self.shard_offsets, sample_ids, side="right") - 1
        return shards, sample_ids - self.shard_offsets[shards]

    def _epoch_ids(self, epoch: int, offsets: np.ndarray) -> np.ndarray:
        window_starts, shard_order = self._epoch_layout(epoch)
        windows = np.searchsorted(window_starts, offsets, side="right") - 1
        ids = np.empty(len(offsets), dtype=np.int64)
        for window in np.unique(windows):
            members = windows == window
            ids[members] = self._window_ids(epoch, int(window), shard_order)[offsets[members] - window_starts[window]]
        return ids

    @lru_cache(maxsize=4)
    def _epoch_layout(self, epoch: int) -> tuple[np.ndarray, tuple[int, ...]]:
        shard_order = np.random.default_rng([self.seed, epoch]).permutation(len(self.shard_rows))
        windows = [shard_order[i: i + self.shuffle_window] for i in range(0, len(shard_order), self.shuffle_window)]
        sizes = [int(self.shard_rows[w].sum()) for w in windows]
        return np.concatenate([[0], np.cumsum(sizes)]), tuple(int(s) for s in shard_order)

    @lru_cache(maxsize=4)
    def _window_ids(self, epoch: int, window: int, shard_order: tuple[int, ...]) -> np.ndarray:
        members = shard_order[window * self.shuffle_window: (window + 1) * self.shuffle_window]
        ids = np.concatenate([np.arange(self.shard_offsets[s], self.shard_offsets[s + 1]) for s in members])
        return np.random.default_rng([self.seed, epoch, window]).permutation(ids)


class NodeShardCache:
    """Shards from object storage downloaded once per node, into a local directory that the node's ranks share.

    The ranks of a node read different rows of the same shuffle window at the same time, so without this each
    of them downloads every shard of the window (8 GPUs: 8 downloads of each). Files are named by their sha256:
    the first rank to need one takes a lock on it, downloads and renames it into place; the others wait on the
    lock and read the local copy. Only the newest `max_files` are kept (the ranks move through the windows in
    step, so a few windows' worth suffice); a rank that still reads a file being removed keeps its open copy.
    """

    def __init__(self, directory: str, max_files: int):
        self.directory = directory
        self.max_files = max_files
        os.makedirs(directory, exist_ok=True)

    @classmethod
    def for_dataset(cls, data_uri: str, fingerprint: str, max_files: int) -> "NodeShardCache | None":
        """A cache under the system's temporary directory for data on object storage; None for local data."""
        if "://" not in data_uri or data_uri.startswith("file://"):
            return None
        return cls(os.path.join(tempfile.gettempdir(), "electra-shards", fingerprint), max_files)

    def read(self, uri: str, sha256: str) -> bytes:
        """The shard's bytes, verified against `sha256` once (a mismatch from storage raises ValueError)."""
        path = os.path.join(self.directory, f"{sha256}.parquet")
        data = _verified_file(path, sha256)
        if data is not None:
            os.utime(path)  # recently used: kept ahead of older shards
            return data
        with open(path + ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            data = _verified_file(path, sha256)  # another rank fetched it while this one waited
            if data is None:
                data = checked_shard(uri, storage.read_bytes(uri), sha256)  # a damaged download is not kept
                partial = f"{path}.{os.getpid()}.partial"
                with open(partial, "wb") as handle:
                    handle.write(data)
                os.replace(partial, path)
        self._evict()
        return data

    def _evict(self) -> None:
        files = [os.path.join(self.directory, n) for n in os.listdir(self.directory) if n.endswith(".parquet")]
        if len(files) <= self.max_files:
            return
        for path in sorted(files, key=_modified)[: len(files) - self.max_files]:
            for stale in (path, path + ".lock"):
                try:
                    os.unlink(stale)
                except FileNotFoundError:
                    pass


def checked_shard(uri: str, data: bytes, sha256: str) -> bytes:
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError(f"{uri}: checksum does not match the manifest; the dataset is damaged")
    return data


def _modified(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except FileNotFoundError:
        return 0.0


def _verified_file(path: str, sha256: str) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return None
    return data if hashlib.sha256(data).hexdigest() == sha256 else None


class ShardReader:
    """Loads shards (verifying their sha256) into padded arrays, keeping the most recently used ones.

    A batch drawn across a shuffle window needs several shards at once (the first batch of a window: all of
    them); the ones not cached are fetched in parallel, so on object storage that costs one round trip instead
    of one per shard (benchmarks/data_wait.py).
    """

    PARALLEL_READS = 8

    def __init__(self, data_uri: str, shards: list[dict], seq_len: int, pad_token_id: int, cache_shards: int = 16,
                 node_cache: NodeShardCache | None = None):
        self.data_uri = data_uri
        self.node_cache = node_cache
        self.shards = shards
        self.seq_len = seq_len
        self.pad_token_id = pad_token_id
        self.cache_shards = cache_shards
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = OrderedDict()

    def _loaded(self, indices: list[int]) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        missing = [i for i in indices if i not in self._cache]
        if len(missing) > 1:
            with ThreadPoolExecutor(min(len(missing), self.PARALLEL_READS)) as pool:
                self._cache.update(zip(missing, pool.map(self._load_shard, missing)))
        elif missing:
            self._cache[missing[0]] = self._load_shard(missing[0])
        for index in indices:
            self._cache.move_to_end(index)
        while len(self._cache) > max(self.cache_shards, len(indices)):
            self._cache.popitem(last=False)  # least recently used, never one this batch needs
        return {index: self._cache[index] for index in indices}

    def batch(self, order: SampleOrder, sample_ids: np.ndarray) -> dict[str, np.ndarray]:
        """input_ids, token_type_ids and attention_mask of the samples, padded to seq_len."""
        shards, rows = order.locate(sample_ids)
        input_ids = np.full((len(sample_ids), self.seq_len), self.pad_token_id, dtype=np.int64)
        token_type_ids = np.zeros((len(sample_ids), self.seq_len), dtype=np.int64)
        lengths = np.zeros(len(sample_ids), dtype=np.int64)
        needed = [int(shard) for shard in np.unique(shards)]
        for shard, (ids, types, shard_lengths) in self._loaded(needed).items():
            members = np.nonzero(shards == shard)[0]
            input_ids[members] = ids[rows[members]]
            token_type_ids[members] = types[rows[members]]
            lengths[members] = shard_lengths[rows[members]]
        attention_mask = (np.arange(self.seq_len)[None, :] < lengths[:, None]).astype(np.int64)
        return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask}

    def _load_shard(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        shard = self.shards[index]
        uri = storage.join(self.data_uri, shard["path"])
        if self.node_cache:
            data = self.node_cache.read(uri, shard["sha256"])  # checked against the manifest there
        else:
            data = checked_shard(uri, storage.read_bytes(uri), shard["sha256"])
        table = pq.read_table(io.BytesIO(data))
        return (_padded(table.column("input_ids"), self.seq_len, self.pad_token_id),
                _padded(table.column("token_type_ids"), self.seq_len, 0),
                np.asarray(table.column("input_ids").combine_chunks().value_lengths()))


def _padded(column, seq_len: int, pad: int) -> np.ndarray:
    array = column.combine_chunks()
    lengths = np.asarray(array.value_lengths())
    if len(lengths) and lengths.max() > seq_len:
        raise ValueError(f"a sequence of {lengths.max()} tokens is longer than seq_len {seq_len}")
    values = np.asarray(array.flatten())
    out = np.full((len(lengths), seq_len), pad, dtype=values.dtype)
    mask = np.arange(seq_len)[None, :] < lengths[:, None]
    out[mask] = values
    return out


def as_tensors(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {key: torch.from_numpy(value) for key, value in batch.items()}


class BatchPrefetcher:
    """The micro-batches of the coming steps, assembled on a background thread in the order the loop takes them.

    Which samples a (step, micro-batch) holds is a pure function of the run position (`plan`), so reading ahead
    changes nothing the step sees: a resumed run starts the prefetcher at its own step. Reading a shard (a
    download on object storage, the sha256, the Parquet decode) then overlaps the model step instead of stalling
    it. `depth` batches wait ready; on GPUs they are in pinned memory, so the copy to the device is asynchronous.
    An error in the reader (a damaged shard) is raised by `get`, on the training thread.
    """

    def __init__(self, read: Callable[[int, int], dict[str, np.ndarray]], steps: range, accumulation: int,
                 depth: int, pin_memory: bool = False):
        self._read, self._steps, self._accumulation, self._pin = read, steps, accumulation, pin_memory
        self._ready: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, name="batch-prefetcher", daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        try:
            for step in self._steps:
                for micro in range(self._accumulation):
                    tensors = as_tensors(self._read(step, micro))
                    if self._pin:
                        tensors = {k: v.pin_memory() for k, v in tensors.items()}
                    if not self._put((step, micro, tensors)):
                        return
        except BaseException as error:  # handed to the training thread
            self._put((None, None, error))

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def get(self, step: int, micro: int) -> tuple[dict[str, torch.Tensor], float]:
        """(the tensors of this micro-batch, seconds the caller waited for them)."""
        started = time.perf_counter()
        got_step, got_micro, tensors = self._ready.get()
        waited = time.perf_counter() - started
        if isinstance(tensors, BaseException):
            raise tensors
        if (got_step, got_micro) != (step, micro):
            raise RuntimeError(f"prefetcher out of step: asked for {(step, micro)}, had {(got_step, got_micro)}")
        return tensors, waited

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class DirectBatches:
    """The same interface read on the training thread (prefetch 0): what the wait costs without a prefetcher."""

    def __init__(self, read: Callable[[int, int], dict[str, np.ndarray]]):
        self._read = read

    def get(self, step: int, micro: int) -> tuple[dict[str, torch.Tensor], float]:
        started = time.perf_counter()
        return as_tensors(self._read(step, micro)), time.perf_counter() - started

    def close(self) -> None:
        pass


class RankBatches:
    """The data loader of one rank: its micro-batches of every step, in the run's deterministic order.

    Step s of a run that began reading this dataset at step `data_start` covers the run positions
    [(s - data_start) * global_batch, ...); micro-batch m of rank r is the slice at (m * world_size + r) *
    micro_batch of it. So the samples a step sees depend on the step alone, not on when the run was resumed or
    on read-ahead: the prefetcher (`prefetch` > 0) only moves the reading off the training thread.
    """

    def __init__(self, data_uri: str, manifest: dict, pad_token_id: int, *, seed: int, shuffle_window: int,
                 global_batch: int, micro_batch: int, rank: int, world_size: int):
        self.order = SampleOrder([s["rows"] for s in manifest["shards"]], seed, shuffle_window)
        # A shuffle window reads its shards interleaved, and read-ahead may reach into the next window: two
        # windows. On object storage, a node's ranks share one download of each shard (a few windows on disk).
        node_cache = NodeShardCache.for_dataset(data_uri, manifest["dataset_fingerprint"], 4 * shuffle_window)
        self.reader = ShardReader(data_uri, manifest["shards"], manifest["seq_len"], pad_token_id,
                                  cache_shards=2 * shuffle_window, node_cache=node_cache)
        self.global_batch, self.micro_batch = global_batch, micro_batch
        self.rank, self.world_size = rank, world_size
        self.data_start = 0
        self._batches: BatchPrefetcher | DirectBatches | None = None

    def start(self, steps: range, accumulation: int, prefetch: int, data_start: int,
              pin_memory: bool = False) -> None:
        """Begin serving `steps` (read ahead `prefetch` micro-batches; 0 reads on the training thread)."""
        self.data_start = data_start
        self._batches = BatchPrefetcher(self.read_micro_batch, steps, accumulation, prefetch, pin_memory) \
            if prefetch else DirectBatches(self.read_micro_batch)

    def position(self, step: int) -> int:
        """Samples of this dataset consumed before `step`."""
        return (step - self.data_start) * self.global_batch

    def epoch(self, steps_done: int) -> float:
        return self.position(steps_done) / self.order.num_samples

    def step_sample_ids(self, step: int) -> np.ndarray:
        """Every sample of the step's global batch, all ranks together."""
        return self.order.sample_ids(self.position(step), self.global_batch)

    def read_micro_batch(self, step: int, micro: int) -> dict[str, np.ndarray]:
        start = self.position(step) + (micro * self.world_size + self.rank) * self.micro_batch
        return self.reader.batch(self.order, self.order.sample_ids(start, self.micro_batch))

    def get(self, step: int, micro: int) -> tuple[dict[str, torch.Tensor], float]:
        """(the tensors of this rank's micro-batch, seconds the training thread waited for them)."""
        return self._batches.get(step, micro)

    def close(self) -> None:
        if self._batches is not None:
            self._batches.close()

