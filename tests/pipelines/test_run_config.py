"""`electra run` configs: the shipped ones load and validate, bad ones are one-line errors with exit 2."""

from pathlib import Path

import pytest

from pipelines.cli import main
from pipelines.config import (FinetuneConfig, PipelineConfig, PrepareConfig, PretrainConfig, from_dict,
                              pipeline_sections)
from pipelines.errors import InputError
from pipelines.pretrain.parallelism import effective_zero_stage
from tests.pipelines.conftest import command_errors

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
CLASSES = {"pipeline": PipelineConfig, "prepare": PrepareConfig, "pretrain": PretrainConfig, "finetune": FinetuneConfig}


def test_the_three_shipped_configs_exist():
    assert {path.name for path in CONFIGS} >= {"demo.yaml", "small-1gpu.yaml", "base-multinode.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_each_shipped_config_loads_and_validates(path):
    sections = pipeline_sections(str(path))
    configs = {name: from_dict(CLASSES[name], values, str(path)) for name, values in sections.items()}
    pretrain = configs["pretrain"]
    assert pretrain.global_batch_size % (pretrain.micro_batch_size * pretrain.workers) == 0
    if path.name == "demo.yaml":
        assert configs["pipeline"].demo_data and pretrain.preset == "mini" and pretrain.gpus_per_worker == 0
    if path.name == "small-1gpu.yaml":
        assert pretrain.preset == "small" and pretrain.workers == 1 and pretrain.gpus_per_worker == 1
    if path.name == "base-multinode.yaml":
        assert pretrain.preset == "base" and pretrain.workers > 1 and pretrain.gpus_per_worker == 1
        assert effective_zero_stage(pretrain, pretrain.workers) == 1  # bf16 on GPUs: the measured default
        assert configs["pipeline"].root.startswith("s3://")


def test_overrides_name_their_section(tmp_path):
    config = tmp_path / "pipeline.yaml"
    config.write_text("pipeline:\n  root: out\npretrain:\n  max_steps: 10\n")
    sections = pipeline_sections(str(config), ["pretrain.max_steps=20", "pipeline.retrain=fresh"])
    assert sections["pretrain"]["max_steps"] == 20 and sections["pipeline"]["retrain"] == "fresh"
    with pytest.raises(InputError, match="section.key=value"):
        pipeline_sections(str(config), ["max_steps=20"])


def test_numbers_in_exponent_form_are_numbers_in_files_and_in_set(tmp_path):
    # PyYAML reads YAML 1.1, where 5e-4 (no dot) is a string; users write learning rates this way.
    config = tmp_path / "pipeline.yaml"
    config.write_text("pretrain:\n  lr: 5e-4\n  max_steps: 10\nfinetune:\n  lr: 3E-3\n")
    sections = pipeline_sections(str(config), ["pretrain.weight_decay=1e-2"])
    pretrain = from_dict(PretrainConfig, sections["pretrain"], str(config))
    assert (pretrain.lr, pretrain.weight_decay) == (5e-4, 1e-2)
    assert from_dict(FinetuneConfig, sections["finetune"], str(config)).lr == 3e-3


@pytest.mark.parametrize("text, overrides, expected", [
    ("pretrian:\n  max_steps: 10\n", [], "unknown section 'pretrian' (did you mean 'pretrain'?)"),
    ("pretrain:\n  max_step: 10\n", [], "pretrain: unknown key 'max_step' (did you mean 'max_steps'?)"),
    ("pipeline:\n  retrain: sometimes\n", [], "retrain must be continue or fresh"),
    ("pipeline:\n  root: {root}\n", ["finetune.epochs=many"], "epochs: expected an integer, got 'many'"),
    ("pipeline:\n  root: {root}\n", ["pretrain.max_steps=abc"], "max_steps: expected an integer, got 'abc'"),
    ("pipeline:\n  root: {root}\n", ["pretrain.global_batch_size=10"],
     "global_batch_size (10) must be a multiple of micro_batch_size"),
    ("pipeline:\n  root: {root}\n", ["prepare.seq_len=0"], "seq_len must be in 8..4096, got 0"),
    ("pretrain:\n  preset: tiny\n   max_steps: 3\n", [], "line 3, column 13: not valid YAML"),
])
def test_bad_pipeline_configs_are_one_line_errors_with_exit_2(tmp_path, capsys, text, overrides, expected):
    config = tmp_path / "pipeline.yaml"
    config.write_text(text.format(root=tmp_path / "out"))
    arguments = ["run", "--config", str(config)] + [f"--set={item}" for item in overrides]
    assert main(arguments) == 2
    (error,) = command_errors(capsys.readouterr().err)
    origin = f"--set {overrides[0]}: " if overrides else f"{config}: "  # where the bad value came from
    assert origin in error and expected in error
    assert not (tmp_path / "out").exists()  # refused before any work
