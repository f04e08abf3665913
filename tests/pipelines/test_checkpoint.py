"""The checkpoint format on its own: verification, fallback to the previous good checkpoint, no pickle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from electra_core import storage
from pipelines.pretrain import checkpoint as checkpoints


def write(run, step: int) -> str:
    directory = run / checkpoints.directory_name(step)
    params = {"w": torch.full((4, 4), float(step))}
    moments = {"exp_avg/w": torch.zeros(4, 4), "exp_avg_sq/w": torch.ones(4, 4)}
    checkpoints.write_checkpoint(str(directory), params, moments, {"step": step, "optimizer_step": step})
    return str(directory)


def test_newest_checkpoint_is_read_back_exactly(tmp_path):
    for step in (10, 20, 30):
        write(tmp_path, step)
    loaded = checkpoints.latest_good_checkpoint(str(tmp_path))
    assert loaded.step == 30 and torch.equal(loaded.params["w"], torch.full((4, 4), 30.0))
    assert loaded.trainer_state["optimizer_step"] == 30


@pytest.mark.parametrize("damage", ["truncate", "delete", "no-marker", "flip"])
def test_a_damaged_checkpoint_is_skipped_for_the_previous_good_one_with_a_warning(tmp_path, damage):
    write(tmp_path, 10)
    newest = tmp_path / checkpoints.directory_name(20)
    write(tmp_path, 20)
    weights = newest / checkpoints.shard_files(0, 1)[0]
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "delete":
        weights.unlink()
    elif damage == "no-marker":
        (newest / checkpoints.MARKER).unlink()
    else:
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
    warnings: list[str] = []
    loaded = checkpoints.latest_good_checkpoint(str(tmp_path), log=warnings.append)
    assert loaded.step == 10
    assert len(warnings) == 1 and checkpoints.directory_name(20) in warnings[0]


def write_ray_snapshot(run, steps) -> None:
    entries = [{"checkpoint_dir_name": checkpoints.directory_name(step)} for step in steps]
    (run / checkpoints.RAY_SNAPSHOT).write_text(json.dumps({"checkpoint_results": entries}))


@pytest.mark.parametrize("snapshot, kept", [((40, 50), True), ((10, 50), False)],
                         ids=["snapshot-of-kept-ones", "snapshot-naming-a-pruned-one"])
def test_pruning_keeps_the_newest_whoever_registered_them_and_never_strands_rays_snapshot(tmp_path, snapshot, kept):
    # An interrupted run leaves checkpoints Ray Train never registered (its snapshot lags the uploads): they are
    # pruned like the rest, and a snapshot naming a pruned one is dropped, so that Ray does not refuse the next run.
    for step in (10, 20, 30, 40, 50):
        write(tmp_path, step)
    write_ray_snapshot(tmp_path, snapshot)
    deleted = checkpoints.prune_checkpoints(str(tmp_path), keep=2)
    assert [uri.rsplit("/", 1)[-1] for uri in deleted] == [checkpoints.directory_name(s) for s in (30, 20, 10)]
    assert checkpoints.list_checkpoints(str(tmp_path)) == [str(tmp_path / checkpoints.directory_name(s))
                                                           for s in (50, 40)]
    assert (tmp_path / checkpoints.RAY_SNAPSHOT).exists() is kept
    assert checkpoints.prune_checkpoints(str(tmp_path), keep=2) == []


def test_no_checkpoints_means_a_fresh_start(tmp_path):
    assert checkpoints.latest_good_checkpoint(str(tmp_path / "new-run")) is None


def test_checkpoint_holds_no_pickle(tmp_path):
    directory = write(tmp_path, 5)
    marker = json.loads(storage.read_text(f"{directory}/{checkpoints.MARKER}"))
    assert set(marker["files"]) == {*checkpoints.shard_files(0, 1), checkpoints.STATE_FILE}
    for name in marker["files"]:
        head = (tmp_path / checkpoints.directory_name(5) / name).read_bytes()[:2]
        assert head != b"\x80\x04" and head[:1] != b"PK"  # neither a pickle stream nor torch's zip format


def test_checkpoints_on_s3_verify_the_same_way(s3_bucket, tmp_path):
    local = write(tmp_path, 7)
    fs, path = storage.filesystem(f"{s3_bucket}/run")
    fs.put(local, f"{path}/{checkpoints.directory_name(7)}", recursive=True)
    loaded = checkpoints.latest_good_checkpoint(f"{s3_bucket}/run")
    assert loaded.step == 7 and torch.equal(loaded.params["w"], torch.full((4, 4), 7.0))
    copy = loaded.local_copy  # streamed through its checksums to local disk, read from there one tensor at a time
    assert copy and sorted(p.name for p in Path(copy).iterdir()) == sorted(
        [*checkpoints.shard_files(0, 1), checkpoints.STATE_FILE])
    loaded.close()
    assert not Path(copy).exists()


def test_shards_of_several_ranks_make_one_checkpoint_that_any_world_size_reads(tmp_path):
    sizes = {"big": 1000, "mid": 600, "small": 500, "tiny": 10}
    owners = checkpoints.parameter_owners(sizes, 2)
    loads = [sum(n for name, n in sizes.items() if owners[name] == rank) for rank in (0, 1)]
    assert sorted(loads) == [1010, 1100]  # largest first to the least loaded rank
    directory = tmp_path / checkpoints.directory_name(3)
    tensors = {name: torch.full((n,), float(i)) for i, (name, n) in enumerate(sizes.items())}
    listings = []
    for rank in (0, 1):  # as each rank writes its own share
        mine = {name: t for name, t in tensors.items() if owners[name] == rank}
        moments = {f"{key}/{name}": t * 2 for name, t in mine.items() for key in ("exp_avg", "exp_avg_sq")}
        listings.append(checkpoints.write_shard(str(directory), rank, 2, mine, moments))
    checkpoints.write_marker(str(directory), {"step": 3, "optimizer_step": 3}, listings)
    loaded = checkpoints.latest_good_checkpoint(str(tmp_path))
    assert set(loaded.params) == set(sizes)
    for name, tensor in tensors.items():
        assert torch.equal(loaded.param(name), tensor) and torch.equal(loaded.moment("exp_avg", name), tensor * 2)
    # A rank's shard missing (its upload lost) makes the whole checkpoint incomplete, not half of one.
    (directory / checkpoints.shard_files(1, 2)[0]).unlink()
    assert checkpoints.latest_good_checkpoint(str(tmp_path), log=lambda _: None) is None


def test_a_version_1_checkpoint_of_an_earlier_release_still_resumes(tmp_path):
    from safetensors.torch import save_file

    directory = tmp_path / checkpoints.directory_name(4)
    directory.mkdir()
    save_file({"w": torch.ones(2)}, str(directory / "model.safetensors"))
    save_file({"exp_avg/w": torch.zeros(2), "exp_avg_sq/w": torch.ones(2)}, str(directory / "optimizer.safetensors"))
    (directory / checkpoints.STATE_FILE).write_text(json.dumps({"step": 4, "optimizer_step": 4}))
    files = {name: checkpoints._file_entry(str(directory / name))
             for name in ("model.safetensors", "optimizer.safetensors", checkpoints.STATE_FILE)}
    (directory / checkpoints.MARKER).write_text(json.dumps({"format": checkpoints.FORMAT, "version": 1, "step": 4,
                                                            "files": files}))
    loaded = checkpoints.latest_good_checkpoint(str(tmp_path))
    assert loaded.step == 4 and torch.equal(loaded.param("w"), torch.ones(2))
    assert torch.equal(loaded.moment("exp_avg_sq", "w"), torch.ones(2))
