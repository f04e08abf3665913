"""A local Ray shared by the pipeline tests (starting one costs seconds), and small made-up corpora."""

from __future__ import annotations

import random

import pytest


@pytest.fixture(scope="session")
def local_ray(s3_server):
    """A real local Ray on 127.0.0.1 for this test session; its workers see the moto S3 endpoint."""
    import ray

    from pipelines.ray_runtime import ensure_ray

    ensure_ray()
    yield
    ray.shutdown()


WORDS = ("the movie was a quiet delight with sharp writing and warm performances but its pacing drags in the "
         "middle while the score soars and the camera lingers on faces that tell more than words ever could "
         "critics praised its humour though some found the ending abrupt and the plot thin").split()


def make_sentences(count: int, seed: int = 0) -> list[str]:
    """Review-like sentences of 5 to 30 words."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30))) for _ in range(count)]


@pytest.fixture
def corpus_sentences():
    return make_sentences


def random_discriminator(root, texts: list[str], vocab_size: int) -> str:
    """A tiny discriminator with random weights (seed 0) and a tokenizer trained on `texts`, saved under `root`:
    a model whose tokenizer knows a test task's words, no pretraining needed."""
    import torch

    import electra_core

    tokenizer = electra_core.train_tokenizer(texts, vocab_size=vocab_size)
    config = electra_core.ElectraConfig.from_preset("tiny", **electra_core.special_token_ids(tokenizer))
    torch.manual_seed(0)
    electra_core.ElectraForPreTraining(config).save_pretrained(str(root))
    electra_core.save_tokenizer(tokenizer, str(root))
    return str(root)


def command_errors(stderr: str) -> list[str]:
    """The command's own error lines. A local Ray streams its workers' logs into the same stderr whenever
    they arrive, so those lines are left out."""
    return [line for line in stderr.splitlines() if line.startswith("electra ")]


@pytest.fixture(scope="session")
def fine_tuned(tmp_path_factory, local_ray):
    """A tiny classifier fine-tuned on a learnable task (labels negative/positive, max_seq_len 24) and registered
    as `exported` (@champion) in an embedded store: (its directory, the store's URI). Shared by the export and
    serving tests."""
    import os

    from tests.pipelines.test_finetune import finetune, sentiment_rows, tiny_discriminator, write_tsv

    root = tmp_path_factory.mktemp("tuned")
    labels = ("negative", "positive")
    train = write_tsv(root / "train.tsv", sentiment_rows(400, 21, labels=labels))
    evaluation = write_tsv(root / "dev.tsv", sentiment_rows(200, 22, labels=labels))
    registry = f"sqlite:///{root}/mlflow.db"
    (root / "model").mkdir()
    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        finetune(tiny_discriminator(root / "model"), train, evaluation, root / "out", register="exported",
                 tracking_uri=registry, max_seq_len=24)
    finally:
        if saved is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved
    return str(root / "out"), registry


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` with a SQLite backend on 127.0.0.1, shared by the tests that register; yields its URL."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    root = tmp_path_factory.mktemp("mlflow")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        server.kill()
        raise RuntimeError("mlflow server did not start")
    yield url
    server.terminate()
    server.wait(timeout=30)
