"""End-to-end MB/s of `electra prepare` against the raw tokenizer's encode_batch_fast on the same text.

The corpus (default: ../shared/data/reviews repeated to at least 50 MB) is written as several .txt files.
A tokenizer is trained once on it and given to both sides, so both measure the same tokenization:
- baseline: `Tokenizer.encode_batch_fast` over every line, text already in memory, one process using all
  cores (the tokenizers library parallelises the batch itself);
- ours: the `electra prepare` command in a fresh process, as a user runs it: Ray start-up, reading,
  tokenizing, packing, Parquet writing with checksums and the manifest, on the same cores;
- ours on a running Ray: the same command joining a `ray start --head` node of this machine started before
  the clock (`--address`), as a job on a cluster or a scheduled retraining runs it: no Ray start or stop.
  The head has run one small prepare before, as a cluster in use has.
Peak RSS: the baseline process; for prepare, the whole process tree (driver, Ray, actors) sampled every 0.2 s;
on the running Ray, the command's tree plus the head's processes.

    python benchmarks/prepare_throughput.py [--corpus DIR] [--megabytes 50] [--files 8]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
DEFAULT_CORPUS = HERE.parent.parent / "shared" / "data" / "reviews"


def build_corpus(source: Path, megabytes: float, files: int, target: Path) -> tuple[int, list[str]]:
    text = "".join(path.read_text(encoding="utf-8") for path in sorted(source.glob("*.txt")))
    if not text:
        sys.exit(f"{source}: no .txt files to build the corpus from")
    copies = -(-int(megabytes * 1e6) // len(text.encode()))  # enough whole copies to reach `megabytes`
    target.mkdir(parents=True)
    written = 0
    for index in range(files):
        data = text * (copies // files + (index < copies % files))
        (target / f"part-{index:03d}.txt").write_text(data, encoding="utf-8")
        written += len(data.encode())
    return written, text.splitlines() * copies


def baseline(corpus: Path, tokenizer_path: Path) -> dict:
    """Runs in its own process so its peak RSS is its own."""
    code = f"""
import json, resource, time
from pathlib import Path
from tokenizers import Tokenizer
tokenizer = Tokenizer.from_file({str(tokenizer_path)!r})
lines = [line for path in sorted(Path({str(corpus)!r}).glob('*.txt'))
         for line in path.read_text(encoding='utf-8').splitlines()]
started = time.perf_counter()
encodings = tokenizer.encode_batch_fast(lines, add_special_tokens=False)
seconds = time.perf_counter() - started
print(json.dumps({{"seconds": seconds, "tokens": sum(len(e.ids) for e in encodings),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""
    # The raw tokenizer uses every core: a TOKENIZERS_PARALLELISM=false or RAYON_NUM_THREADS inherited from the
    # caller's shell made it single-threaded (19.4 s against ~10 s at 50 MB on 2 cores, seen here).
    env = {key: value for key, value in os.environ.items() if key != "RAYON_NUM_THREADS"}
    env["TOKENIZERS_PARALLELISM"] = "true"
    output = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                            env=env).stdout
    return json.loads(output.strip().splitlines()[-1])


def run_prepare(corpus: Path, output: Path, tokenizer_dir: Path, head=None) -> dict:
    """`electra prepare` as a subprocess; with `head` (a running Ray head), joined to it."""
    electra = Path(sys.executable).with_name("electra")
    command = [str(electra), "prepare", "--input", str(corpus), "--output", str(output),
               "--tokenizer", str(tokenizer_dir)]
    env = None
    if head is not None:
        env = head.subprocess_env()
        command += ["--address", head.gcs_address]
    started = time.perf_counter()
    process = psutil.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True, env=env)
    peak = 0
    while process.poll() is None:
        peak = max(peak, _tree_rss(process) + (sum(_rss(p) for p in head.processes()) if head else 0))
        time.sleep(0.2)
    seconds = time.perf_counter() - started
    log = process.stdout.read()
    if process.returncode != 0:
        sys.exit(f"electra prepare failed ({process.returncode}):\n{log[-3000:]}")
    manifest = json.loads((output / "_manifest.json").read_text())
    summary = [line for line in log.splitlines() if line.startswith("electra prepare: ") and "files (" in line]
    return {"seconds": seconds, "peak_rss_mb": peak / 2**20, "manifest": manifest, "summary": summary[-1:]}


def _tree_rss(process: psutil.Process) -> int:
    """RSS of a process, its children and the Ray processes they started (same session)."""
    total = 0
    try:
        members = [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    return sum(_rss(member) for member in members)


def _rss(process: psutil.Process) -> int:
    try:
        return process.memory_info().rss
    except psutil.Error:
        return 0


def prepare_on_running_ray(corpus: Path, output: Path, tokenizer_dir: Path) -> dict:
    """Starts a Ray head on 127.0.0.1 (the test suite's own way of doing it), runs prepare joined to it."""
    sys.path.insert(0, str(HERE.parent))
    from tests.cluster.conftest import start_head, stop_head

    root = Path(tempfile.mkdtemp(prefix="rayh-", dir="/tmp"))
    head, process = start_head(root)
    try:
        # A cluster that has run a Ray Data job before holds Ray Data's detached helper actors (stats,
        # autoscaling coordinator, actor locations); one small run first makes this head such a cluster.
        warm_up = output.with_name(output.name + "-warm-up")
        warm_up.mkdir()
        (warm_up / "input.txt").write_text("a first small run on this cluster\n")
        run_prepare(warm_up / "input.txt", warm_up / "prepared", tokenizer_dir, head)
        time.sleep(2)
        return run_prepare(corpus, output, tokenizer_dir, head)
    finally:
        stop_head(process)
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="directory of .txt files to repeat")
    parser.add_argument("--megabytes", type=float, default=50.0)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--vocab-size", type=int, default=30522)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="prepare-bench-"))
    try:
        corpus_bytes, lines = build_corpus(args.corpus, args.megabytes, args.files, work / "corpus")
        from electra_core import save_tokenizer, train_tokenizer

        tokenizer = train_tokenizer(lines[:200_000], vocab_size=args.vocab_size)
        save_tokenizer(tokenizer, str(work / "tokenizer"))
        del lines
        megabytes = corpus_bytes / 1e6
        print(f"corpus: {megabytes:.1f} MB in {args.files} files (from {args.corpus}); {os.cpu_count()} CPUs",
              flush=True)

        base = baseline(work / "corpus", work / "tokenizer" / "tokenizer.json")
        ours = run_prepare(work / "corpus", work / "prepared", work / "tokenizer")
        joined = prepare_on_running_ray(work / "corpus", work / "prepared-joined", work / "tokenizer")
        counts = ours["manifest"]["counts"]
        assert joined["manifest"]["counts"] == counts, "the two prepare runs disagree"

        print(f"\n{'':>36} {'seconds':>8} {'MB/s':>7} {'peak RSS MB':>12} {'ratio':>6}")
        print(f"{'encode_batch_fast (raw)':>36} {base['seconds']:8.1f} {megabytes / base['seconds']:7.2f} "
              f"{base['peak_rss_mb']:12.0f}")
        for name, run in (("electra prepare (starts its Ray)", ours), ("electra prepare (Ray running)", joined)):
            print(f"{name:>36} {run['seconds']:8.1f} {megabytes / run['seconds']:7.2f} "
                  f"{run['peak_rss_mb']:12.0f} {base['seconds'] / run['seconds']:6.2f}")
        print(f"{'':>36} target: ratio >= 0.8 at 50 MB")
        print(f"\nprepare wrote {counts['sequences']:,} sequences, {counts['tokens']:,} tokens "
              f"(raw tokenizer: {base['tokens']:,} without [CLS]/[SEP]), pad {counts['pad_fraction']:.1%}, "
              f"{len(ours['manifest']['shards'])} shards")
        for line in ours["summary"] + joined["summary"]:
            print(line)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        resource.getrusage(resource.RUSAGE_SELF)


if __name__ == "__main__":
    main()
