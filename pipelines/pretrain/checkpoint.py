"""The training checkpoint format: what is saved, how it is verified, how it is found and restored.

A checkpoint is world-size independent: full fp32 parameters and full AdamW moments, by parameter name, so it
restores on any number of workers and any ZeRO stage. It is written in shards: each rank gathers the full
tensors of its own share of the parameters (balanced by size) and writes only those, so no rank holds the
whole state in host memory. Files (version 2):

    model-RRRRR-of-NNNNN.safetensors       rank R's share of the fp32 master weights, by parameter name
    optimizer-RRRRR-of-NNNNN.safetensors   exp_avg/NAME and exp_avg_sq/NAME of the same parameters
    trainer_state.json                     step, samples consumed, optimizer step count, configs, dataset fingerprint
    _checkpoint.json                       every file above with its size and sha256; written last

Version 1 (one model.safetensors and one optimizer.safetensors) is still read. A restore streams each file
through its checksum to local disk and then takes one tensor at a time, so a rank holds at most one full
parameter of the checkpoint in memory beside its own model.

No pickle: everything is safetensors or JSON. Randomness needs no saved state: data order, masking and
dropout are functions of (seed, step, micro-batch).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from electra_core import storage

logger = logging.getLogger(__name__)

FORMAT = "electra-checkpoint"
VERSION = 2
READABLE_VERSIONS = (1, 2)
MARKER = "_checkpoint.json"
STATE_FILE = "trainer_state.json"


def shard_files(rank: int, world_size: int) -> tuple[str, str]:
    """(weights, moments) file names of one rank's shard."""
    suffix = f"{rank:05d}-of-{world_size:05d}.safetensors"
    return f"model-{suffix}", f"optimizer-{suffix}"
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


def gather_full_params(engine, keep: bool = True) -> dict[str, torch.Tensor]:
    """fp32 parameters in full (the master copy under mixed precision), kept where `keep` (the exporting rank);
    a collective that every rank joins, the others holding one tensor at a time."""
    from deepspeed.utils import safe_get_full_fp32_param

    params = {}
    for name, param in engine.module.named_parameters():
        full = safe_get_full_fp32_param(param)
        if keep:
            params[name] = (param.detach() if full is None else full).float().cpu().clone()
        del full
    return params


def parameter_owners(sizes: dict[str, int], world_size: int) -> dict[str, int]:
    """Which rank writes each parameter: largest first to the least loaded rank, so shards are about equal."""
    loads = [0] * world_size
    owners = {}
    for name in sorted(sizes, key=lambda n: (-sizes[n], n)):
        rank = loads.index(min(loads))
        owners[name] = rank
        loads[rank] += sizes[name]
    return owners


def gather_state_shard(engine, rank: int, world_size: int) -> tuple[dict, dict, int]:
    """(fp32 parameters, Adam moments, optimizer step) of this rank's share of the parameters, in full. A
    collective: every rank gathers every tensor in the same order (ZeRO's full-tensor reads are collectives) and
    keeps only its own, so host memory per rank holds 1/world_size of the state, plus one tensor in passing."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    base = _base_optimizer(engine)
    _link_optimizer_states(engine, create=False)
    named = list(engine.module.named_parameters())
    owners = parameter_owners({name: _full_numel(param) for name, param in named}, world_size)
    params, moments = {}, {}
    for name, param in named:
        mine = owners[name] == rank
        full = safe_get_full_fp32_param(param)
        if mine:
            params[name] = (param.detach() if full is None else full).float().cpu().clone()
        for key in ("exp_avg", "exp_avg_sq"):
            value = safe_get_full_optimizer_state(param, key)
            if mine:
                if value is None:  # stage 0 in fp32: the torch optimizer holds per-parameter state
                    value = base.state.get(param, {}).get(key, torch.zeros_like(param))
                moments[f"{key}/{name}"] = value.float().cpu().clone()
        del full
    steps = [state["step"] for state in base.state.values() if "step" in state]
    return params, moments, int(steps[0]) if steps else 0


def _full_numel(param) -> int:
    return int(getattr(param, "ds_numel", param.numel()))  # ZeRO-3 keeps an empty placeholder in .data


def load_module_weights(module: torch.nn.Module, params) -> None:
    """Before deepspeed.initialize: the module's own weights, exactly (fp32). params: a LoadedCheckpoint (read one
    tensor at a time) or a dict of tensors."""
    read = params.param if isinstance(params, LoadedCheckpoint) else params.__getitem__
    with torch.no_grad():
        for name, param in module.named_parameters():
            param.copy_(read(name))


def restore_optimizer_state(engine, checkpoint: LoadedCheckpoint) -> None:
    """After deepspeed.initialize: fp32 masters, Adam moments and step count, into whatever partitioning
    this run uses; one parameter's tensors at a time."""
    from deepspeed.utils import (safe_set_full_fp32_param, safe_set_full_optimizer_state, safe_set_local_fp32_param,
                                 safe_set_local_optimizer_state)

    optimizer_step = checkpoint.trainer_state["optimizer_step"]
    base = _base_optimizer(engine)
    _link_optimizer_states(engine, create=True)
    for name, param in engine.module.named_parameters():
        weights = checkpoint.param(name)
        states = {key: checkpoint.moment(key, name) for key in ("exp_avg", "exp_avg_sq")}
        if hasattr(param, "ds_tensor"):  # ZeRO-3: this rank's partition of each
            safe_set_local_fp32_param(param, _zero3_partition(param, weights))
            for key, value in states.items():
                safe_set_local_optimizer_state(param, _zero3_partition(param, value), key)
        elif hasattr(param, "_hp_mapping"):  # ZeRO-1/2 and the bf16 optimizer
            safe_set_full_fp32_param(param, weights.to(param.device))
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


def write_shard(directory: str, rank: int, world_size: int, params: dict, moments: dict) -> dict[str, dict]:
    """Writes one rank's shard into a local directory; returns its files' sizes and checksums for the marker."""
    os.makedirs(directory, exist_ok=True)
    model_file, optimizer_file = shard_files(rank, world_size)
    save_file(params, os.path.join(directory, model_file), metadata={"format": "pt"})
    save_file(moments, os.path.join(directory, optimizer_file), metadata={"format": "pt"})
    return {name: _file_entry(os.path.join(directory, name)) for name in (model_file, optimizer_file)}


def write_marker(directory: str, trainer_state: dict, shard_listings: list[dict[str, dict]]) -> None:
    """Rank 0, once every rank has written its shard: trainer_state.json, then the marker listing every file."""
    with open(os.path.join(directory, STATE_FILE), "w") as handle:
        json.dump(trainer_state, handle, indent=1, sort_keys=True)
    files = {name: entry for listing in shard_listings for name, entry in listing.items()}
    files[STATE_FILE] = _file_entry(os.path.join(directory, STATE_FILE))
    marker = {"format": FORMAT, "version": VERSION, "step": trainer_state["step"], "world_size": len(shard_listings),
              "files": files}
    with open(os.path.join(directory, MARKER), "w") as handle:
        json.dump(marker, handle, indent=1, sort_keys=True)


def write_checkpoint(directory: str, params: dict, moments: dict, trainer_state: dict) -> None:
    """A whole checkpoint written by one process (a world of one): its shard, then the marker."""
    write_marker(directory, trainer_state, [write_shard(directory, 0, 1, params, moments)])


def _file_entry(path: str) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return {"bytes": os.path.getsize(path), "sha256": digest.hexdigest()}


@dataclass
class LoadedCheckpoint:
    """A verified checkpoint whose tensors are read one at a time from local copies of its files."""

    uri: str
    step: int
    trainer_state: dict
    tensor_files: list[str]
    """Local paths of the safetensors files."""
    local_copy: str | None = None
    """The temporary directory holding downloaded copies (None when the checkpoint is on a local disk)."""
    _index: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for path in self.tensor_files:
            with safe_open(path, framework="pt") as handle:
                self._index.update(dict.fromkeys(handle.keys(), path))

    def tensor(self, key: str) -> torch.Tensor:
        with safe_open(self._index[key], framework="pt") as handle:
            return handle.get_tensor(key)

    def param(self, name: str) -> torch.Tensor:
        return self.tensor(name)

    def moment(self, key: str, name: str) -> torch.Tensor:
        return self.tensor(f"{key}/{name}")

    @property
    def params(self) -> dict[str, torch.Tensor]:
        """Every weight at once (tests and tools; a restore reads them one at a time)."""
        return {key: self.tensor(key) for key in self._index if "/" not in key}

    def close(self) -> None:
        if self.local_copy:
            shutil.rmtree(self.local_copy, ignore_errors=True)


def read_verified(uri: str) -> LoadedCheckpoint:
    """Checks every file of a checkpoint against its marker (streaming each through sha256 into a local copy
    when the checkpoint is not on a local disk); ValueError says what is wrong."""
    try:
        marker = json.loads(storage.read_text(storage.join(uri, MARKER)))
    except FileNotFoundError:
        raise ValueError(f"{uri}: no {MARKER} (incomplete checkpoint)") from None
    except json.JSONDecodeError:
        raise ValueError(f"{uri}: {MARKER} is not valid JSON") from None
    if marker.get("format") != FORMAT or marker.get("version") not in READABLE_VERSIONS:
        raise ValueError(f"{uri}: not an {FORMAT} of version {' or '.join(map(str, READABLE_VERSIONS))}")
    fs, root = storage.filesystem(uri)
    local = storage.is_local(uri)
    copy_dir = None if local else tempfile.mkdtemp(prefix="electra-restore-")
    paths = {}
    try:
        for name, expected in marker["files"].items():
            source = f"{root.rstrip('/')}/{name}"
            target = source if local else os.path.join(copy_dir, name)
            size, digest = _stream_checked(fs, source, None if local else target, uri, name)
            if size != expected["bytes"] or digest != expected["sha256"]:
                raise ValueError(f"{uri}: {name} is truncated or corrupt ({size} of {expected['bytes']} bytes)")
            paths[name] = target
        with open(paths[STATE_FILE]) as handle:
            trainer_state = json.load(handle)
    except BaseException:
        if copy_dir:
            shutil.rmtree(copy_dir, ignore_errors=True)
        raise
    tensors = [path for name, path in sorted(paths.items()) if name.endswith(".safetensors")]
    return LoadedCheckpoint(uri=uri, step=int(marker["step"]), trainer_state=trainer_state, tensor_files=tensors,
                            local_copy=copy_dir)


def _stream_checked(fs, source: str, target: str | None, uri: str, name: str) -> tuple[int, str]:
    """(bytes, sha256) of a file read in blocks, written to `target` on the way when given."""
    digest, size = hashlib.sha256(), 0
    try:
        with fs.open(source, "rb") as handle, (open(target, "wb") if target else contextlib.nullcontext()) as sink:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
                if sink is not None:
                    sink.write(block)
                size += len(block)
    except FileNotFoundError:
        raise ValueError(f"{uri}: {name} is missing") from None
    return size, digest.hexdigest()


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
