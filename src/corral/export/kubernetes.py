"""`corral export kubernetes`: manifests for a cluster, as Python dicts dumped with PyYAML.

Two files, applied in order: `prestart-job.yaml` (the pre-start steps of this release, as a Job
that takes the PostgreSQL lock; only with steps) and `app.yaml` (Deployment, Service,
HorizontalPodAutoscaler, PodDisruptionBudget, Ingress or HTTPRoute). In a cluster TLS ends at the
Ingress or Gateway, so the HTTPS options become its hosts and leave `corral run`; the drain delay
becomes the preStop sleep (an exec of `sleep`), which the kubelet runs before SIGTERM.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Any

from corral.config import Settings, run_arguments
from corral.errors import ConfigError
from corral.export.common import (
    CONTAINER_STATE_DIR,
    CONTAINER_UID,
    PRESTART_FIELDS,
    TLS_FIELDS,
    ContainerPlan,
    ExportFile,
    only,
    refuse_loopback,
    reset,
    resource_name,
    warn_loopback,
)
from corral.export.kubernetes_files import (
    KubernetesOptions,
    dump,
    env_from,
    environment_files,
    metadata,
    metrics_files,
)
from corral.export.metrics import K8S_TOKEN_DIR, TOKEN_MANIFEST, kubernetes_mount
from corral.manager.policy import parse_range

MIB = 1024 * 1024
DEFAULT_PRESTOP = 5  # seconds for endpoint removal to reach every proxy before SIGTERM
STOP_MARGIN = 10
JOB_MARGIN = 300  # seconds a Job may take beyond its steps' own timeouts (pulling, connecting)
CPU_PER_WORKER = 500  # millicores requested per worker


def pod_workers(settings: Settings) -> int:
    """One worker per pod unless a count was given: a pod scales out, and `auto` has no CPU limit to read.

    With --autoscale the pod is sized (memory, CPU request) for the most workers it may run."""
    if settings.autoscale:
        return parse_range(settings.autoscale, "MIN:MAX")[1]
    return 1 if settings.workers == "auto" else int(settings.workers)


def pod_start_workers(settings: Settings) -> int | str:
    """`--workers` in the pod's command: with --autoscale, the starting size as given (auto: the minimum)."""
    return settings.workers if settings.autoscale else pod_workers(settings)


def hpa_target(settings: Settings, options: KubernetesOptions) -> tuple[int, str | None]:
    """The HPA's CPU target, kept inside the in-pod band when the pod autoscales itself, and why it moved.

    The CPU request covers the pod's maximum of workers, so the pods' average use against it rises with the
    in-pod pool's size and busyness: a target inside the band lets the cluster add pods while each pod still has
    room to absorb a spike, and before any pod is CPU-bound at the band's top."""
    if not settings.autoscale:
        return options.cpu_target, None
    low, high = parse_range(settings.target_utilisation, "LOW:HIGH")
    target = min(high, max(low, options.cpu_target))
    if target == options.cpu_target:
        return target, None
    return target, f"the autoscaler's CPU target is {target} %, inside the in-pod band {low}-{high} % (--cpu-target " \
                   f"{options.cpu_target} is outside it)"


def release_id(settings: Settings, image: str) -> str:
    """--release, else the image tag or digest (a new image is a new release)."""
    if settings.release:
        return settings.release
    name, _, digest = image.partition("@")
    if digest:
        return digest.split(":")[-1][:12]
    tail = name.rsplit("/", 1)[-1]
    if ":" in tail and tail.rsplit(":", 1)[1] != "latest":
        return tail.rsplit(":", 1)[1]
    raise ConfigError(
        "the pre-start Job is named per release: give --release ID, or an --image tagged other than latest"
    )


def render(plan: ContainerPlan, options: KubernetesOptions) -> list[ExportFile]:
    validate(plan, options)
    refuse_loopback(plan.settings, plan.environment, "kubernetes")
    warn_loopback(plan.environment, "kubernetes")
    settings = plan.settings
    name = resource_name(settings.name)
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/component": "web"}
    prestop = settings.drain_delay or DEFAULT_PRESTOP
    serving = reset(_pod_settings(plan, options), *TLS_FIELDS, "drain_delay")
    serving = serving.model_copy(update={"workers": pod_start_workers(settings)})
    ports = _container_ports(plan)
    environment = environment_files(plan, options, name)
    if plan.token_mounted:
        serving = serving.model_copy(update={"admin_token_file": f"{K8S_TOKEN_DIR}/token"})
    deployment = _deployment(plan, options, name, labels, serving, ports, prestop)
    if plan.token_mounted:
        pod = deployment["spec"]["template"]["spec"]
        kubernetes_mount(pod["containers"][0], pod, f"{name}-admin-token")
    documents = [deployment, _service(options, name, labels, ports)]
    target, moved = hpa_target(settings, options)
    if options.replicas is None:
        documents.append(_autoscaler(dataclasses.replace(options, cpu_target=target), name))
    documents.append(_disruption_budget(options, name, labels))
    route = _http_route(settings, options, name) if options.gateway else _ingress(settings, options, name)
    documents.append(route)

    workers = pod_workers(settings)
    namespace = f" -n {options.namespace}" if options.namespace else ""
    header = [
        "# Written by corral export kubernetes.",
        *(
            [f"# Apply {' and '.join(file.name for file in environment)} first (see the headers)."]
            if environment
            else []
        ),
        *([f"# Apply {TOKEN_MANIFEST} first: the pods read the admin token from it."] if plan.token_mounted else []),
        *(["# Apply prestart-job.yaml first and wait for it (see its header)."] if settings.prestart else []),
        f"#   kubectl apply{namespace} -f app.yaml",
        f"# Memory per pod ({workers} worker{'s' if workers != 1 else ''}): {options.memory // MIB} MiB, "
        f"{options.memory_source}.",
        *(f"# Note: {note}." for note in plan.notes),
        *([f"# Note: {moved}."] if moved and options.replicas is None else []),
    ]
    files = [ExportFile("app.yaml", dump(header, documents)), *metrics_files(plan, options, name, labels)]
    if settings.prestart:
        files.insert(0, _job_file(plan, options, name))
    return [*environment, *files]


def _pod_settings(plan: ContainerPlan, options: KubernetesOptions) -> Settings:
    """What the app's pods run. With a PostgreSQL lock they carry the steps, the release and the lock, as
    docs/prestart.md recommends: a pod that starts before the Job is done waits for the lock, then finds
    the release recorded and skips the steps. Another lock is local to each pod, so the Job alone runs them."""
    settings = plan.settings
    if not settings.prestart or plan.postgres is None:
        return plan.serving()
    return settings.model_copy(update={"release": release_id(settings, options.image)})


def validate(plan: ContainerPlan, options: KubernetesOptions) -> None:
    """Refuse contradictory options with one line (before the app is imported to be measured)."""
    if not plan.ports:
        raise ConfigError("a Service needs a TCP --bind (HOST:PORT) to send traffic to")
    if not 1 <= options.min_replicas <= options.max_replicas:
        raise ConfigError("--min-replicas must be at least 1 and at most --max-replicas")
    if options.replicas is not None and options.replicas < 1:
        raise ConfigError("--replicas must be at least 1")
    if not 1 <= options.cpu_target <= 100:
        raise ConfigError("--cpu-target is a percentage of the CPU request: 1 to 100")
    if options.gateway and (options.ingress_class or options.cluster_issuer):
        raise ConfigError(
            "--gateway routes through a Gateway, whose listeners hold the certificates: "
            "--ingress-class and --cluster-issuer apply to an Ingress"
        )
    if options.cluster_issuer and not (options.hosts or plan.settings.https):
        raise ConfigError("--cluster-issuer needs the host names to certify: give them with --host NAME")


def _container_ports(plan: ContainerPlan) -> list[tuple[str, int]]:
    """(name, port) of the app's TCP ports, `http` first; the health endpoints are `admin`."""
    names = ["http"] + [f"http-{index}" for index in range(2, len(plan.ports) + 1)]
    return list(zip(names, plan.ports, strict=True))


def _pod_spec(
    plan: ContainerPlan, container: dict[str, Any], grace: int, serves: bool = True
) -> dict[str, Any]:
    """The restricted Pod Security Standard: non-root, no privilege escalation, all capabilities
    dropped, RuntimeDefault seccomp, a read-only root file system with /tmp and the state directory
    on emptyDir volumes."""
    security: dict[str, Any] = {
        "runAsNonRoot": True,
        "runAsUser": CONTAINER_UID,
        "runAsGroup": CONTAINER_UID,
        "fsGroup": CONTAINER_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if serves and any(port < 1024 for port in plan.ports):
        # A safe (namespaced) sysctl: lets the non-root app bind its port below 1024.
        security["sysctls"] = [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]
    container["securityContext"] = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    container["volumeMounts"] = [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "state", "mountPath": CONTAINER_STATE_DIR},
    ]
    return {
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": grace,
        "securityContext": security,
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}, {"name": "state", "emptyDir": {}}],
    }


def _resources(options: KubernetesOptions, workers: int) -> dict[str, Any]:
    """A CPU request (what the autoscaler's utilisation is measured against) and no CPU limit,
    which would throttle; memory request equal to its limit, so a pod is never killed for
    memory the node promised it."""
    memory = f"{math.ceil(options.memory / MIB)}Mi"
    cpu = options.cpu or f"{CPU_PER_WORKER * workers}m"
    return {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory}}


def _deployment(
    plan: ContainerPlan,
    options: KubernetesOptions,
    name: str,
    labels: dict[str, str],
    serving: Settings,
    ports: list[tuple[str, int]],
    prestop: float,
) -> dict[str, Any]:
    settings = plan.settings
    grace = math.ceil(prestop + settings.graceful_timeout + STOP_MARGIN)
    container: dict[str, Any] = {
        "name": "app",
        "image": options.image,
        "args": ["run", *run_arguments(serving)],
        **({"envFrom": env_from(plan, name)} if env_from(plan, name) else {}),
        "ports": [{"name": port_name, "containerPort": port} for port_name, port in ports]
        + [{"name": "admin", "containerPort": plan.admin_port}],
        "resources": _resources(options, pod_workers(settings)),
        # Up to a minute for the manager to answer. Its admin listener opens before the pre-start steps (a pod
        # may wait for the Job's migration) and the app's import, which Corral bounds itself (--prestart-timeout,
        # --startup-timeout: then it exits and the pod restarts); traffic waits for /readyz.
        "startupProbe": _probe("/livez", period=2, failures=30),
        "livenessProbe": _probe("/livez", period=10, failures=3),
        "readinessProbe": _probe("/readyz", period=5, failures=2),
        # An exec sleep, not the `sleep` action: that one needs Kubernetes 1.30 (docs/deployment.md: 1.25+).
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(math.ceil(prestop))]}}},
    }
    spec: dict[str, Any] = {}
    if options.replicas is not None:
        spec["replicas"] = options.replicas
    spec |= {
        "selector": {"matchLabels": dict(labels)},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "template": {
            "metadata": {"labels": dict(labels)},
            "spec": _pod_spec(plan, container, grace),
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(options, name, labels),
        "spec": spec,
    }


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    """A probe of the health endpoints, on the container port named `admin`."""
    return {
        "httpGet": {"path": path, "port": "admin"},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def _service(
    options: KubernetesOptions, name: str, labels: dict[str, str], ports: list[tuple[str, int]]
) -> dict[str, Any]:
    service_ports = [
        {"name": port_name, "port": 80 if port_name == "http" else port, "targetPort": port_name}
        for port_name, port in ports
    ]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(options, name, labels),
        "spec": {"type": "ClusterIP", "selector": dict(labels), "ports": service_ports},
    }


def _autoscaler(options: KubernetesOptions, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(options, name),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": options.min_replicas,
            "maxReplicas": options.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": options.cpu_target},
                    },
                }
            ],
        },
    }


def _disruption_budget(options: KubernetesOptions, name: str, labels: dict[str, str]) -> dict[str, Any]:
    """At most one pod down for a voluntary disruption (a node drain); unlike minAvailable this never
    blocks a drain when only one replica runs."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(options, name),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": dict(labels)}},
    }


def _hosts(settings: Settings, options: KubernetesOptions) -> list[str]:
    return list(options.hosts or settings.https)


def _ingress(settings: Settings, options: KubernetesOptions, name: str) -> dict[str, Any]:
    backend = {"service": {"name": name, "port": {"name": "http"}}}
    paths = [{"path": "/", "pathType": "Prefix", "backend": backend}]
    rules: list[dict[str, Any]] = [{"host": host, "http": {"paths": paths}} for host in _hosts(settings, options)]
    ingress = metadata(options, name)
    spec: dict[str, Any] = {}
    if options.ingress_class:
        spec["ingressClassName"] = options.ingress_class
    spec["rules"] = rules or [{"http": {"paths": paths}}]
    if options.cluster_issuer:
        ingress["annotations"] = {"cert-manager.io/cluster-issuer": options.cluster_issuer}
        spec["tls"] = [{"hosts": _hosts(settings, options), "secretName": f"{name}-tls"}]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": ingress, "spec": spec}


def _http_route(settings: Settings, options: KubernetesOptions, name: str) -> dict[str, Any]:
    assert options.gateway is not None
    namespace, _, gateway = options.gateway.rpartition("/")
    parent: dict[str, Any] = {"name": gateway}
    if namespace:
        parent["namespace"] = namespace
    spec: dict[str, Any] = {"parentRefs": [parent]}
    if _hosts(settings, options):
        spec["hostnames"] = _hosts(settings, options)
    spec["rules"] = [
        {
            "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
            "backendRefs": [{"name": name, "port": 80}],
        }
    ]
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": metadata(options, name),
        "spec": spec,
    }


def job_name(name: str, release: str) -> str:
    """NAME-prestart-RELEASE as a DNS label; a long one is cut, with a hash of the release to stay unique."""
    full = f"{name}-prestart-{release}"
    if len(full) <= 63:
        return resource_name(full)
    digest = hashlib.sha256(release.encode()).hexdigest()[:8]
    return resource_name(full[:54]) + f"-{digest}"


def _job_file(plan: ContainerPlan, options: KubernetesOptions, name: str) -> ExportFile:
    settings = plan.settings
    release = release_id(settings, options.image)
    job = job_name(name, release)
    lock = settings.prestart_lock if plan.postgres is not None else f"file:/tmp/{name}-prestart.lock"
    steps = settings.model_copy(update={"release": release, "prestart_lock": lock})
    container: dict[str, Any] = {
        "name": "prestart",
        "image": options.image,
        # Only what `corral prestart` uses: no --bind, --workers or certificate options.
        "args": ["prestart", *run_arguments(only(steps, *PRESTART_FIELDS, "log_level"))],
        **({"envFrom": env_from(plan, name)} if env_from(plan, name) else {}),
        "resources": _resources(options, 1),
    }
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/component": "prestart"}
    pod = _pod_spec(plan, container, grace=30, serves=False)
    pod["restartPolicy"] = "Never"
    deadline = math.ceil(len(settings.prestart) * settings.prestart_timeout + JOB_MARGIN)
    document = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(options, job, labels),
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": deadline,
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }
    namespace = f" -n {options.namespace}" if options.namespace else ""
    header = [
        f"# Written by corral export kubernetes: the pre-start steps of release {release}, once.",
        "# Apply this first and wait for it, then app.yaml:",
        f"#   kubectl apply{namespace} -f prestart-job.yaml",
        f"#   kubectl wait{namespace} --for=condition=complete --timeout={deadline}s job/{job}",
        f"#   kubectl apply{namespace} -f app.yaml",
    ]
    if "envFrom" in container:
        header.insert(1, "# It takes the app's variables from config.yaml and secret.yaml: apply those before.")
    return ExportFile("prestart-job.yaml", dump(header, [document]))

