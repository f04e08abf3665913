"""What Ray Train + DeepSpeed cost: `electra pretrain` on one CPU worker against a plain training loop.

Both train the same model (default: the Small preset) on the same prepared data, same global batch, same
AdamW, learning-rate schedule and clipping, with the same number of threads. The plain loop is a single
Python process with torch only. Figures are tokens/s after the first log window (start-up excluded), and
the seconds each checkpoint blocks training (gather + local write; the upload runs in the background),
with the run's storage on a local disk and on an S3 endpoint (moto's server on 127.0.0.1, started here).

Threads: by default every core but one, as a Ray node runs: Ray's own processes (GCS, raylet, agents, Train's
controller) keep a core, and the worker reserves the rest (`--cpus-per-worker`). `--threads` set to every core
shows what those processes cost a loop that needs all of them: the plain loop beside an idle local Ray is
printed too.

    python benchmarks/train_overhead.py [--preset small] [--batch 16] [--seq-len 128] [--steps 40] [--threads N]
                                        [--precision fp32|bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REVIEWS = HERE.parent.parent / "shared" / "data" / "reviews"


def make_dataset(work: Path, seq_len: int) -> str:
    from pipelines.config import PrepareConfig
    from pipelines.prepare import run_prepare

    sources = sorted(REVIEWS.glob("*.txt"))
    if not sources:  # no shared data: generate review-like text
        sys.path.insert(0, str(HERE.parent))
        from tests.pipelines.conftest import make_sentences

        (work / "corpus.txt").write_text("\n".join(make_sentences(40000)))
        sources = [work / "corpus.txt"]
    output = work / "prepared"
    run_prepare(PrepareConfig(inputs=[str(s) for s in sources], output=str(output), seq_len=seq_len,
                              vocab_size=30522), log=lambda _: None)
    import ray

    ray.shutdown()  # an idle Ray left running here slowed the plain loop by ~8% (its idle worker processes)
    return str(output)


def plain_loop(data: str, args) -> float:
    """tokens/s of a single-process torch loop over the same samples in the same order."""
    import torch

    from electra_core import ElectraConfig, ElectraPretrainingModel, load_tokenizer, special_token_ids
    from pipelines.config import PretrainConfig
    from pipelines.prepare.manifest import load_committed_dataset
    from pipelines.pretrain.data import RankBatches
    from pipelines.pretrain.step import MicroBatchForward, learning_rate, parameter_groups

    torch.set_num_threads(args.threads)
    manifest = load_committed_dataset(data)
    ids = special_token_ids(load_tokenizer(data))
    config = PretrainConfig(data=data, name="plain", preset=args.preset, global_batch_size=args.batch,
                            micro_batch_size=args.batch, max_steps=args.steps)
    model_config = ElectraConfig.from_preset(args.preset, max_position_embeddings=max(512, args.seq_len), **ids)
    torch.manual_seed(config.seed)
    model = ElectraPretrainingModel(model_config).train()
    optimizer = torch.optim.AdamW(parameter_groups(model, config.weight_decay), lr=config.peak_lr,
                                  betas=(0.9, 0.999), eps=config.adam_epsilon, fused=True)  # as the pipeline's
    # The pipeline's own data loader (no read-ahead: the plain loop reads on its training thread) and step.
    batches = RankBatches(data, manifest, model_config.pad_token_id, seed=config.seed,
                          shuffle_window=config.shuffle_window, global_batch=args.batch, micro_batch=args.batch,
                          rank=0, world_size=1)
    batches.start(range(args.steps), accumulation=1, prefetch=0, data_start=0)
    forward = MicroBatchForward(model, model, config.seed, torch.device("cpu"))
    tokens = 0
    started = None
    for step in range(args.steps):
        if step == args.log_every:  # same warm-up exclusion as the pipeline's first log window
            tokens, started = 0, time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        batch, _ = batches.get(step, 0)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss = forward(batch, step, index=0)[0].loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        tokens += int(batch["attention_mask"].sum())
    return tokens / (time.perf_counter() - started)


def plain_loop_beside_idle_ray(data: str, args) -> float:
    from pipelines.ray_runtime import ensure_ray, release_ray

    ensure_ray()
    try:
        return plain_loop(data, args)
    finally:
        release_ray()


def pipeline_run(data: str, storage_uri: str, name: str, args, env: dict, checkpoint_every: int) -> dict:
    command = [str(Path(sys.executable).with_name("electra")), "pretrain", "--data", data, "--storage", storage_uri,
               "--name", name, "--preset", args.preset, "--workers", "1", "--cpus-per-worker", str(args.threads),
               "--global-batch-size", str(args.batch), "--micro-batch-size", str(args.batch),
               "--max-steps", str(args.steps), "--checkpoint-every", str(checkpoint_every),
               "--zero-stage", str(args.zero_stage), "--precision", args.precision,
               "--set", f"log_every={args.log_every}"]
    completed = subprocess.run(command, capture_output=True, text=True, env=env)
    if completed.returncode != 0:
        sys.exit(f"electra pretrain failed:\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}")
    from electra_core import storage

    records = [json.loads(line) for line in storage.read_text(f"{storage_uri}/{name}/metrics.jsonl").splitlines()]
    steady = [r for r in records if r["step"] > args.log_every]
    blocked = [r["checkpoint_blocked_s"] for r in records if "checkpoint_blocked_s" in r]
    return {"tokens_per_s": sum(r["tokens_per_s"] for r in steady) / len(steady), "blocked": blocked}


def checkpoint_megabytes(run: Path) -> float:
    newest = sorted(run.glob("checkpoint_[0-9]*"))[-1]
    return sum(f.stat().st_size for f in newest.iterdir()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--log-every", type=int, default=4)
    parser.add_argument("--checkpoint-every", type=int, default=8)
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--zero-stage", type=int, default=2)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="both sides: the pipeline's --precision, and bf16 autocast in the plain loop (a plain "
                             "torch user's bf16). A run left at auto trained bf16 against an fp32 loop (1.67x)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="train-overhead-"))
    try:
        data = make_dataset(work, args.seq_len)
        # This 2-core machine is noisy: the same run differs by 10-20% from one minute to the next. So the plain
        # loop and the pipeline without checkpoints each run twice, interleaved (plain, pipeline, ..., pipeline,
        # plain), and the headline ratio compares the best of each; the means are printed too.
        plain_runs = [plain_loop(data, args)]
        print(f"plain loop: {plain_runs[0]:,.0f} tokens/s", flush=True)
        env = {**os.environ}
        # Without checkpoints in the timed steps (one at the end): what Ray Train, DeepSpeed and the data path
        # cost. With a checkpoint every few steps: that plus the background copy of every checkpoint.
        bare_runs = [pipeline_run(data, str(work / "runs"), "bare", args, env, checkpoint_every=args.steps)]
        print(f"electra pretrain (checkpoint at the end only): {bare_runs[0]['tokens_per_s']:,.0f} tokens/s", flush=True)
        local = pipeline_run(data, str(work / "runs"), "local", args, env, checkpoint_every=args.checkpoint_every)
        print(f"electra pretrain (local storage): {local['tokens_per_s']:,.0f} tokens/s", flush=True)

        import logging

        from moto.server import ThreadedMotoServer
        import boto3

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no request log lines from the S3 endpoint
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        s3_env = {**env, "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                  "AWS_DEFAULT_REGION": "us-east-1"}
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                     aws_secret_access_key="bench").create_bucket(Bucket="bench")
        os.environ.update(s3_env)
        on_s3 = pipeline_run(data, "s3://bench/runs", "s3", args, s3_env, checkpoint_every=args.checkpoint_every)
        server.stop()
        bare_runs.append(pipeline_run(data, str(work / "runs"), "bare-2", args, env, checkpoint_every=args.steps))
        print(f"electra pretrain (checkpoint at the end only): {bare_runs[1]['tokens_per_s']:,.0f} tokens/s", flush=True)
        plain_runs.append(plain_loop(data, args))
        print(f"plain loop: {plain_runs[1]:,.0f} tokens/s", flush=True)
        beside_ray = plain_loop_beside_idle_ray(data, args)
        print(f"plain loop beside an idle local Ray: {beside_ray:,.0f} tokens/s", flush=True)
        plain = max(plain_runs)
        bare_speeds = [run["tokens_per_s"] for run in bare_runs]

        print(f"\n{args.preset} preset, batch {args.batch} x {args.seq_len}, {args.threads} threads, {args.steps} steps, "
          f"--zero-stage {args.zero_stage} (one worker runs stage 0)")
        print(f"{'':>34} {'tokens/s':>10} {'ratio':>6}")
        runs = lambda speeds: ", ".join(f"{speed:,.0f}" for speed in speeds)  # noqa: E731
        print(f"{'plain torch loop, best of 2':>34} {plain:10,.0f} {1.0:6.2f}   (runs: {runs(plain_runs)})")
        every = f"checkpoint every {args.checkpoint_every} steps"
        print(f"{'electra pretrain, best of 2':>34} {max(bare_speeds):10,.0f} {max(bare_speeds) / plain:6.2f}   "
              f"(target >= 0.9; no checkpoint in the timed steps; runs: {runs(bare_speeds)}; ratio of the means "
              f"{sum(bare_speeds) / sum(plain_runs):.2f})")
        # The same plain loop with a local Ray (as `electra pretrain` starts it) idle beside it: Ray's processes
        # wake ~700 times a second, which costs a loop that keeps every core busy (not one that leaves a core).
        print(f"{'plain loop beside an idle Ray':>34} {beside_ray:10,.0f} {beside_ray / plain:6.2f}   "
              "(Ray's node processes alone, no Ray Train)")
        print(f"{'electra pretrain, 1 worker (local)':>34} {local['tokens_per_s']:10,.0f} "
              f"{local['tokens_per_s'] / plain:6.2f}   ({every}, ~{checkpoint_megabytes(work / 'runs' / 'local'):,.0f} MB each)")
        # The S3 endpoint here is moto's server in this process, on the same two cores as training: it takes
        # CPU from training while the checkpoints upload, which a remote object store would not.
        print(f"{'electra pretrain, 1 worker (S3)':>34} {on_s3['tokens_per_s']:10,.0f} "
              f"{on_s3['tokens_per_s'] / plain:6.2f}   ({every}; the S3 endpoint runs on the same 2 cores)")
        for label, run in (("local", local), ("S3", on_s3)):
            blocked = ", ".join(f"{b:.2f}" for b in run["blocked"])
            print(f"seconds training was blocked per checkpoint ({label}): {blocked}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
