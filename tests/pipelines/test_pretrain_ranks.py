"""Decisions that every rank of a run must take alike, checked on a real 2-process gloo group."""

from __future__ import annotations

import json

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from pipelines.pretrain.parallelism import on_every_rank_if_on_any


def _decide(rank: int, store: str, flags: list[bool], out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=len(flags))
    try:
        decided = on_every_rank_if_on_any(flags[rank], len(flags))
    finally:
        dist.destroy_process_group()
    with open(f"{out}.{rank}", "w") as file:
        json.dump(decided, file)


@pytest.mark.parametrize("flags, expected", [([True, False], True), ([False, True], True), ([False, False], False)])
def test_a_preemption_notice_seen_by_one_rank_is_acted_on_by_all(tmp_path, flags, expected):
    # Ray hands the notice to each worker separately: one rank can see it a step before the other. Each rank then
    # starts the (collective) checkpoint at the same step, or none does.
    out = str(tmp_path / "decided")
    mp.spawn(_decide, args=(str(tmp_path / "store"), flags, out), nprocs=len(flags))
    assert [json.loads((tmp_path / f"decided.{rank}").read_text()) for rank in range(len(flags))] == [expected] * 2
