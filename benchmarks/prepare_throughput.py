"""End-to-end MB/s and density of `electra prepare` against the raw tokenizer's encode_batch_fast, on the
corpus shapes people bring.

The text (default: ../shared/data/reviews, or generated text where ../shared is not next to the repository)
is laid out in each shape (--shapes), about --megabytes each:
- sentence_a_line: one sentence a line in --files large .txt files (the review corpus);
- doc_tree: a documentation tree, about 2,000 .txt files of 2 to 100 KB, paragraphs separated by blank lines;
- short_doc_a_file: 10,000 files of one short document (about 1 KB) each;
- jsonl_records: JSONL records of a few words each;
- tree:PATH: a real directory of text files, as it is (for example a Debian documentation package unpacked
  with `dpkg -x`).
A tokenizer is trained once and given to both sides, so both measure the same tokenization:
- baseline: `Tokenizer.encode_batch_fast` over every line, text already in memory, one process using all
  cores (the tokenizers library parallelises the batch itself);
- ours: the `electra prepare` command in a fresh process, as a user runs it with no cluster: reading,
  tokenizing, packing, Parquet writing with checksums and the manifest, on local worker processes (the
  default `--executor auto` with no cluster given), on the same cores;
- ours, starting its Ray: the same with `--executor ray`, which starts a local Ray for the run and stops it;
- ours on a running Ray: the same command joining a `ray start --head` node of this machine started before
  the clock (`--address`), as a job on a cluster or a scheduled retraining runs it: no Ray start or stop.
  The head has run one small prepare before, as a cluster in use has.
All runs must write the same shards (checked).
Peak RSS: the baseline process; for prepare, the whole process tree (driver, Ray, actors) sampled every 0.2 s;
on the running Ray, the command's tree plus the head's processes.

Per shape it prints seconds, MB/s, the ratio to the raw tokenizer, peak RSS, the pad fraction and the shards.

    python benchmarks/prepare_throughput.py [--corpus DIR] [--megabytes 50] [--files 8] \\
        [--shapes sentence_a_line,doc_tree,short_doc_a_file,jsonl_records,tree:/tmp/linux-doc/usr/share/doc]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
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


def source_lines(source: Path) -> list[str]:
    """The text the shapes are built from: the source's lines, or generated sentences when it is absent."""
    if source.is_dir() and any(source.glob("*.txt")):
        return [line for path in sorted(source.glob("*.txt"))
                for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rng = random.Random(0)
    words = ["".join(rng.choice("etaoinshrdlucmfwypvbgk") for _ in range(rng.randint(2, 9))) for _ in range(20000)]
    weights = [1.0 / (rank + 1) for rank in range(len(words))]  # Zipf-like frequencies, as in text
    return [" ".join(rng.choices(words, weights, k=rng.randint(5, 30))) + "." for _ in range(100_000)]


def build_corpus(shape: str, lines: list[str], megabytes: float, files: int, target: Path) -> int:
    """Writes `shape` under target from `lines` repeated as needed; returns the bytes written."""
    if shape.startswith("tree:"):
        shutil.copytree(shape[5:], target, symlinks=False, ignore_dangling_symlinks=True)
        return sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    target.mkdir(parents=True)
    budget = int(megabytes * 1e6)
    rng = random.Random(1)
    stream = itertools.cycle(lines)
    written = 0
    if shape == "sentence_a_line":
        per_file = budget // files
        for index in range(files):
            chunk, size = [], 0
            while size < per_file:
                line = next(stream)
                chunk.append(line)
                size += len(line.encode()) + 1
            written += _write(target / f"part-{index:03d}.txt", "\n".join(chunk) + "\n")
    elif shape == "doc_tree":
        index = 0
        while written < budget:
            page_bytes = int(math.exp(rng.uniform(math.log(2e3), math.log(1e5))))  # 2 to 100 KB, log-uniform
            paragraphs, size = [], 0
            while size < page_bytes:
                paragraph = " ".join(next(stream) for _ in range(rng.randint(1, 6)))
                paragraphs.append(paragraph)
                size += len(paragraph.encode()) + 2
            written += _write(target / f"section{index // 100:02d}" / f"page{index:05d}.txt", "\n\n".join(paragraphs) + "\n")
            index += 1
    elif shape == "short_doc_a_file":
        for index in range(10_000):
            document, size = [], 0
            while size < 1000:
                line = next(stream)
                document.append(line)
                size += len(line.encode()) + 1
            written += _write(target / f"d{index // 1000}" / f"note{index:05d}.txt", "\n".join(document) + "\n")
    elif shape == "jsonl_records":
        per_file = budget // files
        for index in range(files):
            records, size = [], 0
            while size < per_file:
                words = next(stream).split()
                start = rng.randint(0, max(0, len(words) - 4))
                record = json.dumps({"text": " ".join(words[start:start + rng.randint(3, 6)])})
                records.append(record)
                size += len(record) + 1
            written += _write(target / f"records-{index:03d}.jsonl", "\n".join(records) + "\n")
    else:
        sys.exit(f"unknown shape {shape!r}")
    return written


def _write(path: Path, text: str) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode("utf-8")
    path.write_bytes(data)
    return len(data)


def baseline(corpus: Path, tokenizer_path: Path) -> dict:
    """Runs in its own process so its peak RSS is its own."""
    code = f"""
import json, resource, time
from pathlib import Path
from tokenizers import Tokenizer
tokenizer = Tokenizer.from_file({str(tokenizer_path)!r})
lines = []
for path in sorted(p for p in Path({str(corpus)!r}).rglob('*') if p.is_file()):
    text = path.read_text(encoding='utf-8', errors='replace')
    if path.suffix == '.jsonl':
        lines += [json.loads(line)['text'] for line in text.splitlines() if line.strip()]
    else:
        lines += text.splitlines()
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


def run_prepare(corpus: Path, output: Path, tokenizer_dir: Path, head=None, extra: tuple[str, ...] = ()) -> dict:
    """`electra prepare` as a subprocess; with `head` (a running Ray head), joined to it."""
    electra = Path(sys.executable).with_name("electra")
    command = [str(electra), "prepare", "--input", str(corpus), "--output", str(output),
               "--tokenizer", str(tokenizer_dir), *extra]
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


def shard_checksums(run: dict) -> list[str]:
    return sorted(shard["sha256"] for shard in run["manifest"]["shards"])


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
        # A cluster in use has run jobs before (its workers' files are in the page cache, its job table is
        # not empty); one small run first makes this head such a cluster.
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
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="directory of .txt files to draw from")
    parser.add_argument("--megabytes", type=float, default=50.0)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--vocab-size", type=int, default=30522)
    parser.add_argument("--shapes", default="sentence_a_line,doc_tree,short_doc_a_file,jsonl_records")
    parser.add_argument("--no-running-ray", dest="running_ray", action="store_false",
                        help="leave out the runs joined to a running Ray head")
    parser.add_argument("--no-ray", dest="ray", action="store_false",
                        help="leave out the runs with --executor ray, which start a local Ray of their own")
    args = parser.parse_args()

    lines = source_lines(args.corpus)
    from electra_core import save_tokenizer, train_tokenizer

    work = Path(tempfile.mkdtemp(prefix="prepare-bench-"))
    rows = []
    try:
        tokenizer = train_tokenizer(lines[:200_000], vocab_size=args.vocab_size)
        save_tokenizer(tokenizer, str(work / "tokenizer"))
        origin = args.corpus if args.corpus.is_dir() else "generated text"
        print(f"text from {origin}; {os.cpu_count()} CPUs", flush=True)
        for shape in args.shapes.split(","):
            corpus = work / "corpus"
            corpus_bytes = build_corpus(shape, lines, args.megabytes, args.files, corpus)
            files = sum(1 for p in corpus.rglob("*") if p.is_file())
            megabytes = corpus_bytes / 1e6
            print(f"\n== {shape}: {megabytes:.1f} MB in {files:,} files", flush=True)
            base = baseline(corpus, work / "tokenizer" / "tokenizer.json")
            runs = {"default (local)": run_prepare(corpus, work / "prepared", work / "tokenizer")}
            if args.ray:
                runs["starts its Ray"] = run_prepare(corpus, work / "prepared-ray", work / "tokenizer",
                                                     extra=("--executor", "ray"))
            if args.running_ray:
                runs["Ray running"] = prepare_on_running_ray(corpus, work / "prepared-joined", work / "tokenizer")
            for name, run in runs.items():
                assert shard_checksums(run) == shard_checksums(runs["default (local)"]), \
                    f"prepare {name} wrote other shards than the default run"
            for line in runs["default (local)"]["summary"]:
                print(line)
            rows.append((shape, megabytes, files, base, runs))
            for path in work.iterdir():
                if path.name != "tokenizer":
                    shutil.rmtree(path, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{'shape':<18} {'MB':>6} {'files':>7} {'run':<26} {'seconds':>8} {'MB/s':>7} {'ratio':>6} "
          f"{'peak RSS MB':>12} {'pad':>6} {'shards':>7}")
    for shape, megabytes, files, base, runs in rows:
        print(f"{shape:<18} {megabytes:6.1f} {files:7,} {'encode_batch_fast (raw)':<26} {base['seconds']:8.1f} "
              f"{megabytes / base['seconds']:7.2f} {'':>6} {base['peak_rss_mb']:12.0f}")
        for name, run in runs.items():
            counts = run["manifest"]["counts"]
            print(f"{'':<18} {'':>6} {'':>7} {'prepare, ' + name:<26} {run['seconds']:8.1f} "
                  f"{megabytes / run['seconds']:7.2f} {base['seconds'] / run['seconds']:6.2f} "
                  f"{run['peak_rss_mb']:12.0f} {counts['pad_fraction']:6.1%} {len(run['manifest']['shards']):7,}")
    print("targets: ratio >= 0.8 (no cluster given) and >= 0.9 (Ray running); pad <= 5% at sequence length 128")


if __name__ == "__main__":
    main()
