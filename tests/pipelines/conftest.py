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


def command_errors(stderr: str) -> list[str]:
    """The command's own error lines. A local Ray streams its workers' logs into the same stderr whenever
    they arrive, so those lines are left out."""
    return [line for line in stderr.splitlines() if line.startswith("electra ")]
