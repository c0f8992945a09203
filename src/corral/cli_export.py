"""`corral export ...`: the files that run `corral run` on startup (they take every option of `corral run`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from corral.cli_run import parse_run_arguments
from corral.errors import CorralError

Opt = typer.Option

EXPORT_CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True}
OutOpt = Annotated[Path | None, Opt("--out", help="Write the files into DIR instead of printing them.")]
SocketOpt = Annotated[bool, Opt("--socket", help="Also a socket unit: systemd opens the --bind addresses.")]
WorkdirOpt = Annotated[
    Path | None, Opt("--working-directory", help="Directory the service runs in (default: this one).")
]

export_app = typer.Typer(
    help="Write what runs `corral run` on startup: systemd units, a Dockerfile, Compose, Kubernetes.",
    no_args_is_help=True,
)


def systemd_units(ctx: typer.Context, socket: bool, working_directory: Path | None) -> Any:
    from corral.export import systemd

    settings = parse_run_arguments(ctx.args).settings
    options = systemd.SystemdOptions(
        working_directory=working_directory or Path.cwd(),
        executable=systemd.corral_executable(),
        socket=socket,
    )
    return systemd.render(settings, options)


def _printable(plan: Any, out: Path | None) -> tuple[Any, str | None]:
    """Docker and Compose files printed without --out must run as they are: no token file to point at; and
    the line that says what --out adds."""
    from corral.export import metrics

    without = metrics.unwritten_token(plan, out)
    return (plan, None) if without is None else (without, metrics.UNWRITTEN_TOKEN)


def _emit(files: Any, note: str | None, out: Path | None) -> None:
    from corral.export import common

    if note:
        print(note, file=sys.stderr)
    common.emit(files, out)


@export_app.command("systemd", context_settings=EXPORT_CONTEXT)
def export_systemd_command(
    ctx: typer.Context, out: OutOpt = None, socket: SocketOpt = False, working_directory: WorkdirOpt = None
) -> None:
    """A systemd service unit running `corral run [APP] [options]` (takes every option of `corral run`).

    Type=notify with a watchdog, restarts on failure, hardened; --user sets User= (default: you).
    """
    from corral.export.common import emit

    units = systemd_units(ctx, socket, working_directory)
    emit(units.files, out)
    if units.env_file:
        hint = f"put {', '.join(f'{key}=...' for key in units.secrets)} in {units.env_file} (mode 0600)"
        print(f"corral: secrets are not in the unit: {hint}", file=sys.stderr)


@export_app.command("docker", context_settings=EXPORT_CONTEXT)
def export_docker_command(
    ctx: typer.Context,
    out: OutOpt = None,
    base_image: Annotated[
        str | None, Opt(help="Final stage image (default: python:X.Y-slim, X.Y from requires-python).")
    ] = None,
    build_image: Annotated[str | None, Opt(help="Build stage image (default: python:X.Y), the same Python.")] = None,
) -> None:
    """A Dockerfile and .dockerignore running `corral run [APP] [options]`.

    Takes every option of `corral run`; loopback addresses become all interfaces in the container.
    Corral installs from a wheel of this installation written beside the Dockerfile, the versions
    from the project's lock file; the --env-file files stay out of the image (docker run --env-file).
    """
    from corral.export import common, docker

    settings = parse_run_arguments(ctx.args).settings
    plan, note = _printable(common.container_plan(settings, Path.cwd(), common.app_environment(settings, Path.cwd())),
                            out)
    options = docker.DockerOptions(Path.cwd(), base_image, build_image, out)
    _emit(docker.render(plan, options), note, out)


@export_app.command("compose", context_settings=EXPORT_CONTEXT)
def export_compose_command(
    ctx: typer.Context,
    out: OutOpt = None,
    image: Annotated[str | None, Opt(help="Tag of the image built (default: NAME:latest).")] = None,
    postgres_image: Annotated[str, Opt(help="Image of the PostgreSQL service.")] = "postgres:17",
) -> None:
    """A Compose file: the app, its pre-start steps as a one-shot service, PostgreSQL for a local lock.

    Takes every option of `corral run`. Uses the Dockerfile of `corral export docker`.
    """
    from corral.export import common, compose

    settings = parse_run_arguments(ctx.args).settings
    plan, note = _printable(common.container_plan(settings, Path.cwd(), common.app_environment(settings, Path.cwd())),
                            out)
    _emit(compose.render(plan, compose.ComposeOptions(image, postgres_image, Path.cwd(), out)), note, out)


@export_app.command("kubernetes", context_settings=EXPORT_CONTEXT)
def export_kubernetes_command(
    ctx: typer.Context,
    out: OutOpt = None,
    image: Annotated[str | None, Opt(help="Container image (default: NAME:latest).")] = None,
    namespace: Annotated[str | None, Opt(help="Namespace of every resource.")] = None,
    replicas: Annotated[int | None, Opt(help="A fixed number of pods instead of the autoscaler.")] = None,
    min_replicas: Annotated[int, Opt(help="Fewest pods the autoscaler keeps.")] = 2,
    max_replicas: Annotated[int, Opt(help="Most pods the autoscaler starts.")] = 10,
    cpu_target: Annotated[int, Opt(help="Autoscaler target: average CPU use, % of the request.")] = 70,
    ingress_class: Annotated[str | None, Opt(help="ingressClassName of the Ingress.")] = None,
    host: Annotated[
        list[str] | None, Opt("--host", help="Host name of the Ingress or HTTPRoute (repeatable; default: --https).")
    ] = None,
    secret_values: Annotated[
        bool, Opt("--secret-values", help="Write the env file's secret values into secret.yaml (default: keys).")
    ] = False,
    secret_key: Annotated[
        list[str] | None, Opt("--secret-key", help="A variable of --env-file to keep in the Secret (repeatable).")
    ] = None,
    gateway: Annotated[str | None, Opt(help="An HTTPRoute to this Gateway (NAME or NAMESPACE/NAME).")] = None,
    cluster_issuer: Annotated[str | None, Opt(help="cert-manager ClusterIssuer for --https hosts.")] = None,
    memory: Annotated[str | None, Opt(help="Memory request and limit of a pod (default: measured).")] = None,
    cpu: Annotated[str | None, Opt(help="CPU request of a pod (default: 500m per worker).")] = None,
    import_timeout: Annotated[float, Opt(help="Seconds the measuring import may take.")] = 300.0,
) -> None:
    """Deployment, Service, autoscaler, disruption budget, Ingress or HTTPRoute, and a pre-start Job.

    Takes every option of `corral run`; one worker per pod unless --workers is given. The memory
    comes from `corral check` (the app is imported here) unless --memory is given.
    """
    import dataclasses

    from corral.check import FALLBACK, estimate_memory, measure
    from corral.config import parse_size
    from corral.errors import ConfigError
    from corral.export import common, kubernetes
    from corral.export.kubernetes_files import KubernetesOptions

    settings = parse_run_arguments(ctx.args).settings
    environment = common.app_environment(settings, Path.cwd(), tuple(secret_key or ()))
    plan = common.container_plan(settings, Path.cwd(), environment, dropped=common.TLS_FIELDS)
    options = KubernetesOptions(
        image=image or f"{common.resource_name(settings.name)}:latest",
        memory=0,
        memory_source="",
        cpu=cpu,
        namespace=namespace,
        replicas=replicas,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        cpu_target=cpu_target,
        ingress_class=ingress_class,
        gateway=gateway,
        cluster_issuer=cluster_issuer,
        hosts=tuple(host or ()),
        secret_values=secret_values,
        out=out,
    )
    kubernetes.validate(plan, options)
    common.refuse_loopback(plan.settings, plan.environment, "kubernetes")
    if memory:
        try:
            pod_memory, source = parse_size(memory), "from --memory"
        except ValueError as exc:
            raise ConfigError(f"invalid --memory: {exc}") from None
    else:
        try:
            footprint, source = measure(settings.options(), Path.cwd(), import_timeout), "measured by corral check"
        except CorralError as exc:
            footprint, source = FALLBACK, f"a fallback guess (corral check failed: {exc})"
            print(f"corral: memory not measured, using {source}; --memory sets it", file=sys.stderr)
        workers = kubernetes.pod_workers(settings)
        pod_memory = estimate_memory(footprint, workers, settings.preload, settings.max_memory)
    options = dataclasses.replace(options, memory=pod_memory, memory_source=source)
    common.emit(kubernetes.render(plan, options), out)
