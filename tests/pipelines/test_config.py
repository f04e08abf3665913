"""Stage configs: YAML section, then flags, then --set; wrong keys and types are one-line errors."""

from __future__ import annotations

import pytest

from pipelines.config import PrepareConfig, build_stage_config
from pipelines.errors import InputError


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
