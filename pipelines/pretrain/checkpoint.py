"""The training checkpoint format: what is saved, how it is verified, how it is found and restored.

A checkpoint is world-size independent: full fp32 parameters and full AdamW moments (gathered from the
ZeRO partitions), so it restores on any number of workers and any ZeRO stage. Files:

    model.safetensors       fp32 master weights, by parameter name
    optimizer.safetensors   exp_avg/NAME and exp_avg_sq/NAME
    trainer_state.json      step, samples consumed, optimizer step count, configs, dataset fingerprint
    _checkpoint.json        every file above with its size and sha256; written last

No pickle: everything is safetensors or JSON. Randomness needs no saved state: data order, masking and
dropout are functions of (seed, step, micro-batch).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from electra_core import storage

logger = logging.getLogger(__name__)

FORMAT = "electra-checkpoint"
VERSION = 1
MARKER = "_checkpoint.json"
MODEL_FILE, OPTIMIZER_FILE, STATE_FILE = "model.safetensors", "optimizer.safetensors", "trainer_state.json"
DIRECTORY_PREFIX = "checkpoint_"
_DIRECTORY_PATTERN = re.compile(DIRECTORY_PREFIX + r"\d{9}")


def directory_name(step: int) -> str:
    return f"{DIRECTORY_PREFIX}{step:09d}"


def step_of(uri: str) -> int:
    """The step a checkpoint directory's name says it holds."""
    return int(uri.rstrip("/").rsplit("/", 1)[-1][len(DIRECTORY_PREFIX):])


# ----------------------------------------------------------------------------------------------------------
# Gathering and restoring state through DeepSpeed
# ----------------------------------------------------------------------------------------------------------


def _base_optimizer(engine):
    """The torch optimizer under DeepSpeed's wrappers (ZeRO and bf16 wrap it; stage 0 fp32 does not)."""
    optimizer = engine.optimizer
    return getattr(optimizer, "optimizer", optimizer)


def _link_optimizer_states(engine, create: bool) -> None:
    """Makes DeepSpeed's per-parameter views of the Adam moments current.

    ZeRO and the bf16 optimizer link those views once, right after the first optimizer step; with more than
    one parameter group the later groups have no state yet at that moment and stay unlinked. Before a restore
    (no step taken yet) the states are created first, as zeros, so they can be written into.
    """
    base = _base_optimizer(engine)
    if create:
        # ZeRO-3 hands its fp32 partitions to the torch optimizer one sub-group at a time, inside its step;
        # between steps the optimizer's param_groups are empty and the partitions are only in its own list.
        flats = [flat for group in base.param_groups for flat in group["params"]]
        flats += getattr(engine.optimizer, "fp32_partitioned_groups_flat", [])
        for flat in flats:
            if flat not in base.state or "exp_avg" not in base.state[flat]:
                base.state[flat] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(flat),
                                    "exp_avg_sq": torch.zeros_like(flat)}
    if hasattr(engine.optimizer, "_lazy_init_hp_params_optimizer_state"):
        engine.optimizer._hp_optimizer_states_linked = False
        engine.optimizer._lazy_init_hp_params_optimizer_state()


def gather_full_params(engine) -> dict[str, torch.Tensor]:
    """fp32 parameters in full on every rank (the master copy under mixed precision). A collective."""
    from deepspeed.utils import safe_get_full_fp32_param

    params = {}
    for name, param in engine.module.named_parameters():
        full = safe_get_full_fp32_param(param)
        params[name] = (param.detach() if full is None else full).float().cpu().clone()
    return params


def gather_full_state(engine) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], int]:
    """(fp32 parameters, Adam moments, optimizer step) in full on every rank. A collective: all ranks call it."""
    from deepspeed.utils import safe_get_full_optimizer_state

    base = _base_optimizer(engine)
    _link_optimizer_states(engine, create=False)
    params, moments = gather_full_params(engine), {}
    for name, param in engine.module.named_parameters():
        for key in ("exp_avg", "exp_avg_sq"):
            value = safe_get_full_optimizer_state(param, key)
            if value is None:  # stage 0 in fp32: the torch optimizer holds per-parameter state
                value = base.state.get(param, {}).get(key, torch.zeros_like(param))
            moments[f"{key}/{name}"] = value.float().cpu().clone()
    steps = [state["step"] for state in base.state.values() if "step" in state]
    return params, moments, int(steps[0]) if steps else 0


def load_module_weights(module: torch.nn.Module, params: dict[str, torch.Tensor]) -> None:
    """Before deepspeed.initialize: the module's own weights, exactly (fp32)."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            param.copy_(params[name])


def restore_optimizer_state(engine, params: dict[str, torch.Tensor], moments: dict[str, torch.Tensor],
                            optimizer_step: int) -> None:
    """After deepspeed.initialize: fp32 masters, Adam moments and step count, into whatever partitioning
    this run uses."""
    from deepspeed.utils import (safe_set_full_fp32_param, safe_set_full_optimizer_state, safe_set_local_fp32_param,
                                 safe_set_local_optimizer_state)

    base = _base_optimizer(engine)
    _link_optimizer_states(engine, create=True)
    for name, param in engine.module.named_parameters():
        states = {key: moments[f"{key}/{name}"] for key in ("exp_avg", "exp_avg_sq")}
        if hasattr(param, "ds_tensor"):  # ZeRO-3: this rank's partition of each
            safe_set_local_fp32_param(param, _zero3_partition(param, params[name]))
            for key, value in states.items():
                safe_set_local_optimizer_state(param, _zero3_partition(param, value), key)
        elif hasattr(param, "_hp_mapping"):  # ZeRO-1/2 and the bf16 optimizer
            safe_set_full_fp32_param(param, params[name].to(param.device))
            for key, value in states.items():
                safe_set_full_optimizer_state(param, value.to(param.device), key)
        else:  # stage 0 in fp32: torch's own per-parameter state
            base.state[param] = {"step": torch.tensor(float(optimizer_step)),
                                 **{key: value.to(param.device).clone() for key, value in states.items()}}
    for state in base.state.values():
        if "step" in state:
            state["step"] = torch.tensor(float(optimizer_step), dtype=torch.float32)


def _zero3_partition(param, full: torch.Tensor) -> torch.Tensor:
    """This rank's slice of a full tensor as ZeRO-3 partitions `param`: equal slices of the flattened tensor,
    the last one zero-padded. (DeepSpeed 0.19.8's safe_set_full_fp32_param misses the padding: it fails on any
    tensor whose size the world size does not divide, such as a bias of 37 on 2 ranks.)"""
    import torch.distributed as dist

    # Data parallelism only: the partition group is the whole world unless DeepSpeed says otherwise.
    rank = getattr(param, "ds_zero_partition_rank", None)
    ranks = getattr(param, "ds_zero_partition_world_size", None)
    rank, ranks = (dist.get_rank(), dist.get_world_size()) if rank is None or ranks is None else (rank, ranks)
    size = param.ds_tensor.numel()
    flat = full.flatten().to(param.ds_tensor.device, torch.float32)
    padded = torch.zeros(size * ranks, dtype=flat.dtype, device=flat.device)
    padded[: flat.numel()] = flat
    return padded[rank * size: (rank + 1) * size].clone()


# ----------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------


def write_checkpoint(directory: str, params: dict, moments: dict, trainer_state: dict) -> None:
    """Writes a checkpoint into a local directory, its marker last."""
    os.makedirs(directory, exist_ok=True)
    save_file(params, os.path.join(directory, MODEL_FILE), metadata={"format": "pt"})
    save_file(moments, os.path.join(directory, OPTIMIZER_FILE), metadata={"format": "pt"})
    with open(os.path.join(directory, STATE_FILE), "w") as handle:
        json.dump(trainer_state, handle, indent=1, sort_keys=True)
    files = {}
    for name in (MODEL_FILE, OPTIMIZER_FILE, STATE_FILE):
        with open(os.path.join(directory, name), "rb") as handle:
            data = handle.read()
        files[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    marker = {"format": FORMAT, "version": VERSION, "step": trainer_state["step"], "files": files}
    with open(os.path.join(directory, MARKER), "w") as handle:
        json.dump(marker, handle, indent=1, sort_keys=True)


@dataclass
class LoadedCheckpoint:
    uri: str
    step: int
    params: dict[str, torch.Tensor]
    moments: dict[str, torch.Tensor]
    trainer_state: dict


def read_verified(uri: str) -> LoadedCheckpoint:
    """Reads a checkpoint and checks every file against its marker; ValueError says what is wrong."""
    try:
        marker = json.loads(storage.read_text(storage.join(uri, MARKER)))
    except FileNotFoundError:
        raise ValueError(f"{uri}: no {MARKER} (incomplete checkpoint)") from None
    except json.JSONDecodeError:
        raise ValueError(f"{uri}: {MARKER} is not valid JSON") from None
    if marker.get("format") != FORMAT or marker.get("version") != VERSION:
        raise ValueError(f"{uri}: not an {FORMAT} of version {VERSION}")
    contents = {}
    for name, expected in marker["files"].items():
        try:
            data = storage.read_bytes(storage.join(uri, name))
        except FileNotFoundError:
            raise ValueError(f"{uri}: {name} is missing") from None
        if len(data) != expected["bytes"] or hashlib.sha256(data).hexdigest() != expected["sha256"]:
            raise ValueError(f"{uri}: {name} is truncated or corrupt ({len(data)} of {expected['bytes']} bytes)")
        contents[name] = data
    return LoadedCheckpoint(
        uri=uri,
        step=int(marker["step"]),
        params=load_safetensors(contents[MODEL_FILE]),
        moments=load_safetensors(contents[OPTIMIZER_FILE]),
        trainer_state=json.loads(contents[STATE_FILE]),
    )


def list_checkpoints(run_uri: str) -> list[str]:
    """URIs of the checkpoint directories under a run, newest step first."""
    fs, path = storage.filesystem(run_uri)
    try:
        entries = fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    names = sorted((name for name in (entry.rstrip("/").rsplit("/", 1)[-1] for entry in entries)
                    if _DIRECTORY_PATTERN.fullmatch(name)), reverse=True)
    return [storage.join(run_uri, name) for name in names]


def prune_checkpoints(run_uri: str, keep: int) -> list[str]:
    """Deletes all but the newest `keep` checkpoints; returns the deleted URIs.

    Ray Train prunes the checkpoints it registered. An interrupted run leaves some it never did (its snapshot
    lags the background uploads: 2 of 5 after a Ctrl-C here), and a resumed run kept those for good. A snapshot
    that names a deleted checkpoint goes too: this pipeline resumes from its own listing, and Ray Train would
    refuse to start from it (see drop_stale_ray_snapshot).
    """
    stale = list_checkpoints(run_uri)[keep:]
    for uri in stale:
        fs, path = storage.filesystem(uri)
        fs.rm(path, recursive=True)
    if stale:
        drop_stale_ray_snapshot(run_uri, log=lambda _: None)
    return stale


def latest_good_checkpoint(run_uri: str, log=logger.warning) -> LoadedCheckpoint | None:
    """The newest checkpoint that verifies; newer ones that do not are reported and passed over."""
    for uri in list_checkpoints(run_uri):
        try:
            return read_verified(uri)
        except ValueError as problem:
            log(f"warning: skipping checkpoint {problem}; falling back to the previous one")
    return None


RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"


def drop_stale_ray_snapshot(run_uri: str, log=logger.warning) -> None:
    """Ray Train refuses to start a run whose snapshot names a checkpoint that is gone (deleted by hand, or
    lost from a bucket). This pipeline resumes from its own verified listing, so such a snapshot is removed
    and the run goes on from the newest good checkpoint."""
    uri = storage.join(run_uri, RAY_SNAPSHOT)
    try:
        snapshot = json.loads(storage.read_text(uri))
    except FileNotFoundError:
        return
    except json.JSONDecodeError:
        snapshot = {"checkpoint_results": [{"checkpoint_dir_name": "(unreadable snapshot)"}]}
    missing = [entry.get("checkpoint_dir_name") for entry in snapshot.get("checkpoint_results", [])
               if not storage.exists(storage.join(run_uri, str(entry.get("checkpoint_dir_name"))))]
    if missing:
        log(f"warning: {uri} names checkpoints that are gone ({', '.join(map(str, missing))}); removing it")
        fs, path = storage.filesystem(uri)
        fs.rm(path)
