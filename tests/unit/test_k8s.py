"""deploy/k8s: the manifests kustomize renders are valid against Kubernetes' schemas and the Flink
Kubernetes Operator's CRD schemas (kubernetes-models, deploy/k8s/check), and they agree with the
config files, the image and the code they name. (No cluster or Docker on these machines: nothing
here is applied or built; these checks are what can be known without them.)"""

from __future__ import annotations

import re
from pathlib import Path
import subprocess

import pyflink.version
import pytest
import yaml

from contract.config import load_config
from contract.serving_config import load_serving_config
from contract.paths import CACHE, PROJECT_ROOT

K8S = PROJECT_ROOT / "deploy" / "k8s"
CHECK = K8S / "check" / "validate.mjs"


def kustomize_build() -> str:
    out = subprocess.run([str(CACHE / "go" / "bin" / "kustomize"), "build", str(K8S)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def validate(manifests: str) -> subprocess.CompletedProcess:
    return subprocess.run(["node", str(CHECK)], input=manifests, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def rendered() -> str:
    return kustomize_build()


@pytest.fixture(scope="module")
def objects(rendered) -> dict[tuple[str, str], dict]:
    return {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(rendered) if o}


def test_every_object_is_valid_against_its_schema(rendered, objects):
    out = validate(rendered)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{len(objects)} valid, 0 invalid" in out.stdout
    assert set(objects) == {("ConfigMap", "streamrank-config"), ("FlinkDeployment", "streamrank-recommend"),
                            ("FlinkDeployment", "streamrank-engagement"),
                            ("PersistentVolumeClaim", "streamrank-models"), ("StatefulSet", "redis"),
                            ("Service", "redis"), ("Deployment", "streamrank-lookup"),
                            ("Service", "streamrank-lookup"), ("HorizontalPodAutoscaler", "streamrank-lookup"),
                            ("CronJob", "streamrank-retrain")}


def test_the_retraining_cronjob_runs_retrain_on_the_registry_the_job_reads(objects):
    cron = objects[("CronJob", "streamrank-retrain")]
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container["command"]
    assert args[:4] == ["python3", "-m", "cli", "retrain"] and container["image"].startswith("streamrank-train:")
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    job = load_config(K8S / "job.toml")
    assert args[args.index("--config") + 1] == f"{mounts['config']}/job.toml"
    assert Path(job.scoring.model_dir).parent == Path(args[args.index("--registry") + 1]) == Path(mounts["models"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == "streamrank-models"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"


def test_the_validator_refuses_what_the_schemas_refuse(objects):
    flink = objects[("FlinkDeployment", "streamrank-recommend")]
    bad = {**flink, "spec": {**flink["spec"], "flinkVersion": "v9_9",
                             "job": {**flink["spec"]["job"], "parallelism": "two"}}}
    unknown = {"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g"}}
    out = validate(yaml.safe_dump_all([bad, unknown]))
    assert out.returncode == 1
    assert "data/spec/flinkVersion must be equal to one of the allowed values" in out.stdout
    assert "data/spec/job/parallelism must be integer" in out.stdout
    assert "Gadget g: no schema for example.com/v1 Gadget" in out.stdout


def test_the_config_map_carries_the_config_files_and_they_load(objects):
    data = objects[("ConfigMap", "streamrank-config")]["data"]
    assert data == {"job.toml": (K8S / "job.toml").read_text(), "serving.toml": (K8S / "serving.toml").read_text()}
    job, serving = load_config(K8S / "job.toml"), load_serving_config(K8S / "serving.toml")
    assert job.kafka.rejected_delivery == "exactly-once" and "://" in job.flink.checkpoint_dir
    assert serving.host == "0.0.0.0"  # reachable through the Service, not only on loopback


@pytest.mark.parametrize("job_name", ["recommend", "engagement"])
def test_the_flink_deployment_agrees_with_the_job_config_and_the_image(objects, job_name):
    flink_version = pyflink.version.__version__  # the locked apache-flink
    job = load_config(K8S / "job.toml")
    spec = objects[("FlinkDeployment", f"streamrank-{job_name}")]["spec"]
    major, minor = flink_version.split(".")[:2]
    assert spec["flinkVersion"] == f"v{major}_{minor}"
    assert spec["job"]["jarURI"] == f"local:///opt/flink/opt/flink-python-{flink_version}.jar"
    assert spec["job"]["parallelism"] == job.flink.parallelism
    conf = spec["flinkConfiguration"]
    assert conf["execution.checkpointing.dir"] == job.flink.checkpoint_dir
    assert conf["execution.checkpointing.savepoint-dir"] == job.flink.savepoint_dir
    assert spec["job"]["upgradeMode"] == "savepoint"
    # the entry point and config path the job runs with exist: the script in the image, the file
    # where the pod template mounts the ConfigMap
    args = spec["job"]["args"]
    script = args[args.index("-py") + 1]
    assert script == f"/opt/streamrank/jobs/{job_name}.py" and (PROJECT_ROOT / script.removeprefix("/opt/streamrank/")).is_file()
    pod = spec["podTemplate"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == "streamrank-config"
    assert args[args.index("--config") + 1] == f"{mounts['config']}/job.toml"
    if job_name == "recommend":  # the engagement job reads no model
        assert job.scoring.model_dir.startswith(mounts["models"] + "/")
        assert volumes["models"]["persistentVolumeClaim"]["claimName"] == "streamrank-models"
    # the Python the job and its workers run is the image's venv
    assert args[args.index("-pyexec") + 1] == args[args.index("-pyclientexec") + 1] == "/opt/venv/bin/python3"
    dockerfile = (K8S / "Dockerfile").read_text()
    assert re.search(rf"^FROM flink:{re.escape(flink_version)}-java17$", dockerfile, re.M)
    assert "python3.11 -m venv /opt/venv" in dockerfile and "ENV PYTHONPATH=/opt/streamrank" in dockerfile
    uv = re.search(r"^UV_VERSION=(\S+)$", (PROJECT_ROOT / "devstack" / "setup" / "setup.sh").read_text(), re.M)[1]
    assert f"uv=={uv}" in dockerfile
    # the image installs the roles it runs, at the lock's pins, and not the whole lock (tests, lint, training)
    assert re.search(r"^ARG EXTRAS=job,serving$", dockerfile, re.M)
    assert '-c requirements.lock ".[${EXTRAS}]"' in dockerfile and "-r requirements.lock" not in dockerfile
    assert "--python-version 3.11" in (PROJECT_ROOT / "Makefile").read_text()  # the lock's Python


def test_redis_and_the_lookup_service_agree_with_both_configs(objects):
    job, serving = load_config(K8S / "job.toml"), load_serving_config(K8S / "serving.toml")
    redis_svc = objects[("Service", "redis")]
    assert job.redis.host == serving.redis.host == redis_svc["metadata"]["name"]
    assert job.redis.port == serving.redis.port == redis_svc["spec"]["ports"][0]["port"]
    redis_args = objects[("StatefulSet", "redis")]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert redis_args[redis_args.index("--appendonly") + 1] == "yes"  # Redis must not forget on a restart

    pod = objects[("Deployment", "streamrank-lookup")]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": serving.port, "metrics": serving.metrics_port}
    assert container["readinessProbe"]["grpc"]["port"] == serving.port  # grpc.health.v1, follows Redis
    assert "grpc" not in container["livenessProbe"]  # a Redis outage must not restart the pods
    assert container["command"][-1] == f"{container['volumeMounts'][0]['mountPath']}/serving.toml"
    assert [e["name"] for e in container["env"]] == [serving.auth_token_env]
    assert pod["terminationGracePeriodSeconds"] > serving.grace_s  # SIGTERM drains in-flight calls
    svc = objects[("Service", "streamrank-lookup")]
    assert {p["port"] for p in svc["spec"]["ports"]} == {serving.port, serving.metrics_port}


def test_the_job_and_the_lookup_service_scale_with_their_load(objects):
    flink = objects[("FlinkDeployment", "streamrank-recommend")]["spec"]
    conf = flink["flinkConfiguration"]
    assert conf["job.autoscaler.enabled"] == "true" and conf["jobmanager.scheduler"] == "adaptive"
    low, high = int(conf["job.autoscaler.vertex.min-parallelism"]), int(conf["job.autoscaler.vertex.max-parallelism"])
    assert 1 <= low <= flink["job"]["parallelism"] <= high <= int(conf["pipeline.max-parallelism"])
    assert flink["job"]["upgradeMode"] == "savepoint"  # a rescale keeps the state
    assert 0 < float(conf["job.autoscaler.target.utilization"]) < 1

    hpa = objects[("HorizontalPodAutoscaler", "streamrank-lookup")]["spec"]
    target = hpa["scaleTargetRef"]
    deployment = objects[(target["kind"], target["name"])]["spec"]
    assert "replicas" not in deployment  # the HPA owns the count: an apply must not reset it
    assert 2 <= hpa["minReplicas"] < hpa["maxReplicas"]
    cpu = [m["resource"] for m in hpa["metrics"] if m["type"] == "Resource" and m["resource"]["name"] == "cpu"]
    assert cpu and cpu[0]["target"]["type"] == "Utilization"
    # utilization is measured against the pods' CPU requests: without them the HPA cannot scale
    assert all(c["resources"]["requests"]["cpu"] for c in deployment["template"]["spec"]["containers"])


def test_the_image_build_context_keeps_what_the_image_runs():
    ignored = [line for line in (K8S / "Dockerfile.dockerignore").read_text().splitlines()
               if line and not line.startswith("#")]
    needed = [".cache/jars/flink", ".cache/udf", ".cache/bin", "serving/generated", "jobs", "udfs", "contract",
              "deploy", "models", "serving", "cli", "requirements.lock", "pyproject.toml", "README.md"]
    assert [n for n in needed if any(n == i or n.startswith(i.rstrip("/") + "/") for i in ignored)] == []
