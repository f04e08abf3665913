"""How long pretraining waits for its data when the shards are on slow object storage, with and without reading
ahead (`pretrain.prefetch`).

A dataset is prepared from the standard library's docstrings (pipelines.demo_data) into small shards and put on
moto's S3 server on 127.0.0.1 (started here). Every read from storage is delayed by --latency-ms (50 ms by
default) to stand for a bucket in another zone. That delay is a wrapper around the one function that reads shards;
nothing else is simulated. The model step is the pipeline's own: ElectraPretrainingModel and fused AdamW, the tiny
preset at sequence length 128 by default, a batch sized to take about 100 ms here. The loop takes batches exactly
as pipelines.pretrain.loop does, through DirectBatches (prefetch 0) or BatchPrefetcher. Printed: the share of
the wall time spent waiting for data, and samples/s, for both.

    python benchmarks/data_wait.py [--steps 200] [--batch 16] [--latency-ms 50] [--prefetch 4] [--shard-rows 64]
                                   [--corpus PATH]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def s3_dataset(work: Path, shard_rows: int, seq_len: int, corpus: str | None = None) -> str:
    """A prepared dataset on a fresh moto S3 bucket; returns its s3:// URI. corpus: a text file or tree to
    prepare instead of the standard library's docstrings."""
    import boto3
    from moto.server import ThreadedMotoServer

    from electra_core import storage
    from pipelines.config import PrepareConfig
    from pipelines.demo_data import write_demo_data
    from pipelines.prepare import run_prepare

    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the server's line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update({"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"})
    boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).create_bucket(Bucket="bench")
    if corpus is None:
        write_demo_data(str(work / "demo"), log=lambda *_: None)
        corpus = str(work / "demo" / "corpus")
    run_prepare(PrepareConfig(inputs=[corpus], output=str(work / "prepared"), seq_len=seq_len,
                              vocab_size=4000, shard_rows=shard_rows, executor="local"), log=lambda _: None)
    fs, _ = storage.filesystem("s3://bench")
    fs.put(str(work / "prepared") + "/", "bench/prepared", recursive=True)
    return "s3://bench/prepared"


def with_latency(seconds: float) -> None:
    """Every storage read waits `seconds` first (the wrapper this benchmark is about; see the module docstring)."""
    from electra_core import storage
    from pipelines.pretrain import data

    original = storage.read_bytes

    def slow_read_bytes(uri: str) -> bytes:
        time.sleep(seconds)
        return original(uri)

    storage.read_bytes = slow_read_bytes
    data.storage.read_bytes = slow_read_bytes  # the module reads through the same object


def run(uri: str, steps: int, batch: int, prefetch: int) -> dict:
    import torch

    from electra_core import ElectraConfig, ElectraPretrainingModel, load_tokenizer, special_token_ids, storage
    from pipelines.prepare.manifest import load_committed_dataset
    from pipelines.pretrain.data import BatchPrefetcher, DirectBatches, SampleOrder, ShardReader

    manifest = load_committed_dataset(uri)
    tokenizer = load_tokenizer(storage.join(uri, "tokenizer.json"))
    config = ElectraConfig.from_preset("tiny", max_position_embeddings=manifest["seq_len"],
                                       **special_token_ids(tokenizer))
    torch.manual_seed(0)
    model = ElectraPretrainingModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    order = SampleOrder([s["rows"] for s in manifest["shards"]], seed=0, shuffle_window=8)
    reader = ShardReader(uri, manifest["shards"], manifest["seq_len"], config.pad_token_id, cache_shards=16)

    def read(step: int, micro: int):
        return reader.batch(order, order.sample_ids(step * batch, batch))

    batches = BatchPrefetcher(read, range(steps), 1, prefetch) if prefetch else DirectBatches(read)
    generator = torch.Generator().manual_seed(0)
    waited, started = 0.0, time.perf_counter()
    for step in range(steps):
        tensors, wait = batches.get(step, 0)
        waited += wait
        # As the loop calls it: the padding decision from the host copy, the masking draws made up front.
        padded = bool(tensors["attention_mask"].min() == 0)
        loss = model(**tensors, noise=model.masking_noise(tensors["input_ids"], generator), padded=padded).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - started
    batches.close()
    return {"wait_share": waited / seconds, "samples_per_s": steps * batch / seconds, "seconds": seconds,
            "step_ms": (seconds - waited) / steps * 1000, "epochs": steps * batch / order.num_samples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--prefetch", type=int, default=4)
    parser.add_argument("--shard-rows", type=int, default=64)
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--corpus", help="a text file or tree to prepare (default: the stdlib's docstrings)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as work:
        uri = s3_dataset(Path(work), args.shard_rows, args.seq_len, args.corpus)
        with_latency(args.latency_ms / 1000)
        results = {name: run(uri, args.steps, args.batch, prefetch)
                   for name, prefetch in (("read on the training thread (prefetch 0)", 0),
                                          (f"read ahead (prefetch {args.prefetch})", args.prefetch))}
    print(f"corpus {args.corpus or 'stdlib docstrings'}; "
          f"tiny preset, seq {args.seq_len}, batch {args.batch}, {args.steps} steps, {args.threads} threads; "
          f"shards of {args.shard_rows} rows on S3 (moto) with {args.latency_ms:.0f} ms added to every read")
    print(f"{'':44} {'waiting for data':>17} {'samples/s':>10} {'step ms':>8} {'epochs':>7}")
    for name, r in results.items():
        print(f"{name:44} {r['wait_share']:>16.1%} {r['samples_per_s']:>10.1f} {r['step_ms']:>8.0f} {r['epochs']:>7.2f}")


if __name__ == "__main__":
    main()
