"""`corral export kubernetes`: `kubernetes-validate --strict`, then the project's own consistency checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from corral.cli import parse_run_arguments
from harness import CORRAL

MIB = 1024 * 1024
APP = """
WEIGHTS = bytearray(64 * 1024 * 1024)
for i in range(0, len(WEIGHTS), 4096):
    WEIGHTS[i] = 1

async def app(scope, receive, send):
    pass
"""


def corral(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CORRAL, *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False)


def kubernetes_versions() -> list[str]:
    """Every Kubernetes version kubernetes-validate has schemas for, oldest first."""
    import kubernetes_validate as package

    schemas = Path(package.__file__).parent / "kubernetes-json-schema"
    found = {path.name.split("-")[0].removeprefix("v") for path in schemas.iterdir() if path.name.startswith("v")}
    return sorted(found, key=lambda version: tuple(int(part) for part in version.split(".")))


# The oldest Kubernetes docs/deployment.md supports: the manifests must be valid from it to the newest.
OLDEST_SUPPORTED = "1.25.0"


def kubernetes_validate(*paths: Path, version: str | None = None) -> list[str]:
    """Strict schema validation (for `version`, default the newest known); returns the warnings (kinds it has
    no schema for)."""
    binary = Path(sys.executable).parent / "kubernetes-validate"
    at = ["--kubernetes-version", version] if version else []
    result = subprocess.run(
        [str(binary), "--strict", *at, *map(str, paths)], capture_output=True, text=True, timeout=300
    )
    output = (result.stdout + result.stderr).splitlines()
    assert result.returncode == 0, "\n".join(output)
    assert not [line for line in output if line.startswith("ERROR")], "\n".join(output)
    return [line for line in output if line.startswith("WARN")]


def prestop_seconds(container: dict[str, Any]) -> int:
    """The preStop hook's sleep: an exec of `sleep N` (the `sleep` action needs Kubernetes 1.30)."""
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2, command
    return int(command[1])


def by_kind(documents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kinds = [document["kind"] for document in documents]
    assert len(kinds) == len(set(kinds)), kinds
    return {document["kind"]: document for document in documents}


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def consistency_problems(app: list[dict[str, Any]], job: dict[str, Any] | None) -> list[str]:
    """What a schema cannot see: the resources must point at each other correctly."""
    problems: list[str] = []
    resources = by_kind(app)
    deployment, service = resources["Deployment"], resources["Service"]
    pod = deployment["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    container = pod["spec"]["containers"][0]
    port_names = {port["name"] for port in container["ports"]}
    namespaces = {document["metadata"].get("namespace") for document in [*app, *([job] if job else [])]}
    if len(namespaces) != 1:
        problems.append(f"resources in several namespaces: {namespaces}")

    if not matches(deployment["spec"]["selector"]["matchLabels"], pod_labels):
        problems.append("the Deployment's selector does not match its pod labels")
    if not matches(service["spec"]["selector"], pod_labels):
        problems.append("the Service's selector does not match the pods")
    if job is not None and matches(
        service["spec"]["selector"], job["spec"]["template"]["metadata"]["labels"]
    ):
        problems.append("the Service would send traffic to the pre-start Job's pod")
    for port in service["spec"]["ports"]:
        if port["targetPort"] not in port_names:
            problems.append(f"Service targetPort {port['targetPort']} is not a container port")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        if container[probe]["httpGet"]["port"] not in port_names:
            problems.append(f"{probe} probes a port the container does not have")

    if "HorizontalPodAutoscaler" in resources:
        target = resources["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
        if (target["kind"], target["name"], target["apiVersion"]) != (
            "Deployment",
            deployment["metadata"]["name"],
            deployment["apiVersion"],
        ):
            problems.append("the autoscaler does not target the Deployment")
        if "replicas" in deployment["spec"]:
            problems.append("replicas in the Deployment would fight the autoscaler on every apply")
        if "requests" not in container["resources"] or "cpu" not in container["resources"]["requests"]:
            problems.append("CPU utilisation needs a CPU request")
    if not matches(resources["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"], pod_labels):
        problems.append("the disruption budget does not select the pods")

    service_ports = {port["name"]: port["port"] for port in service["spec"]["ports"]}
    if "Ingress" in resources:
        for rule in resources["Ingress"]["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                if (
                    backend["name"] != service["metadata"]["name"]
                    or backend["port"]["name"] not in service_ports
                ):
                    problems.append("the Ingress backend is not the Service's port")
    if "HTTPRoute" in resources:
        for rule in resources["HTTPRoute"]["spec"]["rules"]:
            for ref in rule["backendRefs"]:
                if ref["name"] != service["metadata"]["name"] or ref["port"] not in service_ports.values():
                    problems.append("the HTTPRoute backend is not the Service's port")

    sleep = prestop_seconds(container)
    graceful = parse_run_arguments(container["args"][1:]).settings.graceful_timeout
    if pod["spec"]["terminationGracePeriodSeconds"] < sleep + graceful:
        problems.append("terminationGracePeriodSeconds does not cover the preStop sleep and the drain")
    resources_ = container["resources"]
    if resources_["requests"]["memory"] != resources_["limits"].get("memory"):
        problems.append("the memory request differs from the limit")
    return problems


def restricted(pod_spec: dict[str, Any]) -> None:
    """The restricted Pod Security Standard, as the pod and its container state it."""
    assert pod_spec["securityContext"]["runAsNonRoot"] is True
    assert pod_spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = pod_spec["containers"][0]
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    volumes = {volume["name"]: volume for volume in pod_spec["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    assert volumes[mounts["/tmp"]] == {"name": "tmp", "emptyDir": {}}


def metrics_problems(out: Path) -> list[str]:
    """The admin token's Secret, its volume, `--admin-token-file` and the PodMonitor must point at each other
    (the PodMonitor's kind has no schema in kubernetes-validate)."""
    problems: list[str] = []
    deployment = by_kind([doc for doc in yaml.safe_load_all((out / "app.yaml").read_text()) if doc])["Deployment"]
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    secret = yaml.safe_load((out / "admin-token.yaml").read_text())
    if (out / "admin-token.yaml").stat().st_mode & 0o777 != 0o600:
        problems.append("admin-token.yaml is readable by others")
    if len(secret["stringData"]["token"]) < 32:
        problems.append("the token is short")
    volumes = {volume["name"]: volume for volume in pod["spec"]["volumes"]}
    mount = next(mount for mount in container["volumeMounts"] if mount["name"] == "admin-token")
    if volumes["admin-token"]["secret"]["secretName"] != secret["metadata"]["name"]:
        problems.append("the token's volume is not its Secret")
    served = parse_run_arguments(container["args"][1:]).settings
    if served.admin_token_file != f"{mount['mountPath']}/token":
        problems.append("--admin-token-file is not the mounted Secret's key")
    monitor = yaml.safe_load((out / "podmonitor.yaml").read_text())
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    if endpoint["port"] not in [port["name"] for port in container["ports"]] or endpoint["path"] != "/metrics":
        problems.append("the PodMonitor does not scrape the admin port's /metrics")
    if not matches(monitor["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"]):
        problems.append("the PodMonitor does not select the pods")
    if endpoint["authorization"]["credentials"] != {"name": secret["metadata"]["name"], "key": "token"}:
        problems.append("the PodMonitor does not send the Secret's token")
    return problems


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "main.py").write_text(APP)
    return tmp_path


def export(project: Path, *args: str) -> tuple[list[dict[str, Any]], dict[str, Any] | None, str]:
    out = project / "out"
    result = corral("export", "kubernetes", *args, "--out", str(out), cwd=project)
    assert result.returncode == 0, result.stderr
    files = sorted(out.iterdir())
    warnings = kubernetes_validate(*files)
    assert [line for line in warnings if "HTTPRoute" not in line and "PodMonitor" not in line] == [], warnings
    app = [doc for doc in yaml.safe_load_all((out / "app.yaml").read_text()) if doc]
    job_file = out / "prestart-job.yaml"
    job = yaml.safe_load(job_file.read_text()) if job_file.exists() else None
    assert consistency_problems(app, job) == []
    assert metrics_problems(out) == []
    return app, job, (out / "app.yaml").read_text() + (job_file.read_text() if job else "")


def test_full_export(project: Path) -> None:
    lock = "postgresql://shop:s3cret@db.internal:5432/shop"
    args = [
        "main:app",
        "--name",
        "shop",
        "--graceful-timeout",
        "25",
        "--drain-delay",
        "8",
        "--https",
        "shop.example",
    ]
    args += ["--prestart", "alembic upgrade head", "--prestart-lock", lock, "--max-requests", "1000"]
    args += [
        "--image",
        "registry.example/shop:1.4.2",
        "--namespace",
        "prod",
        "--cluster-issuer",
        "letsencrypt",
    ]
    args += ["--ingress-class", "nginx", "--cpu-target", "60"]
    app, job, text = export(project, *args)
    assert "s3cret" not in text
    resources = by_kind(app)
    deployment = resources["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    restricted(pod)
    assert deployment["metadata"]["namespace"] == "prod"
    assert container["image"] == "registry.example/shop:1.4.2"

    served = parse_run_arguments(container["args"][1:]).settings
    assert container["args"][0] == "run"
    assert served.workers == 1, "one worker per pod by default"
    assert served.max_requests == 1000 and served.graceful_timeout == 25
    assert served.https == [], "the Ingress holds TLS"
    # The pods carry the steps, the release and the lock: one that starts before the Job is done waits for
    # the lock, then finds the release recorded (docs/prestart.md).
    assert served.prestart == ["alembic upgrade head"] and served.release == "1.4.2"
    assert served.prestart_lock == "postgresql://shop@db.internal:5432/shop"
    assert container["envFrom"] == [{"secretRef": {"name": "shop-env"}}], "PGPASSWORD"
    assert served.drain_delay == 0 and prestop_seconds(container) == 8
    assert pod["terminationGracePeriodSeconds"] >= 8 + 25
    assert served.admin_bind == "0.0.0.0:9000"
    assert {"name": "admin", "containerPort": 9000} in container["ports"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # The manager answers /livez during the pre-start steps (waiting for the Job's lock) and the import: the
    # kubelet never kills a pod for a long migration; Corral bounds both itself.
    assert container["startupProbe"]["httpGet"]["path"] == "/livez"

    # The measured footprint: the app writes 64 MiB at import, in the template and in a worker.
    memory = container["resources"]["requests"]["memory"]
    assert memory.endswith("Mi") and int(memory[:-2]) >= 2 * 64
    assert "measured by corral check" in text
    assert container["resources"]["requests"]["cpu"] == "500m"
    assert "cpu" not in container["resources"]["limits"]

    hpa = resources["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["metrics"][0]["resource"]["target"] == {
        "type": "Utilization",
        "averageUtilization": 60,
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)

    ingress = resources["Ingress"]
    assert ingress["metadata"]["annotations"] == {"cert-manager.io/cluster-issuer": "letsencrypt"}
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [{"hosts": ["shop.example"], "secretName": "shop-tls"}]
    assert ingress["spec"]["rules"][0]["host"] == "shop.example"

    assert job is not None
    assert job["metadata"]["name"] == "shop-prestart-1-4-2"
    assert job["spec"]["backoffLimit"] == 0
    restricted(job["spec"]["template"]["spec"])
    job_container = job["spec"]["template"]["spec"]["containers"][0]
    assert job_container["args"][0] == "prestart"
    steps = parse_run_arguments(job_container["args"][1:]).settings
    assert steps.prestart == ["alembic upgrade head"]
    assert steps.release == "1.4.2", "the release is the image tag"
    assert steps.prestart_lock == "postgresql://shop@db.internal:5432/shop"
    assert job_container["envFrom"] == [{"secretRef": {"name": "shop-env"}}]
    assert steps.https == [] and steps.max_requests is None, "the Job gets only the pre-start options"
    secret = yaml.safe_load((project / "out/secret.yaml").read_text())
    assert secret["kind"] == "Secret" and secret["stringData"] == {"PGPASSWORD": ""}, "keys, no values"
    assert (project / "out/secret.yaml").stat().st_mode & 0o777 == 0o600
    assert text.index("kubectl apply -n prod -f prestart-job.yaml") < text.index(
        "kubectl wait -n prod --for=condition=complete"
    )


def test_gateway_route_fixed_replicas_and_memory(project: Path) -> None:
    args = ["main:app", "-w", "3", "--gateway", "infra/public", "--https", "api.example", "--replicas", "4"]
    app, job, text = export(project, *args, "--memory", "1.5GiB", "--cpu", "2", "--bind", "0.0.0.0:80")
    assert job is None
    resources = by_kind(app)
    assert "HorizontalPodAutoscaler" not in resources and "Ingress" not in resources
    deployment = resources["Deployment"]
    assert deployment["spec"]["replicas"] == 4
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert parse_run_arguments(container["args"][1:]).settings.workers == 3
    assert container["resources"] == {
        "requests": {"cpu": "2", "memory": "1536Mi"},
        "limits": {"memory": "1536Mi"},
    }
    assert "from --memory" in text
    route = resources["HTTPRoute"]
    assert route["spec"]["parentRefs"] == [{"name": "public", "namespace": "infra"}]
    assert route["spec"]["hostnames"] == ["api.example"]
    pod_security = deployment["spec"]["template"]["spec"]["securityContext"]
    assert pod_security["sysctls"] == [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]
    assert {"name": "http", "containerPort": 80} in container["ports"]


def test_fallback_memory_when_the_app_does_not_import(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text("import not_installed_here_xyz\n")
    out = tmp_path / "out"
    result = corral("export", "kubernetes", "main:app", "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "memory not measured" in result.stderr and "not_installed_here_xyz" in result.stderr
    text = (out / "app.yaml").read_text()
    assert "a fallback guess" in text
    kubernetes_validate(out / "app.yaml")
    deployment = by_kind([doc for doc in yaml.safe_load_all(text) if doc])["Deployment"]
    memory = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
    assert int(memory[:-2]) % 16 == 0


def test_consistency_checks_catch_mistakes(project: Path) -> None:
    """The checks above are only worth something if they fail on a broken manifest."""
    app, job, _ = export(project, "main:app", "--prestart", "true", "--release", "r1")
    assert job is not None

    def broken(change: Any) -> list[str]:
        copy = [doc for doc in yaml.safe_load_all(yaml.safe_dump_all(app)) if doc]
        change(by_kind(copy))
        return consistency_problems(copy, job)

    def relabel_pods(kinds: dict[str, Any]) -> None:
        kinds["Deployment"]["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] = "x"

    def rename_admin_port(kinds: dict[str, Any]) -> None:
        kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]["ports"][-1]["name"] = "health"

    def retarget_autoscaler(kinds: dict[str, Any]) -> None:
        kinds["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] = "other"

    def shorten_grace(kinds: dict[str, Any]) -> None:
        kinds["Deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 1

    assert any("selector" in problem for problem in broken(relabel_pods))
    assert any("probes a port" in problem for problem in broken(rename_admin_port))
    assert broken(retarget_autoscaler) == ["the autoscaler does not target the Deployment"]
    assert any("terminationGracePeriodSeconds" in problem for problem in broken(shorten_grace))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cluster-issuer", "le"], "--cluster-issuer needs the host names"),
        (["--gateway", "gw", "--ingress-class", "nginx"], "--gateway routes through a Gateway"),
        (["--prestart", "true"], "the pre-start Job is named per release"),
        (["--min-replicas", "5", "--max-replicas", "2"], "--min-replicas must be at least 1"),
        (["--bind", "unix:/tmp/x.sock"], "a Service needs a TCP --bind"),
        (["--memory", "lots"], "invalid --memory"),
    ],
)
def test_bad_input_is_one_line(project: Path, args: list[str], message: str) -> None:
    result = corral("export", "kubernetes", "main:app", "--memory", "256Mi", *args, cwd=project)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"corral: {message}"), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr


def test_valid_for_every_supported_kubernetes_version(project: Path) -> None:
    """From the oldest supported version to the newest kubernetes-validate knows (preStop `sleep` needs 1.30:
    the export uses an exec of `sleep`)."""
    versions = kubernetes_versions()
    assert OLDEST_SUPPORTED in versions and versions.index(OLDEST_SUPPORTED) == 0, versions
    out = project / "out"
    args = ["main:app", "--name", "shop", "--drain-delay", "3", "--prestart", "true", "--release", "r1"]
    args += ["--prestart-lock", "postgresql://shop@db.internal/shop", "--memory", "256MiB", "--https", "shop.example"]
    args += ["--ingress-class", "nginx", "-b", "0.0.0.0:80"]
    result = corral("export", "kubernetes", *args, "--out", str(out), cwd=project)
    assert result.returncode == 0, result.stderr
    files = sorted(path for path in out.iterdir() if path.name != "podmonitor.yaml")
    assert [path.name for path in files] == ["admin-token.yaml", "app.yaml", "prestart-job.yaml"]
    for version in versions:
        assert kubernetes_validate(*files, version=version) == [], version
    assert metrics_problems(out) == []


def test_memory_measured_with_the_env_files_values(tmp_path: Path) -> None:
    """An app whose settings validate at import (pydantic Settings) needs its env file's values to import:
    measured with them, never printing them."""
    secret = "s3cret-only-in-the-env-file"
    (tmp_path / "main.py").write_text(
        "import os\n"
        "if os.environ.get('SECRET_KEY') != " + repr(secret) + ":\n"
        "    raise RuntimeError('1 validation error for Settings: SECRET_KEY field required')\n" + APP
    )
    (tmp_path / ".env.production").write_text(f"SECRET_KEY={secret}\n")
    out = tmp_path / "out"
    result = corral("export", "kubernetes", "main:app", "--env-file", ".env.production", "--out", str(out),
                    cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "memory not measured" not in result.stderr, result.stderr
    assert secret not in result.stdout + result.stderr
    text = (out / "app.yaml").read_text()
    assert "measured by corral check" in text and secret not in text
    deployment = by_kind([doc for doc in yaml.safe_load_all(text) if doc])["Deployment"]
    memory = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
    assert int(memory[:-2]) * MIB > 64 * MIB, "the app's 64 MiB are in the measured figure"
