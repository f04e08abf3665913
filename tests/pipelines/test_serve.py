"""`electra serve`: a fine-tuned classifier and its ONNX export behind Ray Serve on 127.0.0.1, called through a real
HTTP client: its answers are the pyfunc's and the export's, bad input gets a one-line 400/413 while the server
keeps serving, 16 clients x 2,000 requests are all answered, and a SIGKILLed replica loses no request."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time

import pytest
import requests

from pipelines.cli import main
from pipelines.config import ExportConfig, ServeConfig
from pipelines.deploy.export import run_export
from pipelines.deploy.load import run_load
from pipelines.deploy.onnx_classifier import OnnxClassifier
from pipelines.deploy.serve import start_serving, stop_serving
from pipelines.ray_runtime import free_loopback_port
from tests.pipelines.conftest import command_errors

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]  # Ray Serve on the shared local Ray
TEXTS = ["the movie was great", "the film was dull", "scenes", "a lovely story with the actors and a plot",
         "the plot was awful and the actors were " + "very " * 60 + "bad"]  # the last is truncated at 24 tokens
PAIRS = [["the movie was great", "the film was dull"], ["scenes", "a lovely story"]]


@pytest.fixture(scope="module")
def port():
    """Serve's HTTP address is fixed for a cluster when it first starts, so every app in this module uses one."""
    return free_loopback_port()


@pytest.fixture(scope="module")
def onnx_export(fine_tuned, tmp_path_factory):
    """The fp32 export, registered as an ONNX-flavor version: (its directory, models:/ URI). fp32, because int8's
    dynamic quantization scales activations per batch, so an input's int8 scores depend a little on which requests
    it was batched with."""
    source, registry = fine_tuned
    output = tmp_path_factory.mktemp("served") / "fp32"
    record = run_export(ExportConfig(model=source, output=str(output), tracking_uri=registry, register="served-onnx"),
                        log=lambda _: None)
    return str(output), f"models:/served-onnx/{record['registry']['version']}"


@pytest.fixture(scope="module")
def onnx_server(fine_tuned, onnx_export, port):
    """The registered export served by the `electra serve` command, as a user runs it, in its own process that
    joins this session's Ray: 2 replicas, batches of at most 4 inputs. Its teardown stops it with SIGTERM, as
    `ray job stop` or `docker stop` would, and checks that it removed its application and exited 0."""
    import ray
    from ray import serve

    _, registry = fine_tuned
    command = [sys.executable, "-m", "pipelines.cli", "serve", "--model", onnx_export[1], "--tracking-uri", registry,
               "--port", str(port), "--replicas", "2", "--max-batch-size", "4", "--max-body-bytes", "20000",
               "--name", "served-onnx", "--address", ray.get_runtime_context().gcs_address]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               start_new_session=True)
    try:
        printed = []
        for line in process.stdout:  # it prints its URL once every replica is ready
            printed.append(line)
            if "stop: Ctrl-C" in line:
                break
        url = f"http://127.0.0.1:{port}"
        assert any(f"models:/served-onnx/1 (onnx, 2 replica(s)) at {url}" in line for line in printed), printed
        yield url
        process.send_signal(signal.SIGTERM)
        rest = process.communicate(timeout=120)[0]
        assert process.returncode == 0 and "electra serve: stopped" in rest, rest
        assert "served-onnx" not in serve.status().applications
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


def post(url: str, body, **kwargs) -> requests.Response:
    if isinstance(body, (bytes, str)) or callable(body):
        data = body() if callable(body) else body
        return requests.post(f"{url}/predict", data=data, headers={"Content-Type": "application/json"},
                             timeout=60, **kwargs)
    return requests.post(f"{url}/predict", json=body, timeout=60, **kwargs)


def test_the_served_model_answers_what_the_registered_pyfunc_answers_in_pytorch_and_in_onnx(fine_tuned, port):
    """The champion served as it is (PyTorch), then the same source with --format onnx (exported to fp32 by each
    replica as it starts), replacing the first under the same application name."""
    import mlflow
    import pandas as pd

    _, registry = fine_tuned
    answers = {}
    for format in ("auto", "onnx"):
        config = ServeConfig(model="models:/exported@champion", format=format, port=port, tracking_uri=registry,
                             name="served-torch")
        served = start_serving(config)
        assert served["format"] == ("torch" if format == "auto" else "onnx")
        assert served["model"] == "models:/exported/1"  # the alias, resolved once for every replica
        health = requests.get(f"{served['url']}/healthz", timeout=30)
        assert health.status_code == 200 and health.json()["model"]["version"] == "1"
        assert health.json()["model"]["format"] == served["format"]
        answers[served["format"]] = post(served["url"], {"inputs": TEXTS}).json()["predictions"]
    stop_serving(config)
    mlflow.set_tracking_uri(registry)
    try:
        expected = mlflow.pyfunc.load_model("models:/exported@champion").predict(pd.DataFrame({"sentence": TEXTS}))
    finally:
        mlflow.set_tracking_uri(None)
    for format, tolerance in (("torch", 1e-6), ("onnx", 1e-5)):
        assert [a["label"] for a in answers[format]] == expected["label"].tolist()
        for answer, (_, row) in zip(answers[format], expected.iterrows()):
            assert answer["scores"] == pytest.approx({"negative": row["negative"], "positive": row["positive"]},
                                                     abs=tolerance)


def test_the_served_export_answers_what_the_export_answers_for_texts_pairs_and_long_requests(onnx_server,
                                                                                            onnx_export):
    local = OnnxClassifier(onnx_export[0])
    many = [TEXTS[i % len(TEXTS)] + f" {i}" for i in range(11)]  # 11 inputs: split into batches of 4
    for inputs in (TEXTS, PAIRS, many):
        response = post(onnx_server, {"inputs": inputs})
        assert response.status_code == 200
        answers, expected = response.json()["predictions"], local.predict(inputs)
        assert [a["label"] for a in answers] == [e["label"] for e in expected]
        assert all(a["scores"] == pytest.approx(e["scores"], abs=1e-5) for a, e in zip(answers, expected))
    health = requests.get(f"{onnx_server}/healthz", timeout=30).json()
    assert health["status"] == "ready" and health["model"]["format"] == "onnx"
    assert health["model"]["labels"] == ["negative", "positive"]


@pytest.mark.parametrize("body, status, message", [
    (b'{"inputs": ["unclosed', 400, "the body is not JSON"),
    (b"\xff\xfe not text", 400, "the body is not JSON"),
    ({"texts": ["a"]}, 400, 'no "inputs" field'),
    (["a", "b"], 400, 'no "inputs" field'),
    ({"inputs": "a single string"}, 400, '"inputs" must be a list, got a string'),
    ({"inputs": []}, 400, '"inputs" is empty'),
    ({"inputs": ["fine", 3]}, 400, "inputs[1] must be a string or a [first, second] pair of strings, got a number"),
    ({"inputs": [["a", "b", "c"]]}, 400, "inputs[0] must be a string or a [first, second] pair of strings, got a "
                                         "list of 3"),
    ({"inputs": [None]}, 400, "inputs[0] must be a string or a [first, second] pair of strings, got null"),
    ({"inputs": ["x" * 30_000]}, 413, "over the limit of 20000 bytes"),
    # sent chunked, without a Content-Length: refused while it streams in
    (lambda: (part for part in [b'{"inputs": ["', b"y" * 15_000, b"y" * 15_000, b'"]}']), 413, "over the limit"),
])
def test_bad_input_gets_a_one_line_json_error_and_the_server_keeps_serving(onnx_server, body, status, message):
    response = post(onnx_server, body)
    assert response.status_code == status
    error = response.json()["error"]
    assert message in error and "\n" not in error
    assert post(onnx_server, {"inputs": TEXTS[:1]}).status_code == 200


def test_unknown_routes_are_404_with_the_routes_that_exist(onnx_server):
    response = requests.get(f"{onnx_server}/predict", timeout=30)
    assert response.status_code == 404 and "POST /predict or GET /healthz" in response.json()["error"]


def test_16_clients_and_2000_requests_are_all_answered_correctly(onnx_server, onnx_export):
    payloads = [[TEXTS[i % len(TEXTS)]] for i in range(7)] + [PAIRS, TEXTS[:3]]
    expected = [[a["label"] for a in OnnxClassifier(onnx_export[0]).predict(inputs)] for inputs in payloads]
    report = run_load(onnx_server, payloads, clients=16, requests=2000)
    print(report.summary())
    assert not report.failures and len(report.answers) == 2000
    assert all([a["label"] for a in answers] == expected[index % len(payloads)]
               for index, answers in report.answers.items())


def test_a_sigkilled_replica_loses_no_request_and_is_restarted(onnx_server):
    import ray
    from ray.util.state import list_actors

    def replica_pids() -> list[int]:
        actors = list_actors(address=ray.get_runtime_context().gcs_address, filters=[("state", "=", "ALIVE")],
                             raise_on_missing_output=False)
        return [a.pid for a in actors if a.class_name.endswith("ModelReplica")]

    before = replica_pids()
    assert len(before) == 2
    killed = []
    report = run_load(onnx_server, [TEXTS[:2], TEXTS[2:]], clients=16, requests=600,
                      midway=lambda: (killed.append(before[0]), os.kill(before[0], signal.SIGKILL)))
    print(report.summary(), dict(collections.Counter(report.failures.values())))
    assert killed and not report.failures and len(report.answers) == 600
    deadline = time.time() + 120
    while time.time() < deadline and not (len(replica_pids()) == 2 and before[0] not in replica_pids()):
        time.sleep(1)
    after = replica_pids()
    assert len(after) == 2 and before[0] not in after
    assert post(onnx_server, {"inputs": TEXTS}).status_code == 200


@pytest.mark.parametrize("arguments, message", [
    (["--model", "{tmp}"], "not a fine-tuned model or an export"),
    (["--model", "models:/exported@no-such-alias"], "not found in the registry"),
    (["--model", "{export}", "--format", "torch"], "an ONNX export holds no PyTorch weights"),
])
def test_serving_what_is_not_a_servable_model_exits_2_with_one_line(fine_tuned, onnx_export, tmp_path, capsys,
                                                                    arguments, message):
    _, registry = fine_tuned
    arguments = [a.format(tmp=tmp_path, export=onnx_export[0]) for a in arguments]
    status = main(["serve", *arguments, "--tracking-uri", registry])
    errors = command_errors(capsys.readouterr().err)
    assert status == 2 and len(errors) == 1 and message in errors[0]
