"""Stage configs: YAML section, then flags, then --set; wrong keys and types are one-line errors."""

from __future__ import annotations

import dataclasses

import pytest

from pipelines.cli import main
from pipelines.config import (FinetuneConfig, PrepareConfig, PretrainConfig, build_stage_config, cpu_has_native_bf16,
                              field_docs)
from pipelines.errors import InputError
from tests.pipelines.conftest import command_errors


def test_file_flags_and_overrides_apply_in_rising_priority(tmp_path):
    (tmp_path / "pipeline.yaml").write_text(
        "prepare:\n  inputs: [a.txt, b.txt]\n  output: out\n  seq_len: 256\n  vocab_size: 8000\n"
    )
    config = build_stage_config(PrepareConfig, "prepare", str(tmp_path / "pipeline.yaml"),
                                flags={"seq_len": 64, "output": None},
                                overrides=["vocab_size=1000", "prepare.strict=true", "short_seq_prob=0"])
    assert config.inputs == ["a.txt", "b.txt"] and config.output == "out"
    assert config.seq_len == 64 and config.vocab_size == 1000 and config.strict is True
    assert config.short_seq_prob == 0.0 and isinstance(config.short_seq_prob, float)


@pytest.mark.parametrize(
    "yaml_text, overrides, message",
    [
        ("prepare:\n  seq_lenght: 64\n", [], "unknown key 'seq_lenght' (did you mean 'seq_len'?)"),
        ("prepare:\n  seq_len: long\n", [], "seq_len: expected an integer"),
        ("prepare:\n  strict: 3\n", [], "strict: expected true or false"),
        ("prepare:\n  documents: paragraphs\n", [], "documents must be"),
        ("prepare: [1, 2]\n", [], "section 'prepare' must be a mapping"),
        ("prepare: {}\n", ["pretrain.lr=1"], "reads section 'prepare'"),
        ("prepare: {}\n", ["seq_len"], "expected key=value"),
        ("prepare: {seq_len: [\n", [], "not valid YAML"),
        ("prepare:\n  seq_len: 64\n   strict: true\n", [], "pipeline.yaml: line 3, column 10: not valid YAML"),
        ("prepare:\n  seq_len: 64\n", ["seq_len=long"], "--set seq_len=long: seq_len: expected an integer"),
        ("prepare:\n  seq_len: 64\n", ["seq_len=0"], "--set seq_len=0: seq_len must be in 8..4096"),
    ],
)
def test_bad_config_is_a_one_line_error_naming_the_file_or_field(tmp_path, yaml_text, overrides, message):
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml_text)
    with pytest.raises(InputError) as error:
        build_stage_config(PrepareConfig, "prepare", str(path), overrides=overrides)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(InputError, match="nope.yaml: config file not found"):
        build_stage_config(PrepareConfig, "prepare", str(tmp_path / "nope.yaml"))


@pytest.mark.parametrize("command, cls", [("prepare", PrepareConfig), ("pretrain", PretrainConfig),
                                          ("finetune", FinetuneConfig)])
def test_every_config_field_is_a_flag_with_its_documentation_as_help(command, cls, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    docs = field_docs(cls)
    for field in dataclasses.fields(cls):
        if field.name == "model":  # a mapping: set with --set model.KEY=VALUE ... or the config file
            continue
        flag = "--input" if field.name == "inputs" else "--" + field.name.replace("_", "-")
        assert flag in text and docs[field.name][:40] in text


def test_list_fields_take_several_values_and_true_defaults_can_be_turned_off():
    from pipelines.cli import build_parser

    args = build_parser().parse_args(["prepare", "--input", "a.txt", "b.txt.gz", "--output", "out", "--strict"])
    assert args.inputs == ["a.txt", "b.txt.gz"] and args.strict is True
    assert build_parser().parse_args(["finetune", "--no-rescale-embeddings"]).rescale_embeddings is False
    # left out, a flag leaves the config file's value (or the field's default) in place
    assert build_parser().parse_args(["finetune"]).rescale_embeddings is None


def test_a_preset_that_does_not_exist_is_refused_with_exit_2(tmp_path, capsys):
    status = main(["pretrain", "--data", str(tmp_path), "--name", "x", "--preset", "huge"])
    (error,) = command_errors(capsys.readouterr().err)
    assert status == 2 and "preset must be one of" in error and "huge" in error


@pytest.mark.parametrize("argv, message", [
    (["prepare", "--input", "in", "--output", "out", "--seq-len", "100000"], "seq_len must be in 8..4096, got 100000"),
    (["prepare", "--input", "in", "--output", "out", "--vocab-size", "3"], "vocab_size must be in 100..1,000,000"),
    (["pretrain", "--data", "d", "--name", "x", "--lr", "nan"], "lr must be a finite number, got nan"),
    (["pretrain", "--data", "d", "--name", "x", "--lr", "-1"], "lr must be positive, got -1"),
    (["pretrain", "--data", "d", "--name", "x", "--grad-clip", "inf"], "grad_clip must be a finite number"),
    (["finetune", "--model", "m", "--train", "t", "--eval", "e", "--output", "o", "--lr", "-1"],
     "lr must be positive"),
    (["finetune", "--model", "m", "--train", "t", "--eval", "e", "--output", "o", "--warmup-fraction", "1.5"],
     "warmup_fraction must be in [0, 1)"),
    (["finetune", "--model", "m", "--train", "t", "--eval", "e", "--output", "o", "--seed", "-1"],
     "seed must be 0 or more, got -1"),
    (["pretrain", "--data", "d", "--name", "x", "--warmup-steps", "-5"], "warmup_steps must be 0 or more, got -5"),
    (["pretrain", "--data", "d", "--name", "x", "--max-nonfinite-steps", "0"],
     "max_nonfinite_steps must be at least 1"),
])
def test_out_of_range_numbers_are_refused_before_any_work_with_exit_2(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    status = main(argv)
    (error,) = command_errors(capsys.readouterr().err)
    assert status == 2 and message in error and not list(tmp_path.iterdir())


@pytest.mark.parametrize("flags, native", [("fpu avx2 avx512f avx512_bf16 sha_ni", True),
                                           ("fpu avx2 amx_bf16 amx_tile", True), ("fpu sse4_2 avx2 fma", False)])
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, flags, native):
    (tmp_path / "cpuinfo").write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\n")
    assert cpu_has_native_bf16(str(tmp_path / "cpuinfo")) is native
    assert cpu_has_native_bf16(str(tmp_path / "missing")) is False


def test_cpu_training_takes_bf16_autocast_but_not_fp16():
    assert PretrainConfig(precision="bf16").resolved_precision == "bf16"
    assert PretrainConfig(precision="auto", gpus_per_worker=1).resolved_precision == "bf16"
    with pytest.raises(ValueError, match="fp16 needs GPUs"):
        PretrainConfig(precision="fp16")
