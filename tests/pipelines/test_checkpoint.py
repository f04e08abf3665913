"""The checkpoint format on its own: verification, fallback to the previous good checkpoint, no pickle."""

from __future__ import annotations

import json

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
    weights = newest / checkpoints.MODEL_FILE
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
    assert set(marker["files"]) == {checkpoints.MODEL_FILE, checkpoints.OPTIMIZER_FILE, checkpoints.STATE_FILE}
    for name in marker["files"]:
        head = (tmp_path / checkpoints.directory_name(5) / name).read_bytes()[:2]
        assert head != b"\x80\x04" and head[:1] != b"PK"  # neither a pickle stream nor torch's zip format


def test_checkpoints_on_s3_verify_the_same_way(s3_bucket, tmp_path):
    local = write(tmp_path, 7)
    fs, path = storage.filesystem(f"{s3_bucket}/run")
    fs.put(local, f"{path}/{checkpoints.directory_name(7)}", recursive=True)
    loaded = checkpoints.latest_good_checkpoint(f"{s3_bucket}/run")
    assert loaded.step == 7 and torch.equal(loaded.params["w"], torch.full((4, 4), 7.0))
