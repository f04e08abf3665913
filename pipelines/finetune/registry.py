"""MLflow Model Registry: each registered fine-tune becomes a new version; `champion` moves only on improvement.

Embedded default: a SQLite tracking store and a local artifact root under outputs/mlflow (no server). A
remote server through MLFLOW_TRACKING_URI or --tracking-uri. No secrets in params or tags: values of keys
that look like credentials are redacted.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from pipelines.environment import scoped_environment
from pipelines.secrets import keep_credentials_out_of_mlflow_output, redact

CHAMPION, CHALLENGER = "champion", "challenger"
SCRATCH_BASELINE = "random weights of the same shape"
EXPERIMENT = "electra-finetune"


def tracking_uri(configured: str | None) -> str:
    if configured or os.environ.get("MLFLOW_TRACKING_URI"):
        return configured or os.environ["MLFLOW_TRACKING_URI"]
    root = Path("outputs/mlflow").resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def use_experiment(uri: str, experiment: str) -> None:
    """Points MLflow at `uri` and `experiment`, creating it with its artifacts beside an embedded (SQLite) store's
    database, not in ./mlruns of whatever directory the command ran in."""
    import mlflow

    keep_credentials_out_of_mlflow_output(uri)
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        artifacts = None
        if uri.startswith("sqlite:///"):
            artifacts = (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
        mlflow.create_experiment(experiment, artifact_location=artifacts)
    mlflow.set_experiment(experiment)


def code_version() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        from importlib.metadata import version

        return version("electra-ray")


def gate_metric(metric: str) -> str:
    """The MLflow metric that promotion compares: the median of the fine-tune's trials."""
    return f"{metric}_median"


def logged_metrics(metrics: dict) -> dict[str, float]:
    """The kept trial's eval figures, the median the gate uses, and the baseline's median and the gain."""
    logged = {k: float(v) for k, v in metrics["eval"].items() if isinstance(v, (int, float))}
    logged[gate_metric(metrics["metric"])] = float(metrics["value"])
    if "pretraining_gain" in metrics:
        logged["pretraining_gain"] = float(metrics["pretraining_gain"]["mean"])
        logged[f"baseline_{gate_metric(metrics['metric'])}"] = float(metrics["baseline"]["summary"]["median"])
    return logged


def register(name: str, configured_uri: str | None, output: str, config: dict, metrics: dict, lineage: dict,
             log=print) -> dict:
    """Logs the run, registers a version of `name`, and moves `champion` to it only if it beats the current one."""
    # mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI; a later run in the same process (scheduled
    # retraining in one driver, tests) must not inherit this run's registry.
    with scoped_environment("MLFLOW_TRACKING_URI"):
        return _register(name, configured_uri, output, config, metrics, lineage, log)


def _register(name: str, configured_uri: str | None, output: str, config: dict, metrics: dict, lineage: dict,
              log) -> dict:
    import mlflow
    from mlflow import MlflowClient

    uri = tracking_uri(configured_uri)
    use_experiment(uri, EXPERIMENT)
    metric, score = metrics["metric"], float(metrics["value"])
    package = Path(__file__).resolve().parents[2] / "electra_core"
    with mlflow.start_run(run_name=f"{name}-finetune") as run:
        mlflow.log_params({k: str(v)[:500] for k, v in redact(config).items()})
        mlflow.log_metrics(logged_metrics(metrics))
        mlflow.set_tags({f"electra.{k}": str(v) for k, v in redact({**lineage, "code_version": code_version()}).items()})
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(Path(__file__).with_name("pyfunc_model.py")),
            artifacts={"classifier": output},
            code_paths=[str(package)],
            registered_model_name=name,
        )
    client = MlflowClient(tracking_uri=uri)
    version = str(info.registered_model_version)
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
        champion_metrics = client.get_run(champion.run_id).data.metrics
        # Versions registered before fine-tunes had trials logged the one trial's score only.
        champion_score = float(champion_metrics.get(gate_metric(metric), champion_metrics[metric]))
    except Exception:  # no champion yet (MLflow raises its own exception types for a missing alias)
        champion, champion_score = None, None
    if champion is None or score > champion_score:
        client.set_registered_model_alias(name, CHAMPION, version)
        decision = f"promoted: version {version} is the new {CHAMPION}"
    else:
        client.set_registered_model_alias(name, CHALLENGER, version)
        decision = f"kept version {champion.version} as {CHAMPION}; version {version} is the {CHALLENGER}"
    trials = metrics["summary"]["n"]
    scores = (f"{metric} {score:.4f}" + (f" (median of {trials} trials)" if trials > 1 else "")
              + (f" vs {CHAMPION} {champion_score:.4f}" if champion is not None else ""))
    client.set_model_version_tag(name, version, "electra.promotion", decision)
    client.set_model_version_tag(name, version, "electra.scores", scores)
    if "pretraining_gain" in metrics:
        client.set_model_version_tag(name, version, "electra.pretraining_gain",
                                     f"{metrics['pretraining_gain']['mean']:+.4f} {metric} over {SCRATCH_BASELINE} "
                                     f"(median {score:.4f} vs {metrics['baseline']['summary']['median']:.4f})")
    log(f"electra finetune: registered {name} version {version} ({scores}); {decision}")
    return {"name": name, "version": version, "decision": decision, "score": score,
            "champion_score": champion_score, "tracking_uri": redact(uri), "run_id": run.info.run_id}
