"""The declarative infrastructure (cluster/, docker/, .dockerignore), checked without a cluster or a Docker daemon.

Every YAML file under cluster/ is parsed (several documents per file allowed) and each document is checked for what
its kind needs: KubeRay RayCluster / RayJob / RayCronJob (apiVersion ray.io/v1), the plain CronJob fallback and its
RBAC, the Ray cluster launcher config (validated by Ray's own validator) and the runtime env (its excludes run
through Ray's own packager). Across all of them: every image is docker/IMAGE (or its -cpu variant), every
`electra run --config X` names a config that exists, and no credential is written down.
"""

from __future__ import annotations

import datetime
import http.server
import json
import re
import subprocess
import sys
import threading
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
DOCKER = REPO / "docker"
CONFIGS = REPO / "configs"

IMAGE = (DOCKER / "IMAGE").read_text().strip()
CPU_IMAGE = IMAGE + "-cpu"
RAY_API = "ray.io/v1"
GPU = "nvidia.com/gpu"
NODE_SERVICE_ACCOUNT = "electra-ray"
# The configs that the manifests may run (configs/ is written alongside); scheduled retraining runs a GPU one.
KNOWN_CONFIGS = {"demo", "small-1gpu", "base-multinode"}
SCHEDULED_CONFIGS = {"small-1gpu", "base-multinode"}
# `cd <the image's project directory> && electra run --config configs/<name>.yaml [--set section.key=value ...]`
ENTRYPOINT = re.compile(r"^cd (?P<workdir>/\S+) && electra run --config (?P<config>configs/[\w.-]+\.yaml)"
                        r"(?: --set [\w.]+=\S+)*$")


# ----------------------------------------------------------------------------------------------------------
# Reading what is there
# ----------------------------------------------------------------------------------------------------------


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def pinned(name: str) -> str:
    """The version pyproject.toml pins for `name` (extras allowed: ray[train,data]==2.60.0 -> 2.60.0)."""
    for requirement in pyproject()["project"]["dependencies"]:
        match = re.fullmatch(rf"{re.escape(name)}(\[[\w,\s-]*\])?\s*==\s*([\w.]+)", requirement.strip())
        if match:
            return match.group(2)
    raise AssertionError(f"pyproject.toml pins no {name}==X")


def yaml_files() -> list[Path]:
    return sorted(p for p in CLUSTER.rglob("*") if p.suffix in (".yaml", ".yml"))


def documents() -> list[tuple[str, dict]]:
    """(where, document) for every non-empty YAML document under cluster/."""
    found = []
    for path in yaml_files():
        for index, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is not None:
                found.append((f"{path.relative_to(REPO)}#{index}", doc))
    return found


def is_kube(doc) -> bool:
    return isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc


def embedded(where: str, doc: dict) -> list[tuple[str, dict]]:
    """Kubernetes objects kept as YAML text in a ConfigMap (the CronJob's RayJob template)."""
    if doc.get("kind") != "ConfigMap":
        return []
    found = []
    for key, text in (doc.get("data") or {}).items():
        if key.endswith((".yaml", ".yml")):
            for inner in yaml.safe_load_all(text):
                if is_kube(inner):
                    found.append((f"{where}/data/{key}", inner))
    return found


def kube_objects() -> list[tuple[str, dict]]:
    """Every Kubernetes object under cluster/, those embedded in ConfigMaps included."""
    found = []
    for where, doc in documents():
        if is_kube(doc):
            found.append((where, doc))
            found.extend(embedded(where, doc))
    return found


def of_kind(kind: str) -> list[tuple[str, dict]]:
    return [(where, doc) for where, doc in kube_objects() if doc["kind"] == kind]


def launcher_configs() -> list[tuple[str, dict]]:
    return [(w, d) for w, d in documents() if isinstance(d, dict) and "provider" in d and "available_node_types" in d]


def runtime_env() -> dict:
    return yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())


def rayjob_specs() -> list[tuple[str, dict]]:
    """Every RayJob spec: RayJobs (standalone or templates in ConfigMaps) and RayCronJob job templates."""
    specs = [(where, doc["spec"]) for where, doc in of_kind("RayJob")]
    specs += [(f"{where}/jobTemplate", doc["spec"]["jobTemplate"]) for where, doc in of_kind("RayCronJob")]
    return specs


def ray_cluster_specs() -> list[tuple[str, dict]]:
    specs = [(where, doc["spec"]) for where, doc in of_kind("RayCluster")]
    specs += [(f"{where}/rayClusterSpec", spec["rayClusterSpec"]) for where, spec in rayjob_specs()]
    return specs


def pod_templates(spec: dict) -> list[tuple[str, dict]]:
    """(group, pod spec) of a RayCluster spec's head and worker groups."""
    pods = [("head", spec["headGroupSpec"]["template"]["spec"])]
    pods += [(group["groupName"], group["template"]["spec"]) for group in spec.get("workerGroupSpecs", [])]
    return pods


def gpus(container: dict) -> int:
    return int((container.get("resources", {}).get("limits") or {}).get(GPU, 0))


def entrypoints() -> list[tuple[str, str]]:
    return [(where, spec.get("entrypoint", "")) for where, spec in rayjob_specs()]


def dockerfile(name: str) -> str:
    return (DOCKER / name).read_text()


# ----------------------------------------------------------------------------------------------------------
# Every file parses and is of a known kind
# ----------------------------------------------------------------------------------------------------------

API_VERSIONS = {"RayCluster": RAY_API, "RayJob": RAY_API, "RayCronJob": RAY_API, "CronJob": "batch/v1",
                "ServiceAccount": "v1", "ConfigMap": "v1", "Role": "rbac.authorization.k8s.io/v1",
                "RoleBinding": "rbac.authorization.k8s.io/v1"}


def test_every_yaml_document_under_cluster_is_a_known_kind():
    assert yaml_files(), "no YAML under cluster/"
    for where, doc in documents():
        if is_kube(doc):
            kind = doc["kind"]
            assert kind in API_VERSIONS, f"{where}: kind {kind} is not one these tests check"
            assert doc["apiVersion"] == API_VERSIONS[kind], f"{where}: {kind} is {API_VERSIONS[kind]}"
            assert doc.get("metadata", {}).get("name"), f"{where}: no metadata.name"
        else:
            assert (where, doc) in launcher_configs() or where.startswith("cluster/runtime_env.yaml"), \
                f"{where}: neither a Kubernetes object, a cluster launcher config nor the runtime env"


def test_the_required_manifests_exist():
    kinds = {doc["kind"] for _, doc in kube_objects()}
    assert {"RayCluster", "RayJob", "RayCronJob", "CronJob"} <= kinds
    assert launcher_configs(), "no Ray cluster launcher config"
    assert (CLUSTER / "runtime_env.yaml").is_file()


# ----------------------------------------------------------------------------------------------------------
# KubeRay: RayCluster, RayJob, RayCronJob
# ----------------------------------------------------------------------------------------------------------


def test_ray_clusters_have_a_head_and_an_autoscaling_gpu_worker_group():
    specs = ray_cluster_specs()
    assert len(specs) >= 4  # RayCluster, RayJob, RayCronJob, the CronJob's RayJob template
    for where, spec in specs:
        assert spec["rayVersion"] == pinned("ray"), f"{where}: rayVersion is not pyproject.toml's ray pin"
        head = spec["headGroupSpec"]
        assert head["template"]["spec"]["containers"], f"{where}: head has no container"
        assert all(gpus(c) == 0 for c in head["template"]["spec"]["containers"]), f"{where}: the head is CPU-only"
        groups = spec["workerGroupSpecs"]
        assert len({g["groupName"] for g in groups}) == len(groups), f"{where}: duplicate worker group names"
        gpu_groups = [g for g in groups if any(gpus(c) > 0 for c in g["template"]["spec"]["containers"])]
        assert gpu_groups, f"{where}: no worker group asks for {GPU}"
        for group in groups:
            low, count, high = group["minReplicas"], group["replicas"], group["maxReplicas"]
            assert 0 <= low <= count <= high and high >= 1, f"{where}/{group['groupName']}: replicas out of order"
        assert any(g["minReplicas"] < g["maxReplicas"] for g in gpu_groups), f"{where}: GPU group does not scale"
        assert spec.get("enableInTreeAutoscaling") is True, f"{where}: groups scale, but no autoscaler"


def test_ray_start_params_are_strings():
    # KubeRay's CRD types rayStartParams as map[string]string: `num-cpus: 0` would be rejected by the API server.
    for where, spec in ray_cluster_specs():
        groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
        for group in groups:
            for key, value in (group.get("rayStartParams") or {}).items():
                assert isinstance(value, str), f"{where}: rayStartParams.{key} must be a string, got {value!r}"


def test_gpu_containers_request_what_they_limit_and_get_shared_memory():
    for where, spec in ray_cluster_specs():
        for group, pod in pod_templates(spec):
            for container in pod["containers"]:
                if gpus(container):
                    requests = container["resources"].get("requests") or {}
                    # Kubernetes refuses an extended resource whose request differs from its limit.
                    assert requests.get(GPU, container["resources"]["limits"][GPU]) == \
                        container["resources"]["limits"][GPU], f"{where}/{group}: {GPU} request != limit"
                    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
                    assert "/dev/shm" in mounts, f"{where}/{group}: NCCL needs more than 64 MiB of /dev/shm"
                    volume = next(v for v in pod["volumes"] if v["name"] == mounts["/dev/shm"])
                    assert volume["emptyDir"]["medium"] == "Memory"


EFA = "vpc.amazonaws.com/efa"


def test_gpu_pods_get_the_efa_interconnect_and_may_lock_memory_for_it():
    for where, spec in ray_cluster_specs():
        for group, pod in pod_templates(spec):
            for container in pod["containers"]:
                if gpus(container):
                    resources = container["resources"]
                    assert int(resources["limits"].get(EFA, 0)) >= 1, f"{where}/{group}: no EFA devices for NCCL"
                    assert resources["requests"][EFA] == resources["limits"][EFA], f"{where}/{group}: EFA request"
                    capabilities = container.get("securityContext", {}).get("capabilities", {}).get("add", [])
                    assert "IPC_LOCK" in capabilities, f"{where}/{group}: EFA's RDMA needs IPC_LOCK"


def test_the_launchers_gpu_nodes_have_efa_in_one_placement_group_and_its_devices_in_the_container():
    (where, config), = launcher_configs()
    for name, node_type in config["available_node_types"].items():
        if not is_gpu_instance(node_type):
            continue
        node = node_type["node_config"]
        interfaces = node.get("NetworkInterfaces", [])
        assert interfaces and all(i["InterfaceType"] == "efa" for i in interfaces), f"{where}/{name}: no EFA"
        assert len({i["NetworkCardIndex"] for i in interfaces}) == len(interfaces), f"{where}/{name}: cards"
        assert node["Placement"]["GroupName"], f"{where}/{name}: EFA needs a cluster placement group"
        options = node_type["docker"]["worker_run_options"]
        devices = [o for o in options if o.startswith("--device=/dev/infiniband/uverbs")]
        assert len(devices) == len(interfaces), f"{where}/{name}: one uverbs device per EFA interface"
        assert "--ulimit memlock=-1:-1" in options


def test_the_gpu_image_has_nccls_efa_plugin_and_environment():
    text = dockerfile("Dockerfile.gpu")
    assert "efa_installer.sh" in text and "--skip-kmod" in text  # libfabric + aws-ofi-nccl, not a kernel module
    for variable in ("FI_PROVIDER=efa", "TORCH_NCCL_ASYNC_ERROR_HANDLING=1", "NCCL_DEBUG=WARN"):
        assert variable in text, f"Dockerfile.gpu does not set {variable}"


def test_ray_pods_run_as_the_storage_identity_with_the_same_optional_secret_environment():
    environments = []
    for where, spec in ray_cluster_specs():
        for group, pod in pod_templates(spec):
            assert pod.get("serviceAccountName") == NODE_SERVICE_ACCOUNT, f"{where}/{group}: not run as electra-ray"
            for container in pod["containers"]:
                env = container.get("env") or []
                from_secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in env
                                if "secretKeyRef" in (e.get("valueFrom") or {})}
                assert all(ref.get("optional") is True for ref in from_secrets.values()), \
                    f"{where}/{group}: a missing Secret key must not keep pods from starting (IRSA needs none)"
                environments.append((f"{where}/{group}", from_secrets))
    first = environments[0][1]
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "MLFLOW_TRACKING_URI"} <= set(first)
    for where, from_secrets in environments:
        assert from_secrets == first, f"{where}: environment differs from the other Ray pods"
    accounts = {doc["metadata"]["name"]: doc for _, doc in of_kind("ServiceAccount")}
    assert NODE_SERVICE_ACCOUNT in accounts, "the ServiceAccount the Ray pods run as is not defined"
    role = accounts[NODE_SERVICE_ACCOUNT]["metadata"].get("annotations", {}).get("eks.amazonaws.com/role-arn", "")
    assert role.startswith("arn:aws:iam::"), "electra-ray should carry an IRSA role annotation"


def test_rayjobs_run_the_pipeline_retry_and_delete_their_cluster():
    specs = rayjob_specs()
    assert len(specs) >= 3
    for where, spec in specs:
        assert ENTRYPOINT.match(spec["entrypoint"]), f"{where}: entrypoint {spec['entrypoint']!r}"
        assert spec["shutdownAfterJobFinishes"] is True, f"{where}: the cluster must go when the run ends"
        assert isinstance(spec["backoffLimit"], int) and spec["backoffLimit"] >= 1, \
            f"{where}: backoffLimit (retries on a new cluster; the pipeline resumes from its checkpoint)"
        assert "rayClusterSpec" in spec and "clusterSelector" not in spec, f"{where}: must bring its own cluster"


def test_raycronjob_uses_kuberays_field_names_and_a_deadline_shorter_than_its_period():
    (where, doc), = of_kind("RayCronJob")
    spec = doc["spec"]
    # KubeRay's RayCronJobSpec (v1.6): schedule, jobTemplate (a RayJob spec), suspend; timeZone from v1.7. It has
    # no concurrencyPolicy: the API server would reject or drop one, and a reader would wrongly rely on it.
    assert set(spec) <= {"schedule", "jobTemplate", "suspend", "timeZone"}, f"{where}: unknown fields {set(spec)}"
    assert "entrypoint" in spec["jobTemplate"], f"{where}: jobTemplate is the RayJob spec itself, no spec: wrapper"
    period = min_interval_seconds(spec["schedule"])
    deadline = spec["jobTemplate"].get("activeDeadlineSeconds")
    assert deadline and deadline < period, \
        f"{where}: without concurrencyPolicy, a run must end ({deadline}s) before the next starts ({period}s)"


# ----------------------------------------------------------------------------------------------------------
# The plain CronJob fallback
# ----------------------------------------------------------------------------------------------------------


def cronjob_parts() -> dict:
    """The CronJob with the objects of its file (ServiceAccount, Role, RoleBinding, ConfigMap), by kind."""
    (where, cronjob), = of_kind("CronJob")
    path = where.split("#")[0]
    same_file = [doc for w, doc in kube_objects() if w.split("#")[0] == path and "/data/" not in w]
    by_kind: dict[str, list[dict]] = {}
    for doc in same_file:
        by_kind.setdefault(doc["kind"], []).append(doc)
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return {"where": where, "cronjob": cronjob, "objects": by_kind, "pod": pod, "container": container}


def test_cronjob_forbids_overlap_and_runs_the_submit_script_from_its_configmap():
    parts = cronjob_parts()
    cronjob, pod, container = parts["cronjob"], parts["pod"], parts["container"]
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    min_interval_seconds(cronjob["spec"]["schedule"])  # a valid schedule
    assert pod["restartPolicy"] == "Never"  # podFailurePolicy requires it
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    configmaps = {v["name"]: v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v}
    (volume, configmap_name), = configmaps.items()
    (configmap,) = [c for c in parts["objects"]["ConfigMap"] if c["metadata"]["name"] == configmap_name]
    script = container["command"][-1]
    assert script.startswith(mounts[volume] + "/") and Path(script).name in configmap["data"]
    template = yaml.safe_load(configmap["data"]["rayjob.yaml"])
    assert template["kind"] == "RayJob" and template["apiVersion"] == RAY_API


def test_cronjob_submitter_may_create_and_read_rayjobs_and_nothing_more():
    parts = cronjob_parts()
    account = parts["pod"]["serviceAccountName"]
    assert account != NODE_SERVICE_ACCOUNT, "the submitter needs no storage access"
    assert account in {a["metadata"]["name"] for a in parts["objects"]["ServiceAccount"]}
    (binding,) = [b for b in parts["objects"]["RoleBinding"]
                  if any(s["kind"] == "ServiceAccount" and s["name"] == account for s in b["subjects"])]
    (role,) = [r for r in parts["objects"]["Role"] if r["metadata"]["name"] == binding["roleRef"]["name"]]
    assert binding["roleRef"]["kind"] == "Role"
    granted = {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    assert granted == {("ray.io", "rayjobs", "create"), ("ray.io", "rayjobs", "get")}


def test_cronjob_deadlines_let_forbid_cover_the_whole_run():
    parts = cronjob_parts()
    cronjob, container = parts["cronjob"], parts["container"]
    (configmap,) = parts["objects"]["ConfigMap"]
    rayjob = yaml.safe_load(configmap["data"]["rayjob.yaml"])
    job = cronjob["spec"]["jobTemplate"]["spec"]
    period = min_interval_seconds(cronjob["spec"]["schedule"])
    # The waiting pod outlives the RayJob (so Forbid sees the run), and both end before the next schedule.
    assert rayjob["spec"]["activeDeadlineSeconds"] < job["activeDeadlineSeconds"] < period
    # The exit status the script gives a failed RayJob is the one that fails the Job without a retry.
    fail = [r for r in job["podFailurePolicy"]["rules"] if r["action"] == "FailJob"]
    assert [r["onExitCodes"]["values"] for r in fail] == [[script_failed_status(configmap)]]
    assert fail[0]["onExitCodes"]["containerName"] == container["name"]


def script_failed_status(configmap: dict) -> int:
    return int(re.search(r"^RAYJOB_FAILED = (\d+)$", configmap["data"]["submit_rayjob.py"], re.M).group(1))


# The submit script, run against a stand-in for the Kubernetes API ------------------------------------------


class FakeKubernetes:
    """Answers the two calls submit_rayjob.py makes: POST a RayJob, GET it; records what it was sent."""

    def __init__(self, post_status: int, statuses: list[dict]):
        self.post_status, self.statuses, self.requests = post_status, list(statuses), []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, code: int, body: dict):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append(("POST", self.path, body, self.headers["Authorization"]))
                self.reply(fake.post_status, body if fake.post_status == 201 else {"reason": "AlreadyExists"})

            def do_GET(self):
                fake.requests.append(("GET", self.path, None, self.headers["Authorization"]))
                status = fake.statuses.pop(0) if len(fake.statuses) > 1 else fake.statuses[0]
                self.reply(200, {"status": status})

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def run_submit_script(tmp_path: Path, fake: FakeKubernetes) -> subprocess.CompletedProcess:
    (configmap,) = cronjob_parts()["objects"]["ConfigMap"]
    (tmp_path / "submit_rayjob.py").write_text(configmap["data"]["submit_rayjob.py"])
    (tmp_path / "rayjob.yaml").write_text(configmap["data"]["rayjob.yaml"])
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("test-token\n")
    (account / "namespace").write_text("ml\n")
    # What the downward API writes for metadata.labels: one key="value" a line.
    (tmp_path / "labels").write_text('batch.kubernetes.io/job-name="electra-retrain-29012345"\n'
                                     'app.kubernetes.io/name="electra-ray"\n')
    env = {"KUBE_API": fake.url, "SERVICE_ACCOUNT_DIR": str(account), "RAYJOB_TEMPLATE": str(tmp_path / "rayjob.yaml"),
           "POD_LABELS": str(tmp_path / "labels"), "POLL_SECONDS": "0.01", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, str(tmp_path / "submit_rayjob.py")], env=env, capture_output=True,
                          text=True, timeout=60)


RUNNING = {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}


def test_submit_script_creates_the_rayjob_named_after_its_job_and_waits_for_success(tmp_path):
    fake = FakeKubernetes(201, [{}, RUNNING, RUNNING, {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}])
    try:
        result = run_submit_script(tmp_path, fake)
    finally:
        fake.close()
    assert result.returncode == 0, result.stderr
    method, path, body, auth = fake.requests[0]
    assert (method, path, auth) == ("POST", "/apis/ray.io/v1/namespaces/ml/rayjobs", "Bearer test-token")
    assert body["kind"] == "RayJob" and body["metadata"]["name"] == "electra-retrain-29012345"
    assert body["metadata"]["namespace"] == "ml" and ENTRYPOINT.match(body["spec"]["entrypoint"])
    gets = [r for r in fake.requests if r[0] == "GET"]
    assert len(gets) == 4 and gets[0][1] == "/apis/ray.io/v1/namespaces/ml/rayjobs/electra-retrain-29012345"


def test_submit_script_reports_a_failed_rayjob_with_the_status_that_fails_the_job(tmp_path):
    (configmap,) = cronjob_parts()["objects"]["ConfigMap"]
    fake = FakeKubernetes(201, [RUNNING, {"jobDeploymentStatus": "Failed", "jobStatus": "FAILED"}])
    try:
        result = run_submit_script(tmp_path, fake)
    finally:
        fake.close()
    assert result.returncode == script_failed_status(configmap) != 0
    assert "Failed" in result.stdout


def test_submit_script_retried_after_creating_waits_for_the_same_rayjob(tmp_path):
    fake = FakeKubernetes(409, [{"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}])
    try:
        result = run_submit_script(tmp_path, fake)
    finally:
        fake.close()
    assert result.returncode == 0, result.stderr
    assert [r[0] for r in fake.requests] == ["POST", "GET"]
    assert fake.requests[1][1].endswith("/rayjobs/electra-retrain-29012345")


# ----------------------------------------------------------------------------------------------------------
# Entrypoints name configs that exist (configs/ is written alongside: a missing one fails here, on purpose)
# ----------------------------------------------------------------------------------------------------------

ENTRYPOINTS = entrypoints()


@pytest.mark.parametrize("where,entrypoint", ENTRYPOINTS, ids=[w for w, _ in ENTRYPOINTS])
def test_entrypoint_names_an_existing_config(where, entrypoint):
    match = ENTRYPOINT.match(entrypoint)
    assert match, f"{where}: {entrypoint!r} is not `cd DIR && electra run --config configs/NAME.yaml`"
    config = Path(match["config"])
    assert config.stem in KNOWN_CONFIGS, f"{where}: {config} is not one of configs/{sorted(KNOWN_CONFIGS)}"
    assert (REPO / config).is_file(), f"{where}: {config} does not exist"
    assert yaml.safe_load((REPO / config).read_text()), f"{config} is empty"


def test_scheduled_retraining_runs_a_gpu_config():
    scheduled = [(w, e) for w, e in ENTRYPOINTS
                 if w.startswith(("cluster/kuberay/raycronjob.yaml", "cluster/kuberay/cronjob.yaml"))]
    assert len(scheduled) == 2
    for where, entrypoint in scheduled:
        assert Path(ENTRYPOINT.match(entrypoint)["config"]).stem in SCHEDULED_CONFIGS, where


def test_entrypoints_run_where_the_image_keeps_the_project():
    workdirs = {re.findall(r"^WORKDIR (\S+)$", dockerfile(name), re.M)[-1]
                for name in ("Dockerfile.gpu", "Dockerfile.cpu")}
    assert len(workdirs) == 1
    for where, entrypoint in ENTRYPOINTS:
        assert ENTRYPOINT.match(entrypoint)["workdir"] in workdirs, f"{where}: cd to another directory"


# ----------------------------------------------------------------------------------------------------------
# Images: one name, docker/IMAGE, everywhere
# ----------------------------------------------------------------------------------------------------------


def containers_of(node, path="") -> list[tuple[str, dict]]:
    """Every container (a mapping with `image`) anywhere inside a Kubernetes object."""
    found = []
    if isinstance(node, dict):
        if isinstance(node.get("image"), str):
            found.append((path, node))
        for key, value in node.items():
            found.extend(containers_of(value, f"{path}/{key}"))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found.extend(containers_of(value, f"{path}[{index}]"))
    return found


def test_image_file_names_the_project_version_and_ray_release():
    text = (DOCKER / "IMAGE").read_text()
    assert text == IMAGE + "\n", "docker/IMAGE holds one line"
    assert re.fullmatch(r"[a-z0-9.-]+(:\d+)?(/[a-z0-9._-]+)+:[\w.-]+", IMAGE), IMAGE
    tag = IMAGE.rsplit(":", 1)[1]
    assert pyproject()["project"]["version"] in tag and f"ray{pinned('ray')}" in tag, \
        f"tag {tag} should carry the project version and Ray release the image holds"


def test_every_kubernetes_image_is_the_project_image():
    seen = []
    for where, doc in kube_objects():
        for path, container in containers_of(doc):
            image = container["image"]
            seen.append(image)
            assert image in (IMAGE, CPU_IMAGE), f"{where}{path}: {image} is not {IMAGE}[-cpu]"
            if gpus(container):
                assert image == IMAGE, f"{where}{path}: a GPU container needs the GPU image"
    assert seen.count(IMAGE) >= 4 and seen.count(CPU_IMAGE) >= 8, "fewer images found than the manifests hold"


def test_launcher_images_are_the_project_image():
    for where, config in launcher_configs():
        docker = config["docker"]
        assert docker["image"] == IMAGE and docker.get("worker_image", IMAGE) == IMAGE
        assert docker.get("head_image", IMAGE) in (IMAGE, CPU_IMAGE)
        for name, node_type in config["available_node_types"].items():
            image = (node_type.get("docker") or {}).get("worker_image", docker.get("worker_image", docker["image"]))
            assert image in (IMAGE, CPU_IMAGE), f"{where}/{name}: {image}"
            if is_gpu_instance(node_type):
                assert image == IMAGE, f"{where}/{name}: GPU nodes need the GPU image"


def base_image(name: str) -> str:
    return re.search(r"^ARG BASE_IMAGE=(\S+)$", dockerfile(name), re.M).group(1)


def test_dockerfiles_build_on_the_pinned_ray_release():
    ray = pinned("ray")
    assert base_image("Dockerfile.gpu") == f"rayproject/ray:{ray}-py311-gpu"
    assert base_image("Dockerfile.cpu") == f"rayproject/ray:{ray}-py311-cpu"
    assert re.search(r">=\s*3\.11", pyproject()["project"]["requires-python"])
    for name in ("Dockerfile.gpu", "Dockerfile.cpu"):
        assert re.search(r"^FROM \$\{BASE_IMAGE\}$", dockerfile(name), re.M), name


def test_torch_version_comes_only_from_pyproject():
    # The Dockerfiles and install.sh read torch's pin from pyproject.toml; a second copy would drift.
    for name in ("Dockerfile.gpu", "Dockerfile.cpu", "install.sh"):
        assert not re.search(r"torch\s*==\s*\d", dockerfile(name)), f"docker/{name} hard-codes a torch version"


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def dockerignored(path: str) -> bool:
    """Docker's rule, simplified: a pattern matches the path or one of its parent directories."""
    import fnmatch

    parts = Path(path).parts
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for pattern in dockerignore_patterns():
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        hit = any(fnmatch.fnmatch(p, pattern) or (pattern.startswith("**/") and
                  (fnmatch.fnmatch(p, pattern[3:]) or fnmatch.fnmatch(p.split("/")[-1], pattern[3:])))
                  for p in prefixes)
        if hit:
            excluded = not negate
    return excluded


def test_dockerignore_keeps_out_environments_outputs_history_and_caches():
    for path in (".venv/bin/python", ".git/HEAD", "outputs/demo/export/config.json", "pipelines/__pycache__/x.pyc",
                 ".pytest_cache/v/cache", "electra_ray.egg-info/PKG-INFO", "benchmarks/quality.py",
                 "build/lib/pipelines/cli.py", "pipelines/.env"):
        assert dockerignored(path), f".dockerignore lets {path} into the build context"


def test_dockerfiles_copy_only_what_exists_and_is_not_ignored():
    for name in ("Dockerfile.gpu", "Dockerfile.cpu"):
        sources = []
        for line in dockerfile(name).splitlines():
            if line.startswith("COPY "):
                words = [w for w in line.split()[1:] if not w.startswith("--")]
                sources += words[:-1]
        assert {"pyproject.toml", "README.md", "electra_core", "pipelines", "configs"} <= set(sources), name
        for source in sources:
            assert (REPO / source).exists(), f"docker/{name} copies {source}, which does not exist"
            assert not dockerignored(source), f"docker/{name} copies {source}, which .dockerignore leaves out"


def test_shell_scripts_parse():
    for script in sorted(DOCKER.glob("*.sh")):
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script.name}: {result.stderr}"


# ----------------------------------------------------------------------------------------------------------
# The Ray cluster launcher config (AWS)
# ----------------------------------------------------------------------------------------------------------

GPU_INSTANCE = re.compile(r"^(p\d|g\d)\w*\.")


def is_gpu_instance(node_type: dict) -> bool:
    return bool(GPU_INSTANCE.match(node_type["node_config"].get("InstanceType", ""))) or \
        node_type.get("resources", {}).get("GPU", 0) > 0


def test_launcher_config_passes_rays_own_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    (where, config), = launcher_configs()
    validate_config(prepare_config(config))  # what `ray up` runs before it touches the cloud


def test_launcher_has_a_cpu_head_and_an_autoscaling_gpu_worker_type():
    (where, config), = launcher_configs()
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert not is_gpu_instance(head), f"{where}: the head is a CPU node"
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    gpu_types = [t for t in workers.values() if is_gpu_instance(t)]
    assert gpu_types, f"{where}: no GPU worker type"
    for node_type in gpu_types:
        assert 0 <= node_type["min_workers"] < node_type["max_workers"] <= config["max_workers"]
    for name, node_type in workers.items():
        # Workers reach S3 through an instance profile (the head gets Ray's default one), never keys.
        assert "Arn" in node_type["node_config"].get("IamInstanceProfile", {}), f"{where}/{name}: no instance profile"


# ----------------------------------------------------------------------------------------------------------
# runtime_env.yaml: what `ray job submit --working-dir .` uploads
# ----------------------------------------------------------------------------------------------------------


def test_runtime_env_upload_leaves_out_environments_caches_outputs_and_git(tmp_path):
    # Ray's own packager (what `ray job submit --working-dir` runs), on a made-up checkout. .gitignore is not
    # consulted, as with RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1: the excludes must hold on their own.
    from ray._private.runtime_env.packaging import create_package

    env = runtime_env()
    assert "working_dir" not in env, "the working directory comes from --working-dir on the command line"
    assert not (env.get("pip") or env.get("conda") or env.get("uv")), "the image holds every dependency"
    checkout = tmp_path / "checkout"
    left_out = [".venv/lib/python3.11/site-packages/torch/__init__.py", ".git/objects/ab/cdef", ".git/HEAD",
                "outputs/demo/export/discriminator/model.safetensors", "pipelines/__pycache__/cli.cpython-311.pyc",
                "electra_ray.egg-info/PKG-INFO", ".pytest_cache/v/cache/lastfailed",
                "tests/core/__pycache__/test_masking.cpython-311-pytest-9.0.3.pyc"]
    kept = ["pipelines/cli.py", "pipelines/prepare/stage.py", "electra_core/__init__.py", "configs/demo.yaml",
            "cluster/runtime_env.yaml", "tests/core/test_masking.py", "pyproject.toml", "README.md"]
    for name in left_out + kept:
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        (checkout / name).write_text("x")
    package = tmp_path / "package.zip"
    create_package(str(checkout), package, include_gitignore=False, excludes=env["excludes"])
    names = {name.rstrip("/") for name in zipfile.ZipFile(package).namelist()}
    for name in kept:
        assert name in names, f"{name} should be uploaded"
    for name in names:
        parts = Path(name).parts
        assert not {".venv", ".git", "outputs", "__pycache__", ".pytest_cache"} & set(parts), f"{name} uploaded"
        assert not any(p.endswith(".egg-info") for p in parts), f"{name} uploaded"


# ----------------------------------------------------------------------------------------------------------
# No credentials written down
# ----------------------------------------------------------------------------------------------------------

SECRET_WORDS = {"password", "passwd", "secret", "token", "credential", "credentials", "apikey"}
SECRET_PAIRS = {("api", "key"), ("access", "key"), ("private", "key")}
SECRET_TEXT = [
    (re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"), "an AWS access key id"),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"), "a private key"),
    (re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@"), "a password inside a URI"),
    (re.compile(r"(?i)aws_secret_access_key\s*[=:]\s*['\"]?[A-Za-z0-9/+]{40}"), "an AWS secret access key"),
]


def secretish(name: str) -> bool:
    """Whether a key or variable name says it holds a secret: AWS_SECRET_ACCESS_KEY, password, apiKey (not
    TOKENIZERS_PARALLELISM: whole words only, split at _ - . and camelCase)."""
    words = [w.lower() for w in re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+", name)]
    return bool(SECRET_WORDS & set(words)) or any(pair in SECRET_PAIRS for pair in zip(words, words[1:]))


def credential_problems(node, where: str = "") -> list[str]:
    """Literal credentials in a parsed document: secret-looking keys or env names given literal values."""
    problems = []
    if isinstance(node, dict):
        if node.get("kind") == "Secret":
            problems.append(f"{where}: a Secret object (create it out of band, never commit it)")
        if isinstance(node.get("name"), str) and secretish(node["name"]) and "value" in node:
            problems.append(f"{where}: env {node['name']} has a literal value (use valueFrom.secretKeyRef)")
        for key, value in node.items():
            # Keys that name where a secret is kept (secretKeyRef, secretName, ...) are references, not secrets.
            reference = str(key).endswith(("Ref", "Name", "Refs")) or str(key) in ("secretRef",)
            if secretish(str(key)) and not reference and isinstance(value, (str, int)) and str(value):
                problems.append(f"{where}/{key}: a literal value for a secret-looking key")
            problems.extend(credential_problems(value, f"{where}/{key}"))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            problems.extend(credential_problems(value, f"{where}[{index}]"))
    return problems


def text_problems(text: str, where: str) -> list[str]:
    problems = [f"{where}: {what}" for pattern, what in SECRET_TEXT if pattern.search(text)]
    # Dockerfile ENV/ARG values end up in the image's metadata, readable by anyone who can pull it.
    for name in re.findall(r"(?m)^\s*(?:ENV|ARG)\s+([A-Za-z_][A-Za-z0-9_]*)", text):
        if secretish(name):
            problems.append(f"{where}: {name} would bake a secret into the image")
    return problems


def infrastructure_files() -> list[Path]:
    files = [p for p in [*CLUSTER.rglob("*"), *DOCKER.rglob("*")] if p.is_file()]
    return sorted(files) + [REPO / ".dockerignore"]


def test_no_credentials_in_cluster_or_docker_files():
    problems = []
    for path in infrastructure_files():
        problems += text_problems(path.read_text(), str(path.relative_to(REPO)))
    for where, doc in documents():
        problems += credential_problems(doc, where)
        if is_kube(doc):
            for inner_where, inner in embedded(where, doc):
                problems += credential_problems(inner, inner_where)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("bad", [
    {"env": [{"name": "AWS_SECRET_ACCESS_KEY", "value": "abc123"}]},
    {"env": [{"name": "MLFLOW_TRACKING_PASSWORD", "value": "hunter2"}]},
    {"auth": {"password": "hunter2"}},
    {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}, "stringData": {"k": "v"}},
])
def test_the_credential_check_catches_literal_secrets(bad):
    assert credential_problems(bad)


@pytest.mark.parametrize("bad", [
    "aws_access_key_id = AKIAIOSFODNN7EXAMPLE",
    "MLFLOW_TRACKING_URI=https://user:hunter2@mlflow.example.com",
    "-----BEGIN RSA PRIVATE KEY-----",
    "ENV AWS_SECRET_ACCESS_KEY=abc",
])
def test_the_credential_check_catches_secrets_in_text(bad):
    assert text_problems(bad, "x")


def test_the_credential_check_accepts_references():
    ok = {"env": [{"name": "AWS_SECRET_ACCESS_KEY",
                   "valueFrom": {"secretKeyRef": {"name": "electra-ray-secrets", "key": "AWS_SECRET_ACCESS_KEY"}}}],
          "volumes": [{"name": "creds", "secret": {"secretName": "electra-ray-secrets"}}]}
    assert credential_problems(ok) == []


# ----------------------------------------------------------------------------------------------------------
# Cron schedules: the shortest time between two firings
# ----------------------------------------------------------------------------------------------------------


def cron_field(text: str, low: int, high: int) -> set[int]:
    values = set()
    for part in text.split(","):
        base, _, step = part.partition("/")
        if base == "*":
            start, stop = low, high
        elif "-" in base:
            start, stop = (int(x) for x in base.split("-"))
        else:
            start = stop = int(base)
            if step:
                stop = high
        if not low <= start <= stop <= high:
            raise ValueError(f"{part!r} is outside {low}-{high}")
        values.update(range(start, stop + 1, int(step or 1)))
    return values


def min_interval_seconds(schedule: str) -> float:
    """Shortest gap between two firings of a five-field cron schedule, over two years of firings."""
    fields = schedule.split()
    assert len(fields) == 5, f"{schedule!r}: a cron schedule has five fields"
    minutes, hours = cron_field(fields[0], 0, 59), cron_field(fields[1], 0, 23)
    days, months = cron_field(fields[2], 1, 31), cron_field(fields[3], 1, 12)
    weekdays = {d % 7 for d in cron_field(fields[4], 0, 7)}
    day_any, weekday_any = fields[2] == "*", fields[4] == "*"
    firings = []
    start = datetime.datetime(2026, 1, 1)
    for offset in range(2 * 366):
        day = start + datetime.timedelta(days=offset)
        day_match, weekday_match = day.day in days, (day.isoweekday() % 7) in weekdays
        # Cron's rule: when both day fields are restricted, either one matching is enough.
        matches = (day_match or weekday_match) if not (day_any or weekday_any) else (day_match and weekday_match)
        if day.month in months and matches:
            firings += [day.replace(hour=h, minute=m) for h in sorted(hours) for m in sorted(minutes)]
    assert len(firings) >= 2, f"{schedule!r} fires less than twice in two years"
    return min((b - a).total_seconds() for a, b in zip(firings, firings[1:]))


@pytest.mark.parametrize("schedule,seconds", [("0 3 * * 0", 7 * 86400), ("*/15 * * * *", 900),
                                               ("0 0 1 * *", 28 * 86400), ("30 2 * * 1-5", 86400)])
def test_min_interval_seconds(schedule, seconds):
    assert min_interval_seconds(schedule) == seconds
