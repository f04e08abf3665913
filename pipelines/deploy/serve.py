"""`electra serve`: a fine-tuned classifier behind HTTP as a Ray Serve application, on the local Ray or a cluster.

    POST /predict  {"inputs": ["text", ...]}  (pair tasks: [["first", "second"], ...])
        -> 200 {"predictions": [{"label": "positive", "scores": {"negative": 0.1, "positive": 0.9}}, ...]}
           (regression: [{"value": 3.2}, ...]); 400 / 413 {"error": "one line"} for bad input
    GET  /healthz  -> 200 {"status": "ready", "model": {...}} once a model replica has its model loaded

Skeleton: the driver resolves the model once (an alias becomes its version, so every replica serves the same one)
and checks that the format fits it -> each replica resolves that URI again on its own node (object storage and the
registry are reachable from every node; a local path must be there too) and loads an OnnxClassifier or a
TorchClassifier (ModelReplica) -> HttpRoute, a deployment of its own, validates each request, splits it into
chunks of at most max_batch_size inputs and calls the model replicas; chunks from concurrent requests are batched
(serve.batch) into one model call. A model replica that dies mid-request makes that request a 503 (retry it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import tempfile

from ray import serve
from ray.serve.context import _get_global_client

from pipelines.config import ServeConfig
from pipelines.deploy.sources import local_copy, resolve_model
from pipelines.errors import InputError

logger = logging.getLogger(__name__)
INPUTS_SHAPE = '{"inputs": ["text", ...]} or, for pair tasks, {"inputs": [["first", "second"], ...]}'


class BadRequest(Exception):
    """A request the server refuses (400, or 413 for a body over the limit), with a one-line reason."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def parse_inputs(body: bytes) -> list:
    """The request's inputs: each a string, or a [first, second] pair of strings."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, ValueError) as error:
        raise BadRequest(f"the body is not JSON ({error}); send {INPUTS_SHAPE}") from None
    if not isinstance(payload, dict) or "inputs" not in payload:
        raise BadRequest(f'no "inputs" field; send {INPUTS_SHAPE}')
    inputs = payload["inputs"]
    if not isinstance(inputs, list):
        raise BadRequest(f'"inputs" must be a list, got {_json_type(inputs)}; send {INPUTS_SHAPE}')
    if not inputs:
        raise BadRequest('"inputs" is empty; send at least one text')
    for index, item in enumerate(inputs):
        pair = isinstance(item, list) and len(item) == 2 and all(isinstance(part, str) for part in item)
        if not (isinstance(item, str) or pair):
            raise BadRequest(f"inputs[{index}] must be a string or a [first, second] pair of strings, "
                             f"got {_json_type(item)}")
    return inputs


def _json_type(value) -> str:
    if isinstance(value, list):
        return f"a list of {len(value)}" + (" (not two strings)" if len(value) == 2 else "")
    return {dict: "an object", bool: "a boolean", int: "a number", float: "a number", str: "a string",
            type(None): "null"}[type(value)]


def load_classifier(uri: str, format: str, tracking_uri: str | None, threads: int, work: str):
    """(classifier, what it is) for `uri` in `format`, its files under `work`."""
    source = resolve_model(uri, tracking_uri, work)
    chosen = format_for(source, format)
    directory = local_copy(source["directory"], work)
    if chosen == "onnx" and source["kind"] == "finetune":
        from pipelines.config import ExportConfig
        from pipelines.deploy.export import stage_export

        staged = os.path.join(work, "onnx")
        stage_export(directory, staged, ExportConfig(model=uri, output=staged))
        directory = staged
    if chosen == "onnx":
        from pipelines.deploy.onnx_classifier import OnnxClassifier

        classifier = OnnxClassifier(directory, threads=threads)
    else:
        from pipelines.deploy.torch_classifier import TorchClassifier

        classifier = TorchClassifier(directory, threads=threads)
    described = {key: value for key, value in source.items() if key not in ("directory", "kind", "run_id")}
    return classifier, {**described, "format": chosen, "task_type": classifier.task_type, "labels": classifier.labels}


def format_for(source: dict, format: str) -> str:
    if format == "auto":
        return "onnx" if source["kind"] == "onnx" else "torch"
    if format == "torch" and source["kind"] == "onnx":
        raise InputError(f"{source['uri']}: an ONNX export holds no PyTorch weights; serve it with --format onnx, "
                         "or serve the fine-tuned model it came from with --format torch")
    return format


# Replicas log every request; that goes to Serve's log files (under the Ray session's logs/serve), not to the
# terminal of `electra serve`.
QUIET_REPLICA = {"env_vars": {"RAY_SERVE_LOG_TO_STDERR": "0"}}


@serve.deployment
class ModelReplica:
    """A loaded classifier behind the batcher. Called by HttpRoute, never over HTTP itself."""

    def __init__(self, uri: str, format: str, tracking_uri: str | None, threads: int, max_batch_size: int,
                 batch_wait_ms: float):
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        self.work = tempfile.mkdtemp(prefix="electra-serve-")
        self.classifier, self.model = load_classifier(uri, format, tracking_uri, threads, self.work)
        self.predict.set_max_batch_size(max_batch_size)
        self.predict.set_batch_wait_timeout_s(batch_wait_ms / 1000)

    def __del__(self):
        shutil.rmtree(getattr(self, "work", ""), ignore_errors=True)

    def describe(self) -> dict:
        return self.model

    @serve.batch(batch_size_fn=lambda chunks: sum(len(chunk) for chunk in chunks))
    async def predict(self, chunks: list[list]) -> list[list[dict]]:
        """One model call for the chunks of all requests that arrived within batch_wait_ms (up to max_batch_size
        inputs), run off the event loop so that the next batch gathers meanwhile."""
        inputs = [item for chunk in chunks for item in chunk]
        answers = await asyncio.get_running_loop().run_in_executor(None, self.classifier.predict, inputs)
        split, start = [], 0
        for chunk in chunks:
            split.append(answers[start: start + len(chunk)])
            start += len(chunk)
        return split


@serve.deployment
class HttpRoute:
    """The HTTP face: routes, request checks, splitting into chunks of at most max_batch_size inputs. It is a
    deployment of its own so that a model replica that dies while answering (killed, out of memory) turns into a
    503 the client can retry, where Ray Serve's proxy would answer 500."""

    def __init__(self, model, max_batch_size: int, max_body_bytes: int):
        self.model, self.max_batch_size, self.max_body_bytes = model, max_batch_size, max_body_bytes

    async def __call__(self, request):
        from ray.exceptions import RayActorError
        from starlette.responses import JSONResponse

        route = (request.method, request.url.path.rstrip("/") or "/")
        if route not in (("GET", "/healthz"), ("POST", "/predict")):
            return JSONResponse({"error": f"no route {route[0]} {route[1]}; POST /predict or GET /healthz"},
                                status_code=404)
        try:
            if route == ("GET", "/healthz"):
                return JSONResponse({"status": "ready", "model": await self.model.describe.remote()})
            inputs = parse_inputs(await self.read_body(request))
            chunks = [inputs[i: i + self.max_batch_size] for i in range(0, len(inputs), self.max_batch_size)]
            answers = await asyncio.gather(*(self.model.predict.remote(chunk) for chunk in chunks))
        except BadRequest as error:
            return JSONResponse({"error": str(error)}, status_code=error.status)
        except RayActorError:
            return JSONResponse({"error": "the model replica stopped while answering; retry the request"},
                                status_code=503, headers={"Retry-After": "1"})
        return JSONResponse({"predictions": [answer for chunk in answers for answer in chunk]})

    async def read_body(self, request) -> bytes:
        """The body, refused with 413 as soon as it is known to exceed the limit (by its declared length, or
        while it streams in)."""
        declared = request.headers.get("content-length")
        too_large = BadRequest(f"the body is over the limit of {self.max_body_bytes} bytes; send fewer or shorter "
                               "inputs per request", status=413)
        if declared and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise too_large
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > self.max_body_bytes:
                raise too_large
        return bytes(body)


def start_serving(config: ServeConfig, address: str | None = None) -> dict:
    """Deploys the application and returns once every replica is ready: {"url", "model", "format", "replicas"}."""
    from pipelines.ray_runtime import ensure_ray

    if not config.model:
        raise InputError("--model is required")
    with tempfile.TemporaryDirectory(prefix="electra-serve-check-") as work:
        source = resolve_model(config.model, config.tracking_uri, work)
        chosen = format_for(source, config.format)
    pinned = f"models:/{source['name']}/{source['version']}" if "version" in source else config.model
    ensure_ray(address)
    serve.start(http_options={"host": config.host, "port": config.port})
    listening = _get_global_client().http_config
    if (listening.host, listening.port) != (config.host, config.port):
        raise InputError(f"Ray Serve already listens on {listening.host}:{listening.port} on this cluster (fixed when "
                         f"it first started); serve there with --host {listening.host} --port {listening.port}, or "
                         "stop it first (`serve shutdown`)")
    model = ModelReplica.options(
        num_replicas=config.replicas, ray_actor_options={"num_cpus": config.threads, "runtime_env": QUIET_REPLICA},
        max_ongoing_requests=max(2 * config.max_batch_size, 8),  # a full batch can gather behind the running one
    ).bind(pinned, config.format, config.tracking_uri, config.threads, config.max_batch_size, config.batch_wait_ms)
    route = HttpRoute.options(
        num_replicas=config.replicas, ray_actor_options={"num_cpus": 0, "runtime_env": QUIET_REPLICA},
        max_ongoing_requests=1000,  # it only awaits the model replicas; their own limit is what queues requests
    ).bind(model, config.max_batch_size, config.max_body_bytes)
    serve.run(route, name=config.name, route_prefix="/")
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::") else config.host
    return {"url": f"http://{host}:{config.port}", "model": pinned, "format": chosen, "replicas": config.replicas}


def stop_serving(config: ServeConfig) -> None:
    serve.delete(config.name)


def run_serve(config: ServeConfig, address: str | None = None, log=print) -> None:
    """`electra serve`: deploys, prints where it listens, serves until Ctrl-C (or SIGTERM), then removes the
    application."""
    served = start_serving(config, address)
    url = served["url"]
    log(f"electra serve: {served['model']} ({served['format']}, {config.replicas} replica(s)) at {url}")
    log(f"  curl -s {url}/predict -H 'Content-Type: application/json' -d '{{\"inputs\": [\"some text\"]}}'")
    log(f"  health: GET {url}/healthz; stop: Ctrl-C")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `ray job stop`, docker stop: stop cleanly too
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    stop_serving(config)
    log("electra serve: stopped")
