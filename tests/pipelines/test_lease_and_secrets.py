"""Two runs of one pipeline never write at once; credentials never reach saved configs or logs."""

import json
import time

import pytest

from electra_core import storage
from pipelines.lease import LEASE_FILE, LEASE_HELD_EXIT_STATUS, Lease, LeaseHeld
from pipelines.secrets import redact, redact_text


@pytest.fixture(params=["local", "s3"])
def lease_root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "pipeline")
    return request.getfixturevalue("s3_bucket") + "/pipeline"


def test_a_second_run_is_refused_while_the_first_holds_the_lease(lease_root):
    first = Lease(lease_root, ttl_s=60, settle_s=0.2, log=lambda *_: None)
    with first:
        assert json.loads(storage.read_text(storage.join(lease_root, LEASE_FILE)))["owner"] == first.owner
        with pytest.raises(LeaseHeld, match="another run of this pipeline is in progress") as refused:
            Lease(lease_root, ttl_s=60, settle_s=0.2, log=lambda *_: None).acquire()
        assert refused.value.exit_status == LEASE_HELD_EXIT_STATUS
    # released: the next run goes ahead
    assert not storage.exists(storage.join(lease_root, LEASE_FILE))
    with Lease(lease_root, ttl_s=60, settle_s=0.2, log=lambda *_: None):
        pass


def test_a_lease_whose_holder_died_is_taken_over_after_it_expires(lease_root):
    dead = Lease(lease_root, ttl_s=60, settle_s=0.2)
    record = json.loads(dead._record())
    record["expires_at"] = time.time() - 1  # the holder stopped renewing a while ago
    storage.write_text(storage.join(lease_root, LEASE_FILE), json.dumps(record))
    warnings = []
    with Lease(lease_root, ttl_s=60, settle_s=0.2, log=warnings.append) as taker:
        assert json.loads(storage.read_text(storage.join(lease_root, LEASE_FILE)))["owner"] == taker.owner
    assert any("expired lease" in warning for warning in warnings)


def test_the_holder_renews_its_lease(tmp_path):
    root = str(tmp_path)
    with Lease(root, ttl_s=0.6, settle_s=0.0, log=lambda *_: None):
        first = json.loads(storage.read_text(storage.join(root, LEASE_FILE)))["expires_at"]
        time.sleep(0.5)
        assert json.loads(storage.read_text(storage.join(root, LEASE_FILE)))["expires_at"] > first


def test_credentials_are_redacted_from_keys_uris_and_query_strings():
    config = {
        "tracking_uri": "https://alice:hunter2@mlflow.example.com/",
        "inputs": ["s3://AKIAEXAMPLE:wJalrXUtnFEMI@bucket/raw/", "s3://bucket/clean/"],
        "model": {"aws_secret_access_key": "wJalrXUtnFEMI", "api_key": "sk-123", "hidden_size": 256},
        "signed": "https://bucket.s3.amazonaws.com/x?X-Amz-Signature=abcdef&X-Amz-Expires=60",
        "keep_checkpoints": 3, "tokenizer": "s3://bucket/tokenizer.json", "max_tokens": 5,
    }
    text = json.dumps(redact(config))
    for secret in ("hunter2", "alice", "wJalrXUtnFEMI", "AKIAEXAMPLE", "sk-123", "abcdef"):
        assert secret not in text
    safe = redact(config)
    assert safe["inputs"][1] == "s3://bucket/clean/" and safe["tokenizer"] == "s3://bucket/tokenizer.json"
    assert safe["keep_checkpoints"] == 3 and safe["max_tokens"] == 5 and safe["model"]["hidden_size"] == 256
    assert redact_text("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"
