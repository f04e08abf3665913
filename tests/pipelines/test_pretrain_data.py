"""Pretraining batches read ahead on a background thread: the same batches in the same order, the wait measured,
and a damaged shard still an error on the training thread."""

import time

import numpy as np
import pytest
import torch

from pipelines.pretrain.data import BatchPrefetcher, DirectBatches


def planned(step: int, micro: int) -> dict[str, np.ndarray]:
    """A stand-in for ShardReader.batch over the run's plan: its contents say which (step, micro) it is."""
    return {"input_ids": np.full((2, 4), step * 10 + micro, dtype=np.int64)}


def slow(step: int, micro: int) -> dict[str, np.ndarray]:
    time.sleep(0.05)  # a shard read from object storage
    return planned(step, micro)


@pytest.mark.parametrize("make", [lambda read: BatchPrefetcher(read, range(3, 7), 2, depth=3),
                                  lambda read: DirectBatches(read)], ids=["prefetched", "direct"])
def test_the_loop_gets_exactly_the_planned_batches_from_a_resumed_step(make):
    batches = make(planned)
    for step in range(3, 7):
        for micro in range(2):
            tensors, waited = batches.get(step, micro)
            assert tensors["input_ids"].tolist() == planned(step, micro)["input_ids"].tolist() and waited >= 0
    batches.close()


def test_reading_ahead_hides_a_slow_read_behind_the_step_and_the_wait_says_so():
    def waits(batches) -> float:
        total = 0.0
        for step in range(10):
            time.sleep(0.06)  # the model step, longer than a read
            total += batches.get(step, 0)[1]
        batches.close()
        return total

    direct = waits(DirectBatches(slow))
    prefetched = waits(BatchPrefetcher(slow, range(10), 1, depth=2))
    assert direct >= 10 * 0.05 and prefetched < direct / 3


def test_a_reader_error_is_raised_on_the_training_thread():
    def damaged(step: int, micro: int):
        if step == 2:
            raise ValueError("shards/part-00002.parquet: checksum does not match the manifest; the dataset is damaged")
        return planned(step, micro)

    batches = BatchPrefetcher(damaged, range(5), 1, depth=4)
    batches.get(0, 0), batches.get(1, 0)
    with pytest.raises(ValueError, match="part-00002.parquet: checksum"):
        batches.get(2, 0)
    batches.close()


def test_a_batch_across_many_shards_reads_them_together_and_a_small_cache_still_serves_it(tmp_path):
    import io

    import pyarrow.parquet as pq

    from electra_core import storage
    from pipelines.config import PrepareConfig
    from pipelines.prepare import run_prepare
    from pipelines.prepare.manifest import load_committed_dataset
    from pipelines.pretrain.data import SampleOrder, ShardReader
    from tests.pipelines.conftest import make_sentences

    (tmp_path / "corpus.txt").write_text("\n".join(make_sentences(800)))
    output = str(tmp_path / "prepared")
    run_prepare(PrepareConfig(inputs=[str(tmp_path / "corpus.txt")], output=output, seq_len=32, vocab_size=300,
                              shard_rows=16, executor="local"), log=lambda _: None)
    manifest = load_committed_dataset(output)
    order = SampleOrder([s["rows"] for s in manifest["shards"]], seed=0, shuffle_window=8)
    reader = ShardReader(output, manifest["shards"], 32, pad_token_id=0, cache_shards=2)
    ids = order.sample_ids(0, 64)  # the first window: rows of 8 shards
    shards, rows = order.locate(ids)
    assert len(set(shards.tolist())) > 2  # more shards than the cache holds

    batch = reader.batch(order, ids)
    for i, (shard, row) in enumerate(zip(shards, rows)):
        table = pq.read_table(io.BytesIO(storage.read_bytes(f"{output}/{manifest['shards'][shard]['path']}")))
        expected = table.column("input_ids")[int(row)].as_py()
        assert batch["input_ids"][i, : len(expected)].tolist() == expected
        assert batch["attention_mask"][i].sum() == len(expected)
    assert len(reader._cache) == len(set(shards.tolist()))  # all kept while the batch needed them
    reader.batch(order, order.sample_ids(64, 4))
    assert len(reader._cache) <= max(2, len(set(order.locate(order.sample_ids(64, 4))[0].tolist())))


# --- the loader of one rank -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def local_dataset(tmp_path_factory):
    from pipelines.config import PrepareConfig
    from pipelines.prepare import run_prepare
    from pipelines.prepare.manifest import load_committed_dataset
    from tests.pipelines.conftest import make_sentences

    work = tmp_path_factory.mktemp("loader")
    (work / "corpus.txt").write_text("\n".join(make_sentences(400)))
    run_prepare(PrepareConfig(inputs=[str(work / "corpus.txt")], output=str(work / "prepared"), seq_len=32,
                              vocab_size=300, shard_rows=16, executor="local"), log=lambda _: None)
    return str(work / "prepared"), load_committed_dataset(str(work / "prepared"))


def rank_batches(dataset, rank=0, world_size=1, micro_batch=4):
    from pipelines.pretrain.data import RankBatches

    uri, manifest = dataset
    return RankBatches(uri, manifest, 0, seed=3, shuffle_window=4, global_batch=micro_batch * world_size * 2,
                       micro_batch=micro_batch, rank=rank, world_size=world_size)


def test_the_ranks_micro_batches_are_the_steps_global_batch_in_order(local_dataset):
    ranks = [rank_batches(local_dataset, rank, world_size=2) for rank in range(2)]
    whole = rank_batches(local_dataset, world_size=2)
    for loader in ranks:
        loader.start(range(5), accumulation=2, prefetch=2, data_start=0)
    for step in range(5):
        # micro-batch m of rank r is slice m * world_size + r of the global batch
        pieces = [ranks[rank].get(step, micro)[0]["input_ids"] for micro in range(2) for rank in range(2)]
        expected = whole.reader.batch(whole.order, whole.step_sample_ids(step))["input_ids"]
        assert np.array_equal(np.concatenate([piece.numpy() for piece in pieces]), expected)
    for loader in ranks:
        loader.close()


def test_a_loader_started_at_a_later_step_serves_what_an_uninterrupted_one_did(local_dataset):
    uninterrupted, resumed = rank_batches(local_dataset), rank_batches(local_dataset)
    uninterrupted.start(range(0, 8), accumulation=2, prefetch=0, data_start=0)
    resumed.start(range(5, 8), accumulation=2, prefetch=3, data_start=0)
    for step in range(8):
        for micro in range(2):
            first = uninterrupted.get(step, micro)[0]
            if step >= 5:
                again = resumed.get(step, micro)[0]
                assert all(torch.equal(first[key], again[key]) for key in first)
    uninterrupted.close(), resumed.close()


def test_a_new_data_segment_reads_the_dataset_from_its_first_sample(local_dataset):
    fresh, continued = rank_batches(local_dataset), rank_batches(local_dataset)
    fresh.start(range(0, 2), accumulation=2, prefetch=0, data_start=0)
    continued.start(range(40, 42), accumulation=2, prefetch=0, data_start=40)  # scheduled retraining on new data
    assert continued.epoch(41) == fresh.epoch(1)
    for step in range(2):
        assert torch.equal(fresh.get(step, 0)[0]["input_ids"], continued.get(40 + step, 0)[0]["input_ids"])


# --- shards shared by the ranks of a node ----------------------------------------------------------------------

@pytest.fixture
def dataset_on_s3(tmp_path, s3_bucket):
    """A prepared dataset of many small shards on moto's S3 (127.0.0.1)."""
    from electra_core import storage
    from pipelines.config import PrepareConfig
    from pipelines.prepare import run_prepare
    from pipelines.prepare.manifest import load_committed_dataset
    from tests.pipelines.conftest import make_sentences

    (tmp_path / "corpus.txt").write_text("\n".join(make_sentences(400)))
    run_prepare(PrepareConfig(inputs=[str(tmp_path / "corpus.txt")], output=str(tmp_path / "prepared"), seq_len=32,
                              vocab_size=300, shard_rows=16, executor="local"), log=lambda _: None)
    fs, _ = storage.filesystem(s3_bucket)
    fs.put(str(tmp_path / "prepared") + "/", f"{s3_bucket[5:]}/prepared", recursive=True)
    uri = f"{s3_bucket}/prepared"
    return uri, load_committed_dataset(uri)


@pytest.fixture
def storage_reads(monkeypatch):
    """Every read from storage, counted by URI (the real reads still happen)."""
    from collections import Counter

    from electra_core import storage
    from pipelines.pretrain import data

    counts: Counter = Counter()
    original = storage.read_bytes

    def counted(uri: str) -> bytes:
        counts[uri] += 1
        return original(uri)

    monkeypatch.setattr(data.storage, "read_bytes", counted)
    return counts


def ranks_of_one_node(uri, manifest, cache_dir, ranks=2, max_files=64):
    from pipelines.pretrain.data import NodeShardCache, SampleOrder, ShardReader

    cache = NodeShardCache(str(cache_dir), max_files)
    order = SampleOrder([s["rows"] for s in manifest["shards"]], seed=0, shuffle_window=8)
    readers = [ShardReader(uri, manifest["shards"], manifest["seq_len"], 0, node_cache=cache) for _ in range(ranks)]
    return order, readers


def test_the_ranks_of_a_node_download_each_shard_once_and_get_the_same_batches(dataset_on_s3, storage_reads, tmp_path):
    import threading

    from pipelines.pretrain.data import ShardReader

    uri, manifest = dataset_on_s3
    order, readers = ranks_of_one_node(uri, manifest, tmp_path / "node-cache")
    # Two ranks take alternate slices of the same global batches at the same time, as in the training loop.
    results: dict[int, list] = {0: [], 1: []}

    def rank(index: int) -> None:
        for step in range(4):
            ids = order.sample_ids(step * 32 + index * 16, 16)
            results[index].append(readers[index].batch(order, ids)["input_ids"])

    threads = [threading.Thread(target=rank, args=(i,)) for i in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    shard_reads = {u: n for u, n in storage_reads.items() if u.endswith(".parquet")}
    assert shard_reads and max(shard_reads.values()) == 1  # each shard once for the whole node

    plain = ShardReader(uri, manifest["shards"], manifest["seq_len"], 0)  # straight from S3, no node cache
    for index in range(2):
        for step in range(4):
            expected = plain.batch(order, order.sample_ids(step * 32 + index * 16, 16))["input_ids"]
            assert np.array_equal(results[index][step], expected)


def test_a_damaged_cached_shard_is_downloaded_again(dataset_on_s3, storage_reads, tmp_path):
    uri, manifest = dataset_on_s3
    order, (reader,) = ranks_of_one_node(uri, manifest, tmp_path / "node-cache", ranks=1)
    ids = order.sample_ids(0, 16)
    first = reader.batch(order, ids)["input_ids"]
    for cached in (tmp_path / "node-cache").glob("*.parquet"):
        cached.write_bytes(cached.read_bytes()[:100])  # a truncated local copy (a full disk, a killed writer)
    _, (fresh,) = ranks_of_one_node(uri, manifest, tmp_path / "node-cache", ranks=1)
    assert np.array_equal(fresh.batch(order, ids)["input_ids"], first)
    assert max(n for u, n in storage_reads.items() if u.endswith(".parquet")) == 2


def test_the_node_cache_keeps_only_its_newest_shards_and_is_off_for_local_data(dataset_on_s3, tmp_path):
    from pipelines.pretrain.data import NodeShardCache

    uri, manifest = dataset_on_s3
    order, (reader,) = ranks_of_one_node(uri, manifest, tmp_path / "node-cache", ranks=1, max_files=3)
    reader.batch(order, order.sample_ids(0, 64))  # a window of 8 shards
    assert len(list((tmp_path / "node-cache").glob("*.parquet"))) == 3
    assert NodeShardCache.for_dataset(str(tmp_path / "prepared"), "f", 8) is None
    assert NodeShardCache.for_dataset(uri, "abc", 8).directory.endswith("electra-shards/abc")
