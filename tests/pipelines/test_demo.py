"""The README's first command: a short local run whose export loads in transformers."""

import json

import transformers

from pipelines.cli import main
from pipelines.demo import DemoConfig, pack_token_stream, run_demo
from tests.pipelines.conftest import command_errors


def test_demo_trains_and_exports_models_transformers_can_load(tmp_path):
    config = DemoConfig(output=str(tmp_path), steps=30, batch_size=8, corpus_chars=200_000, vocab_size=1000)
    result = run_demo(config, log=lambda *_: None)

    assert result["last_loss"] < result["first_loss"]
    discriminator = transformers.ElectraForPreTraining.from_pretrained(tmp_path / "export" / "discriminator")
    tokenizer = transformers.ElectraTokenizerFast.from_pretrained(tmp_path / "export" / "discriminator")
    encoded = tokenizer("Return the absolute value of the argument.", return_tensors="pt")
    assert discriminator(**encoded).logits.shape == encoded["input_ids"].shape
    assert (tmp_path / "export" / "generator" / "model.safetensors").exists()
    assert json.loads((tmp_path / "demo_config.json").read_text())["steps"] == 30


def test_pack_token_stream_fills_rows_with_cls_and_sep():
    rows = pack_token_stream([[10, 11, 12], [13, 14], [15, 16, 17, 18, 19]], seq_len=5, cls_id=2, sep_id=3)
    assert rows.tolist() == [[2, 10, 11, 12, 3], [2, 13, 14, 15, 3], [2, 16, 17, 18, 3]]


def test_demo_command_refuses_bad_steps_with_exit_status_2(capsys):
    assert main(["demo", "--steps", "0"]) == 2
    (error,) = command_errors(capsys.readouterr().err)
    assert "--steps" in error
