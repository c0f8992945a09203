"""The files of `corral export kubernetes` beside app.yaml: the app's variables (a ConfigMap and a Secret),
the admin token's Secret and a PodMonitor; and what every manifest shares (options, metadata, dumping)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from corral.export.common import ContainerPlan, ExportFile
from corral.export.metrics import TOKEN_MANIFEST, kubernetes_secret, kubernetes_token, pod_monitor


@dataclass(frozen=True)
class KubernetesOptions:
    image: str
    memory: int  # bytes: the memory request and limit of a pod
    memory_source: str  # how `memory` was found, for the header comment
    cpu: str | None = None  # the CPU request; default 500m per worker
    namespace: str | None = None
    replicas: int | None = None  # a fixed count instead of the autoscaler
    min_replicas: int = 2
    max_replicas: int = 10
    cpu_target: int = 70
    ingress_class: str | None = None
    gateway: str | None = None  # NAME or NAMESPACE/NAME of a Gateway API Gateway
    cluster_issuer: str | None = None  # cert-manager ClusterIssuer for the Ingress certificate
    hosts: tuple[str, ...] = ()  # host names of the Ingress or HTTPRoute (default: the --https names)
    secret_values: bool = False  # write the values into the Secret's file (else only its keys)
    out: Path | None = None  # where the files go (an admin token written there before is kept)


def metadata(options: KubernetesOptions, name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if options.namespace:
        metadata["namespace"] = options.namespace
    if labels:
        metadata["labels"] = dict(labels)
    return metadata


def dump(header: list[str], documents: list[dict[str, Any]]) -> str:
    body: str = yaml.safe_dump_all(documents, sort_keys=False, width=1000)
    return "\n".join(header) + "\n" + body


def secret_name(name: str) -> str:
    return f"{name}-env"


def environment_files(plan: ContainerPlan, options: KubernetesOptions, name: str) -> list[ExportFile]:
    """The app's variables: a ConfigMap (config.yaml) and a Secret (secret.yaml, mode 0600, the values
    only with --secret-values); the pods take both with envFrom."""
    namespace = f" -n {options.namespace}" if options.namespace else ""
    files: list[ExportFile] = []
    config = plan.environment.config
    if config:
        document = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": metadata(options, name),
            "data": dict(config),
        }
        header = [
            "# Written by corral export kubernetes: the app's variables that are not secrets (--env-file).",
            f"#   kubectl apply{namespace} -f config.yaml",
        ]
        files.append(ExportFile("config.yaml", dump(header, [document])))
    secrets = {**plan.environment.secrets, **plan.secret_options}
    if secrets:
        secret = secret_name(name)
        values = secrets if options.secret_values else dict.fromkeys(secrets, "")
        document = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": metadata(options, secret),
            "type": "Opaque",
            "stringData": values,
        }
        sources = " ".join(f"--from-env-file={os.path.relpath(path)}" for path in plan.environment.files)
        if options.secret_values:
            how = ["# It holds the values: keep it out of version control; mode 0600."]
        else:
            how = [
                "# The keys only (--secret-values writes the values): fill them in, or create the Secret",
                f"# from the env file instead: kubectl create secret generic {secret}{namespace} {sources}".rstrip(),
            ]
            if plan.secret_options and plan.environment.files:
                how.append(f"# (add {', '.join(f'{key}=...' for key in plan.secret_options)} to that file first)")
        header = [
            f"# Written by corral export kubernetes: the secrets of the app ({', '.join(secrets)}).",
            *how,
            f"#   kubectl apply{namespace} -f secret.yaml",
        ]
        files.append(ExportFile("secret.yaml", dump(header, [document]), mode=0o600))
    return files


def env_from(plan: ContainerPlan, name: str) -> list[dict[str, Any]]:
    sources: list[dict[str, Any]] = []
    if plan.environment.config:
        sources.append({"configMapRef": {"name": name}})
    if plan.environment.secrets or plan.secret_options:
        sources.append({"secretRef": {"name": secret_name(name)}})
    return sources


def metrics_files(
    plan: ContainerPlan, options: KubernetesOptions, name: str, labels: dict[str, str]
) -> list[ExportFile]:
    """The admin token's Secret (admin-token.yaml) and a PodMonitor scraping /metrics with it (podmonitor.yaml)."""
    namespace = f" -n {options.namespace}" if options.namespace else ""
    files: list[ExportFile] = []
    secret, key = secret_name(name), "CORRAL_ADMIN_TOKEN"
    if plan.token_mounted:
        secret, key = f"{name}-admin-token", "token"
        token = kubernetes_token(options.out, plan.token_file)
        header = [
            "# Written by corral export kubernetes: the token of the admin listener (/metrics, /dashboard).",
            "# Keep it out of version control; an export into the same --out keeps it.",
            f"#   kubectl apply{namespace} -f admin-token.yaml",
        ]
        document = kubernetes_secret(metadata(options, secret), token)
        files.append(ExportFile(TOKEN_MANIFEST, dump(header, [document]), mode=0o600))
    header = [
        "# Written by corral export kubernetes: optional, for the Prometheus Operator (monitoring.coreos.com/v1).",
        f"#   kubectl apply{namespace} -f podmonitor.yaml",
    ]
    monitor = pod_monitor(metadata(options, name), labels, secret, key)
    return [*files, ExportFile("podmonitor.yaml", dump(header, [monitor]))]
