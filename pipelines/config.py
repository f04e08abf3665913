"""Typed stage configs: YAML -> dataclass -> CLI overrides -> validated -> saved with every output.

Each stage declares one dataclass with a docstring under every field. A pipeline config file has one
section per stage (`prepare:`, `pretrain:`, ...); a stage command reads its own section. Overrides come
from the command's flags and from `--set key=value` (or `--set section.key=value`), parsed as YAML scalars.
A wrong key or type is a one-line InputError naming the file and the field.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

import yaml

from pipelines.errors import InputError

T = TypeVar("T")


@dataclass
class PrepareConfig:
    """`electra prepare`: raw text -> tokenized, packed Parquet shards + _manifest.json."""

    inputs: list[str] = field(default_factory=list)
    """Files, directories or globs on any storage URI: .txt, .jsonl, .parquet, optionally .gz/.bz2/.zst."""
    output: str = ""
    """Output directory URI; valid once its _manifest.json exists."""
    tokenizer: str | None = None
    """An existing tokenizer.json (or its directory). None: reuse the output's, or train one on the input."""
    vocab_size: int = 30522
    """WordPiece vocabulary size when a tokenizer is trained."""
    tokenizer_sample_mb: float = 64.0
    """Megabytes of input text (spread over the files) that a new tokenizer is trained on."""
    seq_len: int = 128
    """Tokens per training sequence, [CLS] and [SEP]s included."""
    documents: str = "blank_lines"
    """How .txt holds documents: `blank_lines` (separated by empty lines) or `lines` (one per line)."""
    text_field: str = "text"
    """Field of .jsonl records and column of .parquet files that holds the text."""
    single_segment_prob: float = 0.1
    """Share of sequences built as one segment ([CLS] A [SEP]) rather than two, as in reference ELECTRA."""
    short_seq_prob: float = 0.05
    """Share of sequences given a random shorter target length, as in reference ELECTRA."""
    packing: str = "dense"
    """dense: documents share sequences, a [SEP] between them (RoBERTa's FULL-SENTENCES), so short documents
    do not pad; reference: each document starts a new sequence (google-research/electra)."""
    seed: int = 12345
    """Seed of the packing choices; the output is a deterministic function of inputs, config and seed."""
    split_mb: float = 4.0
    """Megabytes of input per read task: larger uncompressed text files are cut into byte ranges of this size
    (compressed files are read whole), smaller files are grouped into one task up to this size."""
    shard_rows: int = 16384
    """Most sequences in one Parquet shard."""
    max_line_chars: int = 1_000_000
    """Longer lines are cut (at whitespace where possible) so memory stays bounded."""
    executor: str = "auto"
    """Where the read tasks run; the output is the same whichever. ray: Ray actors (on the cluster given, else on a
    local Ray started for the run). local: worker processes of this machine. auto: ray when a cluster is
    given (--address, or RAY_ADDRESS as inside `ray job submit`) or this process is already on one, else local:
    one machine gains nothing from a Ray of its own, whose start and stop cost about 6 s of the CPU the
    tokenizers need (on 2 cores, 40 MB: 19.8 s started its Ray against 10.5 s on a running one)."""
    workers: int = 0
    """Tokenizer processes (Ray actors or local processes); 0 means one per CPU of the Ray cluster or machine."""
    strict: bool = False
    """Exit with status 2, before committing, when any input file fails to read."""
    verify: bool = False
    """On a re-run, check every shard the last manifest lists against its sha256 (reads them all), not only
    that it is there at its listed size; a damaged shard's files are read again."""

    def __post_init__(self) -> None:
        if not 8 <= self.seq_len <= MAX_SEQ_LEN:
            raise ValueError(f"seq_len must be in 8..{MAX_SEQ_LEN}, got {self.seq_len}")
        if not MIN_VOCAB_SIZE <= self.vocab_size <= MAX_VOCAB_SIZE:
            raise ValueError(f"vocab_size must be in {MIN_VOCAB_SIZE}..{MAX_VOCAB_SIZE:,}, got {self.vocab_size}")
        check_numbers(self)
        if self.packing not in ("dense", "reference"):
            raise ValueError(f"packing must be 'dense' or 'reference', got {self.packing!r}")
        if self.executor not in ("auto", "ray", "local"):
            raise ValueError(f"executor must be 'auto', 'ray' or 'local', got {self.executor!r}")
        if self.documents not in ("blank_lines", "lines"):
            raise ValueError(f"documents must be 'blank_lines' or 'lines', got {self.documents!r}")
        for name in ("single_segment_prob", "short_seq_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("shard_rows", "max_line_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.split_mb <= 0 or self.tokenizer_sample_mb <= 0:
            raise ValueError("split_mb and tokenizer_sample_mb must be positive")
        if self.workers < 0:
            raise ValueError(f"workers must be 0 (one per CPU) or more, got {self.workers}")


# Longest prepared sequence: the model's position table grows to it, and attention's memory with its square
# (100,000 was accepted once, and pretraining then asked for 640 GB). ELECTRA's own runs use 128 and 512.
MAX_SEQ_LEN = 4096
# A WordPiece vocabulary needs the special tokens and an alphabet (`--vocab-size 3` gave 53 tokens).
MIN_VOCAB_SIZE, MAX_VOCAB_SIZE = 100, 1_000_000


def check_numbers(config) -> None:
    """Every float setting of `config` is a number: NaN or infinity fail here, not in an optimizer later. A seed
    is 0 or more (numpy's generators refuse negative seeds: a fine-tune's workers failed on one after Ray started)."""
    for item in fields(config):
        value = getattr(config, item.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{item.name} must be a finite number, got {value}")
    if getattr(config, "seed", 0) < 0:
        raise ValueError(f"seed must be 0 or more, got {config.seed}")


PRESET_LEARNING_RATES = {"tiny": 1e-3, "mini": 2e-3, "small": 5e-4, "base": 2e-4, "large": 2e-4}


@dataclass
class PretrainConfig:
    """`electra pretrain`: Ray Train + DeepSpeed ZeRO pretraining with checkpoints on object storage."""

    data: str = ""
    """A committed `electra prepare` output (its _manifest.json is required)."""
    storage: str = "outputs/runs"
    """Where runs live (local path or s3://...); the run's directory is STORAGE/NAME."""
    name: str = ""
    """Run name. Running the same command again resumes the run from its last good checkpoint."""
    preset: str = "small"
    """Model shape: tiny (tests), mini (CPU scale: 2 layers of 64), or the paper's small, base or large."""
    objective: str = "electra"
    """electra (replaced-token detection) or mlm (the BERT-style baseline on the same encoder)."""
    model: dict = field(default_factory=dict)
    """ElectraConfig fields that override the preset (e.g. {num_hidden_layers: 6})."""
    workers: int = 1
    """Ray Train workers (data-parallel ranks)."""
    launcher: str = "ray"
    """ray: Ray Train workers on a local Ray or a cluster (restarts, background uploads, preemption notices).
    local: no Ray; this process trains, or each process of `torchrun --nproc-per-node N -m pipelines.cli pretrain
    --launcher local --workers N ...` is one rank (for a GPU machine without Ray, debugging, benchmarks)."""
    gpus_per_worker: int = 0
    """0 trains on CPU over gloo in fp32; 1 trains on one GPU per worker over NCCL."""
    cpus_per_worker: int = 1
    """CPUs reserved for each worker; its torch uses as many threads."""
    zero_stage: int | None = None
    """DeepSpeed ZeRO stage: 0 (plain data parallel), 1, 2 or 3. Unset: the fastest measured for every preset
    (benchmarks/zero_stages.py), 0 in fp32 and 1 (DeepSpeed's BF16 optimizer, state sharded) in bf16 and fp16.
    Stages 2 and 3 save memory at a cost in speed; no preset needs them to fit. A single worker runs stage 0
    in fp32 (nothing to shard) and stage 1 in bf16."""
    precision: str = "auto"
    """fp32, bf16 or fp16 (GPUs only). auto: bf16 on GPUs, and on CPUs whose instruction set has bf16 matrix
    arithmetic (avx512_bf16 or amx_bf16 in /proc/cpuinfo on the driver), else fp32. bf16 and fp16 are
    DeepSpeed's mixed precision on GPUs and CPU workers alike: the model computes in bf16, the optimizer keeps
    fp32 master weights and moments, gradients are accumulated and reduced in fp32."""
    global_batch_size: int = 128
    """Sequences per optimizer step across all workers; the same for any number of workers."""
    micro_batch_size: int = 32
    """Sequences per forward pass on one worker; gradient accumulation makes up the rest."""
    max_steps: int = 1000
    """Optimizer steps of the whole run."""
    lr: float | None = None
    """Peak learning rate; None takes the preset's (the paper's 5e-4 Small, 2e-4 Base/Large; 2e-3 mini, measured)."""
    warmup_steps: int | None = None
    """Linear warmup, then linear decay to zero; None means min(10,000, 10% of max_steps). A run continued on
    new data warms up again over its new steps."""
    weight_decay: float = 0.01
    """AdamW weight decay (not applied to biases and LayerNorm weights)."""
    adam_epsilon: float = 1e-6
    """AdamW epsilon, as in ELECTRA."""
    grad_clip: float = 1.0
    """Global gradient-norm clipping."""
    max_nonfinite_steps: int = 25
    """A step whose loss or gradient norm is inf or NaN is skipped (no update) and counted (`skipped_steps` in
    metrics.jsonl and the progress line); this many in a row (checked at each log line) stop the run with an
    error, and nothing is exported from it."""
    checkpoint_every: int = 500
    """Steps between checkpoints (a last one is always taken at the end)."""
    keep_checkpoints: int = 3
    """Newest checkpoints kept in storage."""
    max_failures: int = 3
    """Worker-group restarts (from the last checkpoint) before the run is given up."""
    init_from: str | None = None
    """A Hugging Face-format export (discriminator/ and generator/) to continue pretraining from."""
    seed: int = 0
    """Seed of initialisation, data order (with the epoch) and masking (with the step)."""
    log_every: int = 10
    """Steps between metric lines (metrics.jsonl, MLflow, progress)."""
    shuffle_window: int = 8
    """Shards whose rows are shuffled together; data order is a function of (seed, epoch)."""
    prefetch: int = 4
    """Micro-batches read and assembled ahead on a background thread (pinned memory on GPUs), so that reading a
    shard overlaps the step; 0 reads on the training thread. It changes no batch's contents."""
    compile: bool = False
    """torch.compile the model (DeepSpeed's engine.compile, inductor): the step is one graph with fixed shapes and
    no host sync. The first steps wait for compilation (minutes on a few CPU cores); whether it pays is
    measured per device in benchmarks/model_step.py."""
    tracking_uri: str | None = None
    """MLflow tracking URI for live metrics; None: MLFLOW_TRACKING_URI if set, else no MLflow."""
    stop_at_step: int | None = None
    """End this invocation at this step with a checkpoint and no export; the same command without it continues
    to max_steps (time-boxed jobs, staged runs)."""
    record_sample_ids: bool = False
    """Write the ids of the samples each step consumed to samples.jsonl (for audits and tests)."""

    def __post_init__(self) -> None:
        if self.preset not in PRESET_LEARNING_RATES:
            raise ValueError(f"preset must be one of {sorted(PRESET_LEARNING_RATES)}, got {self.preset!r}")
        if self.objective not in ("electra", "mlm"):
            raise ValueError(f"objective must be electra or mlm, got {self.objective!r}")
        if self.launcher not in ("ray", "local"):
            raise ValueError(f"launcher must be ray or local, got {self.launcher!r}")
        if self.zero_stage not in (None, 0, 1, 2, 3):
            raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        if self.gpus_per_worker not in (0, 1):
            raise ValueError(f"gpus_per_worker must be 0 or 1, got {self.gpus_per_worker}")
        if self.gpus_per_worker == 0 and self.precision == "fp16":
            raise ValueError("precision fp16 needs GPUs (gpus_per_worker: 1); on CPU use bf16 or fp32")
        for name in ("workers", "cpus_per_worker", "global_batch_size", "micro_batch_size", "max_steps", "checkpoint_every",
                     "keep_checkpoints", "log_every", "shuffle_window", "max_nonfinite_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        check_numbers(self)
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be 0 or more, got {self.warmup_steps}")
        if self.prefetch < 0:
            raise ValueError(f"prefetch must be 0 or more, got {self.prefetch}")
        for name in ("weight_decay", "adam_epsilon", "grad_clip"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or more, got {getattr(self, name)}")
        if self.global_batch_size % (self.micro_batch_size * self.workers):
            raise ValueError(f"global_batch_size ({self.global_batch_size}) must be a multiple of micro_batch_size "
                             f"x workers ({self.micro_batch_size} x {self.workers})")
        if self.stop_at_step is not None and not 0 < self.stop_at_step <= self.max_steps:
            raise ValueError(f"stop_at_step must be in 1..max_steps ({self.max_steps}), got {self.stop_at_step}")
        if self.name and ("/" in self.name or self.name.startswith(".")):
            raise ValueError(f"name must be a plain directory name, got {self.name!r}")

    @property
    def gradient_accumulation_steps(self) -> int:
        return self.global_batch_size // (self.micro_batch_size * self.workers)

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else PRESET_LEARNING_RATES[self.preset]

    @property
    def resolved_precision(self) -> str:
        if self.precision != "auto":
            return self.precision
        return "bf16" if self.gpus_per_worker or cpu_has_native_bf16() else "fp32"


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this machine's CPU multiplies bf16 matrices natively (AVX512-BF16 or AMX): there bf16 autocast
    trains 1.2-1.8x faster than fp32 (measured on an AVX512-BF16 AMD EPYC, README); elsewhere it is emulated
    and slower."""
    try:
        with open(cpuinfo) as handle:
            flags = next((line for line in handle if line.startswith("flags")), "")
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


BASELINES = ("scratch", "none")
# The fine-tune task types and the metrics each may select its best epoch by (the first is the default).
TASK_METRICS = {
    "classification": ("accuracy", "f1", "mcc"),
    "regression": ("pearson", "spearman"),
    "token-classification": ("f1", "accuracy"),
    "question-answering": ("f1", "exact"),
}


@dataclass
class FinetuneConfig:
    """`electra finetune`: a pretrained discriminator fine-tuned on a labeled task, evaluated, optionally registered."""

    model: str = ""
    """A Hugging Face-format discriminator directory, or a pretrain run (its export is used)."""
    train: str = ""
    """Training data on any storage URI: .tsv, .csv, .jsonl or .parquet rows; for token-classification CoNLL-style
    text (a token and its tag per line, the tag last, a blank line between sentences) or JSONL `tokens`/`tags`;
    for question-answering SQuAD 1.1 / 2.0 JSON or JSONL `question`/`context`/`answers`."""
    eval: str = ""
    """Evaluation data, same format; the best epoch on it is kept."""
    output: str = ""
    """Output directory: the classifier (Hugging Face format), metrics.json, predictions.jsonl."""
    task_type: str = "classification"
    """classification (integer or string labels), regression (float targets, STS-B style) or
    token-classification (a tag per word: named entities in BIO/IOB2/BIOES, or any other tag set) or
    question-answering (extractive: the answer is a span of the context, or none for SQuAD 2.0-style data)."""
    text_column: str | None = None
    """Column of the (first) text; None detects sentence/text/sentence1/question."""
    text_pair_column: str | None = None
    """Column of the second text of a pair; None detects sentence2/text_pair/question2 if present."""
    label_column: str | None = None
    """Column of the label; None detects label/labels/score/target."""
    epochs: int = 3
    """Passes over the training data; the epoch with the best eval metric is kept."""
    lr: float = 1e-4
    """Peak learning rate of the top layer and the head; lower layers get lr * layer_decay^depth."""
    layer_decay: float = 0.8
    """Layer-wise learning-rate decay, 0.8 as in ELECTRA."""
    rescale_embeddings: bool = True
    """Scale the pretrained embedding tables back to the initialisation's RMS before fine-tuning. The model
    computes the same thing (a LayerNorm follows the tables), but its word vectors adapt as fast as fresh ones;
    on the demo task this was worth about 4 points of accuracy from an ELECTRA discriminator."""
    warmup_fraction: float = 0.1
    """Share of the steps spent warming up linearly, then linear decay to zero."""
    weight_decay: float = 0.01
    """AdamW weight decay (not on biases and LayerNorm weights)."""
    batch_size: int = 32
    """Sequences per optimizer step across all workers."""
    max_seq_len: int = 128
    """Longer examples are truncated."""
    doc_stride: int = 64
    """question-answering: a context longer than a window is split into windows that start this many tokens
    apart (at most a window's room), so an answer shorter than a window lies whole in one of them."""
    max_answer_len: int = 30
    """question-answering: the longest answer span considered, in tokens."""
    max_nonfinite_steps: int = 25
    """A step whose loss or gradient norm is inf or NaN is skipped (no update); this many in a row stop the
    fine-tune with an error, and nothing is written or registered."""
    workers: int = 1
    """Ray Train workers (data parallel)."""
    cpus_per_worker: int = 1
    """CPUs reserved for each worker; its torch uses as many threads."""
    gpus_per_worker: int = 0
    """0 trains on CPU; 1 on one GPU per worker."""
    launcher: str = "ray"
    """ray: Ray Train workers on a local Ray or a cluster. local: one worker, in this process, with no Ray (the
    same trials and outputs; it starts in about a second instead of Ray Train's ten or more)."""
    strict: bool = False
    """Refuse (exit 2) a labeled file holding invalid UTF-8; without it such bytes are replaced with U+FFFD,
    counted and named in a warning, as prepare does."""
    seed: int = 0
    """Seed of the first trial: the head's initialisation, data order and dropout; trial k uses seed + k."""
    trials: int = 1
    """Fine-tunes with seeds seed, seed + 1, ...; the median trial is kept, and the registry gate compares
    medians (fine-tuning a small model varies from seed to seed by a few points)."""
    baseline: str = "scratch"
    """scratch: also fine-tune random weights of the pretrained model's shape (its own config.json and tokenizer)
    with the same data, settings and seeds, and report the pretraining gain; none: skip it (half the time)."""
    metric: str | None = None
    """Eval metric that picks the best epoch (and gates promotion): accuracy, f1, mcc (classification), pearson,
    spearman (regression), f1, accuracy (token-classification: entity-level F1 for entity tag sets, macro F1 over
    tags otherwise; token accuracy), f1, exact (question-answering, SQuAD's, in percent); None means the first of
    these for the task type."""
    register: str | None = None
    """Register the result as a new version of this MLflow model (gated promotion to @champion)."""
    tracking_uri: str | None = None
    """MLflow tracking URI; None: MLFLOW_TRACKING_URI, else the embedded default (sqlite under outputs/)."""

    def __post_init__(self) -> None:
        if self.task_type not in TASK_METRICS:
            raise ValueError(f"task_type must be one of {', '.join(TASK_METRICS)}, got {self.task_type!r}")
        for name in ("epochs", "batch_size", "max_seq_len", "workers", "cpus_per_worker", "trials",
                     "max_nonfinite_steps", "doc_stride", "max_answer_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_seq_len > MAX_SEQ_LEN:
            raise ValueError(f"max_seq_len must be at most {MAX_SEQ_LEN}, got {self.max_seq_len}")
        if self.launcher not in ("ray", "local"):
            raise ValueError(f"launcher must be ray or local, got {self.launcher!r}")
        if self.launcher == "local" and self.workers != 1:
            raise ValueError(f"launcher local trains in this process: workers must be 1, got {self.workers}")
        check_numbers(self)
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be 0 or more, got {self.weight_decay}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if not 0.0 < self.layer_decay <= 1.0:
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay}")
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {', '.join(BASELINES)}, got {self.baseline!r}")
        allowed = TASK_METRICS[self.task_type]
        if self.metric is not None and self.metric not in allowed:
            raise ValueError(f"metric must be one of {allowed} for {self.task_type}, got {self.metric!r}")
        if self.batch_size % self.workers:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of workers ({self.workers})")


@dataclass
class ExportConfig:
    """`electra export`: a fine-tuned classifier as an ONNX model that runs with onnxruntime and tokenizers alone."""

    model: str = ""
    """A fine-tune output directory, or a registered version: models:/NAME@ALIAS or models:/NAME/VERSION."""
    output: str = ""
    """Directory for model.onnx, the tokenizer files, config.json (with id2label) and export.json."""
    quantize: str = "none"
    """none (fp32) or int8: ONNX Runtime's dynamic quantization (int8 weights, activations quantized per batch)."""
    max_seq_len: int | None = None
    """Longer inputs are truncated to this many tokens, as in training; default: the fine-tune's max_seq_len."""
    tracking_uri: str | None = None
    """MLflow tracking URI for models:/ URIs and --register (default: MLFLOW_TRACKING_URI, else the embedded store
    under outputs/)."""
    register: str | None = None
    """Log the export to the registry as a new version of this model (ONNX flavor, with the tokenizer and
    export.json beside it), tagged with its source's URI, version and scores."""
    opset: int = 17
    """ONNX opset of the exported graph."""

    def __post_init__(self) -> None:
        if self.quantize not in ("none", "int8"):
            raise ValueError(f"quantize must be none or int8, got {self.quantize!r}")
        if self.max_seq_len is not None and self.max_seq_len < 2:
            raise ValueError(f"max_seq_len must be at least 2, got {self.max_seq_len}")


@dataclass
class ServeConfig:
    """`electra serve`: a fine-tuned classifier (or its ONNX export) behind HTTP, as a Ray Serve application.

    POST /predict {"inputs": ["text", ...]} (pairs: [["first", "second"], ...]) answers {"predictions": [...]};
    GET /healthz answers 200 once a replica is ready.
    """

    model: str = ""
    """An `electra export` directory, a fine-tune output directory, or a registered version (models:/NAME@ALIAS,
    models:/NAME/VERSION; an alias is resolved once, so every replica serves the same version)."""
    format: str = "auto"
    """onnx (onnxruntime; a fine-tuned model is exported to fp32 ONNX when each replica starts), torch (the
    PyTorch model), or auto: onnx for an export, torch for a fine-tune output."""
    host: str = "127.0.0.1"
    """Address the HTTP proxy listens on; 0.0.0.0 exposes the endpoint beyond this machine."""
    port: int = 8000
    """HTTP port of the proxy."""
    replicas: int = 1
    """Replicas of the model, each a Ray actor with `threads` CPUs; requests are spread over them."""
    threads: int = 1
    """CPU threads (and Ray CPUs) per replica."""
    max_batch_size: int = 32
    """Most inputs one model call takes: concurrent requests are batched up to this many inputs, and a longer
    request is split into batches of this size."""
    batch_wait_ms: float = 5.0
    """How long a replica waits for more requests to fill a batch before it runs a partial one."""
    max_body_bytes: int = 1_000_000
    """Larger request bodies are refused with 413."""
    tracking_uri: str | None = None
    """MLflow tracking URI for models:/ URIs (default: MLFLOW_TRACKING_URI, else the embedded store under
    outputs/); replicas read the registry too, so on a cluster it must be reachable from every node."""
    name: str = "electra"
    """Ray Serve application name; serving again under the same name replaces the application."""

    def __post_init__(self) -> None:
        if self.format not in ("auto", "onnx", "torch"):
            raise ValueError(f"format must be auto, onnx or torch, got {self.format!r}")
        for name in ("replicas", "threads", "max_batch_size", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be between 1 and 65535, got {self.port}")
        if self.batch_wait_ms < 0:
            raise ValueError(f"batch_wait_ms must be zero or more, got {self.batch_wait_ms}")


@dataclass
class PipelineConfig:
    """`electra run`: the `pipeline:` section, which ties the stages together.

    Stage URIs left empty in their sections are derived from `root`: ROOT/data (prepare.output and
    pretrain.data), ROOT/runs (pretrain.storage), ROOT/finetune/... (finetune.output); finetune.model is the
    pretraining run. `name` names the pretraining run and the registered model unless their sections do.
    """

    root: str = "outputs/pipeline"
    """Base URI of everything the pipeline writes (local path or s3://...); also holds the run's lease."""
    name: str = "electra"
    """The pretraining run's name and the registered model's name, unless set in their sections."""
    demo_data: bool = False
    """Derive the corpus and a labeled task from the Python standard library's docstrings (offline) into
    ROOT/demo_data and use them as prepare.inputs and finetune.train/eval."""
    retrain: str = "continue"
    """When the prepared data changed since the last pretraining: `continue` the run from its latest checkpoint
    for retrain_steps more steps, or start a `fresh` run (named after the dataset) of pretrain.max_steps."""
    retrain_steps: int = 1000
    """Extra pretraining steps when the data changed and retrain is `continue`."""
    lease_ttl_s: float = 900.0
    """The run holds ROOT/_lease.json, renewed every ttl/3; a second run is refused while it is fresh, and a
    lease not renewed for this long (its holder died) is taken over."""

    def __post_init__(self) -> None:
        if not self.root:
            raise ValueError("root must be a storage URI")
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ValueError(f"name must be a plain directory name, got {self.name!r}")
        if self.retrain not in ("continue", "fresh"):
            raise ValueError(f"retrain must be continue or fresh, got {self.retrain!r}")
        if self.retrain_steps < 1:
            raise ValueError(f"retrain_steps must be at least 1, got {self.retrain_steps}")
        if self.lease_ttl_s < 10:
            raise ValueError(f"lease_ttl_s must be at least 10 seconds, got {self.lease_ttl_s}")


# ----------------------------------------------------------------------------------------------------------
# Building configs from YAML, flags and --set
# ----------------------------------------------------------------------------------------------------------


class YamlLoader(yaml.SafeLoader):
    """yaml.safe_load, reading numbers as YAML 1.2 does: PyYAML follows YAML 1.1, where a float needs a dot, so
    `lr: 5e-4` or `--set pretrain.lr=1e6` would be the strings '5e-4' and '1e6'."""


YamlLoader.add_implicit_resolver("tag:yaml.org,2002:float",
                                 re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def read_yaml(text: str) -> Any:
    return yaml.load(text, Loader=YamlLoader)


def load_yaml(uri: str) -> dict[str, Any]:
    """A YAML mapping from a local path or storage URI."""
    from electra_core import storage

    try:
        data = read_yaml(storage.read_text(uri))
    except FileNotFoundError:
        raise InputError(f"{uri}: config file not found") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        place = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise InputError(f"{uri}: {place}not valid YAML ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{uri}: a config file must be a mapping of sections, got {type(data).__name__}")
    return data


def build_stage_config(
    cls: type[T],
    section: str,
    config_file: str | None = None,
    flags: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
) -> T:
    """The stage config from (in rising priority) defaults, the file's `section`, flags and --set overrides."""
    values: dict[str, Any] = {}
    if config_file:
        data = load_yaml(config_file)
        stage = data.get(section, {})
        if not isinstance(stage, dict):
            raise InputError(f"{config_file}: section {section!r} must be a mapping")
        values.update(_check_keys(cls, stage, f"{config_file}: {section}"))
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    values.update(given)
    for item in overrides or []:
        key, value = parse_override(item, section)
        values.update(_check_keys(cls, {key: value}, "--set"))
    origins = {key: f"--{key.replace('_', '-')}" for key in given}
    origins.update(override_origins(overrides, section).get(section, {}))
    return from_dict(cls, values, where=config_file or "command line", origins=origins)


def pipeline_sections(config_file: str | None, overrides: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """The raw values of every section of a pipeline config (`electra run`), from the file and from
    `--set section.key=value`; each key is checked against its section's dataclass, values are not yet."""
    classes = {"pipeline": PipelineConfig, "prepare": PrepareConfig, "pretrain": PretrainConfig,
               "finetune": FinetuneConfig}
    data = load_yaml(config_file) if config_file else {}
    for name in data:
        if name not in classes:
            close = difflib.get_close_matches(str(name), classes, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (sections: {', '.join(classes)})"
            raise InputError(f"{config_file}: unknown section {name!r}{hint}")
    sections = {}
    for name, cls in classes.items():
        section = data.get(name) or {}
        if not isinstance(section, dict):
            raise InputError(f"{config_file}: section {name!r} must be a mapping")
        sections[name] = dict(_check_keys(cls, section, f"{config_file}: {name}"))
    for item in overrides or []:
        name = item.split("=", 1)[0].split(".", 1)[0].strip()
        if "." not in item.split("=", 1)[0] or name not in classes:
            raise InputError(f"--set {item!r}: expected section.key=value with a section of {', '.join(classes)}")
        key, value = parse_override(item, name)
        sections[name].update(_check_keys(classes[name], {key: value}, "--set"))
    return sections


def parse_override(item: str, section: str) -> tuple[str, Any]:
    """`key=value` or `section.key=value` -> (key, YAML-parsed value)."""
    if "=" not in item:
        raise InputError(f"--set {item!r}: expected key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if key.startswith(section + "."):
        key = key[len(section) + 1:]
    elif "." in key:
        raise InputError(f"--set {item!r}: this command reads section {section!r}, not {key.split('.')[0]!r}")
    try:
        value = read_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def _check_keys(cls: type, values: dict[str, Any], where: str) -> dict[str, Any]:
    known = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise InputError(f"{where}: unknown key {key!r}{hint}")
    return values


def from_dict(cls: type[T], values: dict[str, Any], where: str, origins: dict[str, str] | None = None) -> T:
    """Builds `cls` from plain values, checking each against its field's type. An error names where the value
    came from: `origins` (key -> a flag or `--set ...`) for values given on the command line, else `where`."""
    origins = origins or {}
    hints = typing.get_type_hints(cls)
    converted = {}
    for key, value in _check_keys(cls, values, where).items():
        try:
            converted[key] = coerce(value, hints[key])
        except (TypeError, ValueError) as error:
            raise InputError(f"{origins.get(key, where)}: {key}: {error}") from None
    try:
        return cls(**converted)
    except ValueError as error:
        # Range checks name their field first ("seq_len must be ...").
        origin = next((origin for key, origin in origins.items() if str(error).startswith(f"{key} ")), where)
        raise InputError(f"{origin}: {error}") from None


def override_origins(overrides: list[str] | None, section: str | None = None) -> dict[str, dict[str, str]]:
    """{section: {key: "--set ITEM"}} for `--set` overrides (section.key=value, or key=value of `section`)."""
    origins: dict[str, dict[str, str]] = {}
    for item in overrides or []:
        name = section or item.split("=", 1)[0].split(".", 1)[0].strip()
        key, _ = parse_override(item, name)
        origins.setdefault(name, {})[key] = f"--set {item}"
    return origins


def coerce(value: Any, annotation: Any) -> Any:
    """`value` as `annotation` (int, float, str, bool, list[...], X | None); raises TypeError when it is not."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce(value, option)
            except (TypeError, ValueError) as error:
                errors.append(str(error))
        raise TypeError("; ".join(errors))
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        items = value if isinstance(value, (list, tuple)) else [value]
        return [coerce(item, item_type) for item in items]
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeError(f"expected a mapping, got {value!r}")
        return dict(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise TypeError(f"expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise TypeError(f"expected a string, got {value!r}")
        return str(value)
    return value


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a config dataclass (read from its source): the CLI's help texts."""
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for statement, following in zip(body, body[1:]):
        if (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)
                and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)):
            docs[statement.target.id] = " ".join(following.value.value.split())
    return docs


def to_dict(config: Any) -> dict[str, Any]:
    """Plain data, complete: what workers are handed."""
    return dataclasses.asdict(config)


def saved_dict(config: Any) -> dict[str, Any]:
    """Plain data for saving next to outputs and logging: credentials redacted."""
    from pipelines.secrets import redact

    return redact(to_dict(config) if dataclasses.is_dataclass(config) else config)
