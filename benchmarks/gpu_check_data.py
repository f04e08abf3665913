"""The data benchmarks/gpu_check.sh carries to a GPU machine, which has no Ray to prepare a dataset: the review
corpus prepared here by `electra prepare` (vocabulary 8,000, sequences of 128) and the SST-2 and CoLA splits, in
benchmarks/gpu_data/ (git-ignored; a few MB, well under the 64 MiB a device run carries).

    python benchmarks/gpu_check_data.py [--shared ../shared/data]
then, on the GPU machine: benchmarks/gpu_check.sh (carry benchmarks/gpu_data)
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "gpu_data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default=str(HERE.parent.parent / "shared" / "data"))
    args = parser.parse_args()
    shared = Path(args.shared)
    reviews = sorted((shared / "reviews").glob("*.txt"))
    if not reviews:
        raise SystemExit(f"{shared / 'reviews'}: no review corpus (*.txt) to prepare")

    from pipelines.config import PrepareConfig
    from pipelines.prepare import run_prepare

    OUTPUT.mkdir(exist_ok=True)
    shutil.rmtree(OUTPUT / "prepared", ignore_errors=True)
    run_prepare(PrepareConfig(inputs=[str(path) for path in reviews], output=str(OUTPUT / "prepared"),
                              vocab_size=8000, seq_len=128), log=print)
    for task in ("sst2", "cola"):
        (OUTPUT / task).mkdir(exist_ok=True)
        for split in ("train.tsv", "dev.tsv"):
            shutil.copyfile(shared / task / split, OUTPUT / task / split)
    size = sum(path.stat().st_size for path in OUTPUT.rglob("*") if path.is_file())
    print(f"{OUTPUT}: {size / 2**20:.1f} MB")


if __name__ == "__main__":
    main()
