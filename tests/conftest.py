"""Shared fixtures: a real S3 endpoint (moto's server on 127.0.0.1) and small made-up text."""

from __future__ import annotations

import os
import uuid

import pytest


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3-compatible server on 127.0.0.1 for the whole session; yields its endpoint URL.

    The endpoint and dummy credentials go into the process environment for the whole session, so that Ray
    workers started later (the local_ray fixture) inherit them, as they would on a configured cluster.
    """
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {key: os.environ.get(key) for key in _S3_ENVIRONMENT}
    os.environ.update({**_S3_ENVIRONMENT, "AWS_ENDPOINT_URL": endpoint})
    yield endpoint
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    server.stop()


_S3_ENVIRONMENT = {"AWS_ENDPOINT_URL": "", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                   "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh bucket on the moto server; yields s3://bucket."""
    import boto3
    import s3fs

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=name)
    s3fs.S3FileSystem.clear_instance_cache()
    yield f"s3://{name}"
    s3fs.S3FileSystem.clear_instance_cache()


SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "a journey of a thousand miles begins with a single step",
    "all that glitters is not gold",
    "the early bird catches the worm",
    "actions speak louder than words",
    "better late than never, as the saying goes",
    "every cloud has a silver lining",
    "knowledge is power and power corrupts",
    "the pen is mightier than the sword",
    "when in rome, do as the romans do",
]


@pytest.fixture
def sentences() -> list[str]:
    """A few hundred short English sentences, varied enough to train a small WordPiece vocabulary."""
    words = " ".join(SENTENCES).replace(",", "").split()
    made = [f"{a} {b} {c} number {i}" for i, (a, b, c) in enumerate(zip(words, words[3:], words[7:]))]
    return SENTENCES * 10 + made * 3


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Nothing in the tests may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
