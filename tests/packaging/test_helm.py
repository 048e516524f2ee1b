"""The Helm charts in packaging/helm/: `helm lint`, `helm template` with the default values and with values
exercising external endpoints, an existing Secret, the ServiceMonitor and the NetworkPolicies; every
rendered object is checked against the official Kubernetes JSON schemas (``kubernetes-validate``, strict:
unknown fields are errors), the ServiceMonitor (a CRD those schemas lack) against a minimal schema of its
own. Behaviour: the Deployment's FEDGE_* variables, resolved the way the kubelet would (Secret keys
included), build a valid ControllerSettings with the values given; the probes hit the controller's real
health routes; the training-job Role is exactly packaging/k8s/rbac.yaml's."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import typer
import yaml

from controller import cli as controller_cli
from controller.api.health import router as health_router
from controller.config import ControllerSettings
from edge_agent.config import AgentSettings

ROOT = Path(__file__).resolve().parents[2]
HELM = ROOT / ".venv" / "bin" / "helm"
CONTROLLER_CHART = ROOT / "packaging" / "helm" / "fedge"
AGENT_CHART = ROOT / "packaging" / "helm" / "fedge-agent"
K8S_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
NAMESPACE = "fedge"

EXTERNAL_VALUES: dict[str, Any] = {
    "image": {"repository": "registry.example.org/fedge/controller", "tag": "1.2.3"},
    "publicUrl": "https://fedge.example.org",
    "logFormat": "json",
    "tls": {"existingSecret": "fedge-tls"},
    "forwardedAllowIps": "10.0.0.0/8",
    "existingSecret": "fedge-credentials",
    "storage": {
        "backend": "s3",
        "s3": {
            "endpoint": "minio.storage.svc:9000",
            "secure": False,
            "region": "eu-west-1",
            "bucketPrefix": "prod-",
        },
    },
    "chain": {"backend": "jsonrpc", "rpcUrl": "http://geth.chain.svc:8545", "chainId": "1337"},
    "mqtt": {
        "backend": "mosquitto",
        "host": "mosquitto.fleet.svc",
        "port": 8883,
        "url": "mqtts://mqtt.example.org:8883",
    },
    "jobs": {
        "runner": "kubernetes",
        "namespace": "fedge-jobs",
        "image": "registry.example.org/fedge/train:1",
        "pvc": "fedge-jobs",
    },
    "oidc": {"issuer": "https://idp.example.org", "audience": "fedge", "defaultRole": "developer"},
    "metrics": {
        "auth": True,
        "serviceMonitor": {
            "enabled": True,
            "labels": {"release": "prometheus"},
            "tlsConfig": {"serverName": "fedge.fedge.svc"},
        },
    },
    "networkPolicy": {
        "enabled": True,
        "ingressFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress"}}}],
    },
    "persistence": {"existingClaim": "fedge-data"},
    "extraEnv": [{"name": "FEDGE_MAX_UPLOAD_BYTES", "value": "4294967296"}],
}
# what the operator's existing Secret holds
EXISTING_SECRET = {
    "database-url": "postgresql+psycopg://fedge:pw@pg.db.svc:5432/fedge",
    "s3-access-key": "fedge-access",
    "s3-secret-key": "fedge-secret-key-value",
    "chain-private-key": "0x" + "11" * 32,
    "metrics-token": "fedge-metrics-scrape",
}

# the ServiceMonitor fields the chart uses (monitoring.coreos.com/v1), strict like the Kubernetes schemas
SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string"}, "labels": {"type": "object"}},
        },
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "required": ["matchLabels"],
                    "properties": {
                        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}
                    },
                },
                "namespaceSelector": {
                    "type": "object",
                    "properties": {"matchNames": {"type": "array", "items": {"type": "string"}}},
                    "additionalProperties": False,
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["port", "path"],
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "scheme": {"enum": ["http", "https"]},
                            "tlsConfig": {"type": "object"},
                            "authorization": {
                                "type": "object",
                                "required": ["type", "credentials"],
                                "additionalProperties": False,
                                "properties": {
                                    "type": {"const": "Bearer"},
                                    "credentials": {
                                        "type": "object",
                                        "required": ["name", "key"],
                                        "additionalProperties": False,
                                        "properties": {"name": {"type": "string"}, "key": {"type": "string"}},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=60, check=False)


def render(chart: Path, tmp_path: Path, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    args = ["template", "rel", str(chart), "--namespace", NAMESPACE]
    if values is not None:
        path = tmp_path / f"{chart.name}-values.yaml"
        path.write_text(yaml.safe_dump(values))
        args += ["--values", str(path)]
    out = helm(*args)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    validate_all(docs)
    return docs


def refused(chart: Path, tmp_path: Path, values: dict[str, Any]) -> str:
    """What `helm template` says when it refuses these values (it must refuse)."""
    path = tmp_path / f"{chart.name}-refused.yaml"
    path.write_text(yaml.safe_dump(values))
    out = helm("template", "rel", str(chart), "--values", str(path))
    assert out.returncode != 0, f"rendered: {out.stdout[:500]}"
    return out.stderr


def validate_all(docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":
            jsonschema.validate(doc, SERVICE_MONITOR_SCHEMA)
            continue
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"{kind}: {len(found)} rendered"
    return found[0]


def resolve_env(
    container: dict[str, Any], secrets: dict[str, dict[str, str]], pod_name: str = "rel-fedge-0"
) -> dict[str, str]:
    """The container's environment as the kubelet would build it: optional missing Secret keys unset,
    ``metadata.name`` from the pod's name, ``$(NAME)`` in a value expanded from the variables before it."""
    env: dict[str, str] = {}
    for item in container["env"]:
        if "value" in item:
            value = item["value"]
            for name, earlier in env.items():
                value = value.replace(f"$({name})", earlier)
            env[item["name"]] = value
            continue
        if "fieldRef" in item["valueFrom"]:
            assert item["valueFrom"]["fieldRef"] == {"fieldPath": "metadata.name"}
            env[item["name"]] = pod_name
            continue
        ref = item["valueFrom"]["secretKeyRef"]
        data = secrets.get(ref["name"])
        if data is None or ref["key"] not in data:
            assert ref.get("optional") is True, f"{item['name']}: {ref} is missing and not optional"
            continue
        env[item["name"]] = data[ref["key"]]
    return env


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> ControllerSettings:
    known = {f"FEDGE_{name.upper()}" for name in ControllerSettings.model_fields}
    assert env.pop("HOME") == "/tmp"  # the one variable besides the settings (read-only root filesystem)
    unknown = sorted(set(env) - known)
    assert not unknown, f"variables the controller does not read: {unknown}"
    for name in [n for n in os.environ if n.startswith("FEDGE_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return ControllerSettings(_env_file=None)


def check_serve_args(args: list[str]) -> dict[str, str]:
    """Every argument is an option of `fedge-controller serve` (as --name=value)."""
    command = typer.main.get_command(controller_cli.app)
    serve = command.commands["serve"]  # type: ignore[attr-defined]
    options = {opt for param in serve.params for opt in param.opts}
    parsed = dict(arg.split("=", 1) for arg in args)
    assert set(parsed) <= options, sorted(set(parsed) - options)
    return parsed


def health_paths() -> set[str]:
    return {route.path for route in health_router.routes}  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------------------- lint
def test_helm_lint_both_charts(tmp_path: Path) -> None:
    values = tmp_path / "external.yaml"
    values.write_text(yaml.safe_dump(EXTERNAL_VALUES))
    for args in (
        [str(CONTROLLER_CHART)],
        [str(CONTROLLER_CHART), "--values", str(values)],
        [str(AGENT_CHART)],
        [str(AGENT_CHART), "--set", "gpu.enabled=true"],
    ):
        out = helm("lint", "--strict", *args)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "0 chart(s) failed" in out.stdout


# ----------------------------------------------------------------------------------- controller chart
def test_controller_defaults_render_embedded_single_replica(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render(CONTROLLER_CHART, tmp_path)
    assert sorted(d["kind"] for d in docs) == [
        "Deployment",
        "PersistentVolumeClaim",
        "Service",
        "ServiceAccount",
    ]
    deploy = one(docs, "Deployment")
    spec = deploy["spec"]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
    pod = spec["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False  # no Kubernetes API use with the local runner
    (container,) = pod["containers"]
    assert container["image"] == "localhost/fedge-controller:dev"
    assert container["command"] == ["fedge-controller", "serve"]
    assert check_serve_args(container["args"]) == {"--log-level": "info"}
    assert "scheme" not in container["readinessProbe"]["httpGet"]

    # probes: the controller's real liveness and readiness routes, on the named API port
    paths = health_paths()
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert {"/healthz", "/readyz"} <= paths
    assert container["startupProbe"]["httpGet"]["path"] in paths

    settings = settings_from(resolve_env(container, {}), monkeypatch)
    assert settings.data_dir == Path("/var/lib/fedge")
    assert settings.host == "0.0.0.0" and settings.port == 8400
    assert settings.database_url is None and settings.storage_backend == "local"
    assert settings.chain_backend == "evm" and settings.broker_backend == "embedded"
    assert settings.job_runner == "local"

    # the data dir is on the chart's PVC; every container port is served
    pvc = one(docs, "PersistentVolumeClaim")
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(settings.data_dir)]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": settings.port, "mqtt": settings.broker_port, "fl-fleet": settings.fl_fleet_port}
    service = one(docs, "Service")
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports)
    assert service["spec"]["selector"] == spec["template"]["metadata"]["labels"]


def test_controller_external_endpoints_existing_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render(CONTROLLER_CHART, tmp_path, EXTERNAL_VALUES)
    assert not by_kind(docs, "Secret")  # existingSecret: the chart renders none
    assert not by_kind(docs, "PersistentVolumeClaim")  # existingClaim
    deploy = one(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "registry.example.org/fedge/controller:1.2.3"
    assert check_serve_args(container["args"]) == {
        "--log-level": "info",
        "--log-format": "json",
        "--tls-cert": "/etc/fedge/tls/tls.crt",
        "--tls-key": "/etc/fedge/tls/tls.key",
        "--forwarded-allow-ips": "10.0.0.0/8",
    }
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["scheme"] == "HTTPS"
    (tls_mount,) = [m for m in container["volumeMounts"] if m["name"] == "tls"]
    assert tls_mount["mountPath"] == "/etc/fedge/tls" and tls_mount["readOnly"] is True
    (tls_volume,) = [v for v in pod["volumes"] if v["name"] == "tls"]
    assert tls_volume["secret"]["secretName"] == "fedge-tls"
    assert pod["automountServiceAccountToken"] is True  # the Kubernetes job runner calls the API
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "valueFrom" in e}
    assert refs == {"fedge-credentials"}
    assert not any("value" in e and e["value"] in EXISTING_SECRET.values() for e in container["env"])

    settings = settings_from(resolve_env(container, {"fedge-credentials": EXISTING_SECRET}), monkeypatch)
    assert settings.public_url == "https://fedge.example.org"
    assert settings.resolved_database_url == EXISTING_SECRET["database-url"]
    assert settings.storage_backend == "s3" and settings.s3_endpoint == "minio.storage.svc:9000"
    assert (
        settings.s3_secure is False
        and settings.s3_region == "eu-west-1"
        and settings.bucket_prefix == "prod-"
    )
    assert settings.s3_access_key == "fedge-access"
    assert settings.s3_secret_key is not None
    assert settings.s3_secret_key.get_secret_value() == EXISTING_SECRET["s3-secret-key"]
    assert settings.chain_backend == "jsonrpc" and settings.chain_rpc_url == "http://geth.chain.svc:8545"
    assert settings.chain_id == 1337
    assert settings.chain_private_key is not None
    assert settings.chain_private_key.get_secret_value() == EXISTING_SECRET["chain-private-key"]
    assert settings.admin_token is None  # key absent from the existing Secret: optional, left unset
    assert (settings.broker_backend, settings.broker_host, settings.broker_port) == (
        "mosquitto",
        "mosquitto.fleet.svc",
        8883,
    )
    assert settings.broker_url == "mqtts://mqtt.example.org:8883"
    assert settings.job_runner == "kubernetes" and settings.k8s_namespace == "fedge-jobs"
    assert settings.k8s_image == "registry.example.org/fedge/train:1" and settings.k8s_job_pvc == "fedge-jobs"
    assert settings.oidc_issuer == "https://idp.example.org" and settings.oidc_default_role == "developer"
    assert settings.max_upload_bytes == 4294967296
    (volume,) = [v for v in pod["volumes"] if v["name"] == "data"]
    assert volume["persistentVolumeClaim"]["claimName"] == "fedge-data"
    # the job dirs: the runner's claim, mounted where PvcJobDir expects them (<data_dir>/jobs)
    (jobs_mount,) = [m for m in container["volumeMounts"] if m["name"] == "jobs"]
    assert Path(jobs_mount["mountPath"]) == settings.data_dir / "jobs"
    (jobs_volume,) = [v for v in pod["volumes"] if v["name"] == "jobs"]
    assert jobs_volume["persistentVolumeClaim"]["claimName"] == settings.k8s_job_pvc

    # an external broker: no MQTT port on the pod or the Service
    service = one(docs, "Service")
    assert {p["name"] for p in service["spec"]["ports"]} == {"http", "fl-fleet"}

    # RBAC: exactly packaging/k8s/rbac.yaml's rules, in the jobs namespace, bound to the pod's account
    reference = {d["kind"]: d for d in yaml.safe_load_all((ROOT / "packaging/k8s/rbac.yaml").read_text())}
    role, binding = one(docs, "Role"), one(docs, "RoleBinding")
    assert role["rules"] == reference["Role"]["rules"]
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "fedge-jobs"
    account = one(docs, "ServiceAccount")
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": NAMESPACE}
    ]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }

    # ServiceMonitor: selects the Service and scrapes /metrics on its API port
    monitor = one(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["scheme"] == "https" and endpoint["tlsConfig"] == {"serverName": "fedge.fedge.svc"}
    assert endpoint["authorization"] == {
        "type": "Bearer",
        "credentials": {"name": "fedge-credentials", "key": "metrics-token"},
    }
    assert settings.metrics_token is not None
    assert settings.metrics_token.get_secret_value() == EXISTING_SECRET["metrics-token"]
    assert endpoint["path"] == "/metrics" and endpoint["port"] in {
        p["name"] for p in service["spec"]["ports"]
    }

    # NetworkPolicies: the controller admits its served ports from the given peers only; training pods
    # (the runner's label) get nothing in and nothing out
    policies = {p["metadata"]["name"]: p for p in by_kind(docs, "NetworkPolicy")}
    assert len(policies) == 2
    ctl = next(
        p
        for p in policies.values()
        if p["spec"]["podSelector"]["matchLabels"].get("app.kubernetes.io/component") == "controller"
    )
    assert ctl["spec"]["podSelector"]["matchLabels"] == deploy["spec"]["selector"]["matchLabels"]
    (rule,) = ctl["spec"]["ingress"]
    assert (
        {p["port"] for p in rule["ports"]} == {p["name"] for p in container["ports"]} == {"http", "fl-fleet"}
    )
    assert rule["from"] == EXTERNAL_VALUES["networkPolicy"]["ingressFrom"]
    training = next(p for p in policies.values() if p is not ctl)
    reference_np = yaml.safe_load((ROOT / "packaging/k8s/networkpolicy.yaml").read_text())
    assert training["spec"] == reference_np["spec"]
    assert training["metadata"]["namespace"] == "fedge-jobs"


def test_controller_generated_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    values: dict[str, Any] = {
        "database": {"url": "postgresql+psycopg://u:p@pg:5432/fedge"},
        "adminToken": "fedge_admin-initial",
        "chain": {"privateKey": "0x" + "22" * 32},
    }
    docs = render(CONTROLLER_CHART, tmp_path, values)
    secret = one(docs, "Secret")
    assert secret["stringData"] == {
        "database-url": values["database"]["url"],
        "admin-token": "fedge_admin-initial",
        "chain-private-key": "0x" + "22" * 32,
    }
    deploy = one(docs, "Deployment")
    template = deploy["spec"]["template"]
    assert len(template["metadata"]["annotations"]["checksum/secret"]) == 64  # restarts the pod on change
    (container,) = template["spec"]["containers"]
    settings = settings_from(
        resolve_env(container, {secret["metadata"]["name"]: secret["stringData"]}), monkeypatch
    )
    assert settings.database_url == values["database"]["url"]
    assert (
        settings.admin_token is not None and settings.admin_token.get_secret_value() == "fedge_admin-initial"
    )
    assert settings.s3_access_key is None


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"chain": {"backend": "jsonrpc"}}, "chain.rpcUrl is required"),
        ({"storage": {"backend": "s3"}}, "storage.s3.endpoint is required"),
        ({"mqtt": {"backend": "mosquitto"}}, "mqtt.host is required"),
        ({"jobs": {"runner": "kubernetes"}}, "jobs.pvc is required"),
    ],
)
def test_controller_refuses_incomplete_backends(tmp_path: Path, values: dict[str, Any], message: str) -> None:
    assert message in refused(CONTROLLER_CHART, tmp_path, values)


REPLICA_VALUES: dict[str, Any] = {
    "replicaCount": 3,
    "replicas": {"sharedClaim": "fedge-keys"},
    "database": {"url": "postgresql+psycopg://u:p@pg.db.svc:5432/fedge"},
    "storage": {
        "backend": "s3",
        "s3": {"endpoint": "minio.storage.svc:9000", "accessKey": "fedge", "secretKey": "fedge-s3-secret"},
    },
    "chain": {"backend": "jsonrpc", "rpcUrl": "http://geth.chain.svc:8545"},
    "mqtt": {"backend": "mosquitto", "host": "mosquitto.fleet.svc", "port": 8883},
    "persistence": {"storageClass": "fast", "size": "5Gi"},
}


def test_controller_replicas_render_a_statefulset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render(CONTROLLER_CHART, tmp_path, REPLICA_VALUES)
    assert not by_kind(docs, "Deployment")
    assert not by_kind(docs, "PersistentVolumeClaim")  # one claim per replica, from the template
    sts = one(docs, "StatefulSet")
    spec = sts["spec"]
    assert spec["replicas"] == 3 and spec["podManagementPolicy"] == "OrderedReady"
    services = {s["metadata"]["name"]: s for s in by_kind(docs, "Service")}
    headless = services[spec["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    labels = spec["template"]["metadata"]["labels"]
    assert headless["spec"]["selector"] == labels == services["rel-fedge"]["spec"]["selector"]

    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    secret = one(docs, "Secret")
    settings_by_pod = {}
    for name in ("rel-fedge-0", "rel-fedge-2"):
        env = resolve_env(container, {secret["metadata"]["name"]: secret["stringData"]}, pod_name=name)
        settings_by_pod[name] = settings_from(env, monkeypatch)
    one_pod = settings_by_pod["rel-fedge-2"]
    # each pod is a replica named after itself (stable across restarts); the rest of the settings agree
    assert {s.replica_id for s in settings_by_pod.values()} == {"rel-fedge-0", "rel-fedge-2"}
    assert one_pod.resolved_database_url == REPLICA_VALUES["database"]["url"]
    assert (one_pod.storage_backend, one_pod.chain_backend, one_pod.broker_backend) == (
        "s3",
        "jsonrpc",
        "mosquitto",
    )
    # an FL job runs on the replica that claimed it: devices are sent to that pod's own DNS name
    assert one_pod.fl_fleet_public_host == "rel-fedge-2.rel-fedge-replicas.fedge.svc.cluster.local"
    assert "fl-fleet" in {p["name"] for p in headless["spec"]["ports"]}

    # per-replica data dir from the claim template; the device CA and the chain key on the shared claim
    (template,) = spec["volumeClaimTemplates"]
    assert template["metadata"]["name"] == "data"
    assert template["spec"]["storageClassName"] == "fast"
    assert template["spec"]["resources"]["requests"]["storage"] == "5Gi"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts[str(one_pod.data_dir)]["name"] == "data"
    for sub in ("fleet", "chain"):
        mount = mounts[str(one_pod.data_dir / sub)]
        assert mount["subPath"] == sub
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        assert volume["persistentVolumeClaim"]["claimName"] == "fedge-keys"
    assert "data" not in {v["name"] for v in pod["volumes"]}


def test_controller_one_replica_stays_a_deployment(tmp_path: Path) -> None:
    docs = render(CONTROLLER_CHART, tmp_path, {**REPLICA_VALUES, "replicaCount": 1})
    assert not by_kind(docs, "StatefulSet")
    (container,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert "FEDGE_REPLICA_ID" not in {e["name"] for e in container["env"]}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"database": {"url": ""}}, "needs a shared PostgreSQL"),
        ({"database": {"url": "sqlite:////var/lib/fedge/fedge.db"}}, "database.url to be PostgreSQL"),
        ({"storage": {"backend": "local"}}, "needs storage.backend=s3"),
        ({"chain": {"backend": "evm"}}, "needs chain.backend=jsonrpc"),
        ({"mqtt": {"backend": "embedded"}}, "needs mqtt.backend=mosquitto"),
        ({"persistence": {"existingClaim": "one-claim"}}, "persistence.existingClaim is one claim"),
        ({"replicas": {"sharedClaim": ""}}, "needs replicas.sharedClaim"),
    ],
)
def test_controller_replicas_refuse_per_process_backends(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    assert message in refused(CONTROLLER_CHART, tmp_path, {**REPLICA_VALUES, **change})


# ----------------------------------------------------------------------------------------- agent chart
def agent_env_known(container: dict[str, Any]) -> dict[str, str]:
    known = {f"FEDGE_AGENT_{name.upper()}" for name in AgentSettings.model_fields}
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert set(env) <= known, sorted(set(env) - known)
    return env


def test_agent_defaults_daemonset(tmp_path: Path) -> None:
    docs = render(AGENT_CHART, tmp_path)
    assert sorted(d["kind"] for d in docs) == ["DaemonSet", "Secret"]
    ds = one(docs, "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    (agent,) = pod["containers"]
    assert agent["image"] == "localhost/fedge-agent:cpu"
    assert agent["args"] == ["run", "--state-dir", "/var/lib/fedge-agent"]
    assert agent["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "api"}
    assert "limits" not in agent["resources"] or "nvidia.com/gpu" not in agent["resources"]["limits"]
    env = agent_env_known(agent)
    assert env["FEDGE_AGENT_STATE_DIR"] == "/var/lib/fedge-agent" and env["FEDGE_AGENT_API_PORT"] == "8470"
    (state,) = [v for v in pod["volumes"] if v["name"] == "state"]
    assert state["hostPath"] == {"path": "/var/lib/fedge-agent", "type": "DirectoryOrCreate"}
    chown, enroll = pod["initContainers"]
    assert chown["command"] == ["chown", "10001:10001", "/var/lib/fedge-agent"]
    assert pod["securityContext"]["runAsUser"] == 10001
    script = enroll["command"][-1]
    assert "identity.json" in script and "fedge-agent enroll" in script
    assert {e["name"]: e.get("value") for e in enroll["env"]}["FEDGE_CONTROLLER_URL"] == (
        "http://fedge.fedge.svc.cluster.local:8400"
    )
    (secret_volume,) = [v for v in pod["volumes"] if v["name"] == "enroll"]
    assert secret_volume["secret"]["secretName"] == one(docs, "Secret")["metadata"]["name"]


def test_agent_gpu_nodes_tokens(tmp_path: Path) -> None:
    values: dict[str, Any] = {
        "controllerUrl": "https://fedge.example.org",
        "gpu": {"enabled": True, "count": 2, "runtimeClassName": "nvidia"},
        "gpuImage": {"repository": "registry.example.org/fedge/agent", "tag": "cuda-1"},
        "nodeSelector": {"fedge.io/edge": "true"},
        "tolerations": [{"key": "edge", "operator": "Exists", "effect": "NoSchedule"}],
        "enrollment": {
            "tokens": {"edge-1": "fedge-enroll-aaa", "edge-2": "fedge-enroll-bbb"},
            "labels": {"site": "plant-7"},
        },
        "stateDir": {"hostPath": "/data/fedge-agent", "chown": False},
        "extraEnv": [{"name": "FEDGE_AGENT_POLL_INTERVAL", "value": "5"}],
    }
    docs = render(AGENT_CHART, tmp_path, values)
    secret = one(docs, "Secret")
    assert secret["stringData"] == {"edge-1": "fedge-enroll-aaa", "edge-2": "fedge-enroll-bbb"}
    pod = one(docs, "DaemonSet")["spec"]["template"]["spec"]
    (agent,) = pod["containers"]
    assert agent["image"] == "registry.example.org/fedge/agent:cuda-1"
    assert agent["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert agent["resources"]["limits"]["memory"] == "1Gi"  # the default limits are kept
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["nodeSelector"] == values["nodeSelector"] and pod["tolerations"] == values["tolerations"]
    assert agent_env_known(agent)["FEDGE_AGENT_POLL_INTERVAL"] == "5"
    (enroll,) = pod["initContainers"]  # no chown container
    assert enroll["image"] == agent["image"]
    assert "--label 'site=plant-7'" in enroll["command"][-1]
    (state,) = [v for v in pod["volumes"] if v["name"] == "state"]
    assert state["hostPath"]["path"] == "/data/fedge-agent"


def test_agent_existing_enrollment_secret(tmp_path: Path) -> None:
    docs = render(AGENT_CHART, tmp_path, {"enrollment": {"existingSecret": "edge-tokens"}})
    assert not by_kind(docs, "Secret")
    pod = one(docs, "DaemonSet")["spec"]["template"]["spec"]
    (secret_volume,) = [v for v in pod["volumes"] if v["name"] == "enroll"]
    assert secret_volume["secret"]["secretName"] == "edge-tokens"
