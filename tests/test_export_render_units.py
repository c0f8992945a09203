"""The export renderers' small decisions, in process (fast: the mutation run uses them): quoting for systemd's
ExecStart=, unit and Job names, a pod's worker count, the HPA target, the release id, Docker's stop timeout and
health check, Compose's database URL."""

from __future__ import annotations

import shlex

import pytest

from corral.config import settings_from
from corral.errors import ConfigError
from corral.export import compose, docker, kubernetes, systemd

OPTIONS = kubernetes.KubernetesOptions(image="registry.example/app:1.2", memory=256 * 2**20, memory_source="given")


def test_systemd_quote_escapes_specifiers_variables_and_spaces() -> None:
    assert systemd.quote("plain-word") == "plain-word"
    assert systemd.quote("100%") == "100%%"
    assert systemd.quote("$HOME") == "$$HOME"
    assert systemd.quote("two words") == '"two words"'
    assert systemd.quote('say "hi"') == '"say \\"hi\\""'
    assert systemd.quote("a\\b") == '"a\\\\b"'
    assert systemd.quote("line\nbreak") == '"line\\nbreak"'
    assert systemd.quote("a;b") == '"a;b"'
    assert systemd.quote("it's") == '"it\'s"'
    assert systemd.quote("") == '""'
    for word in ("x y", "q\"", "b\\s"):  # what systemd unquotes, as a shell would for these
        assert shlex.split(systemd.quote(word)) == [word]


def test_systemd_unit_name() -> None:
    assert systemd.unit_name(settings_from({"name": "api-1.blue_x"})) == "api-1.blue_x"
    assert systemd.unit_name(settings_from({"name": "Api"})) == "Api"  # capitals are fine in a unit name
    for bad in (".hidden",):
        with pytest.raises(ConfigError, match="cannot name a systemd unit"):
            systemd.unit_name(settings_from({}).model_copy(update={"name": bad}))


def test_kubernetes_pod_workers() -> None:
    assert kubernetes.pod_workers(settings_from({})) == 1  # auto: one per pod, pods scale out
    assert kubernetes.pod_workers(settings_from({"workers": 3})) == 3
    assert kubernetes.pod_workers(settings_from({"workers": 2, "autoscale": "2:6"})) == 6  # sized for the most
    assert kubernetes.pod_start_workers(settings_from({"workers": 2, "autoscale": "2:6"})) == 2
    assert kubernetes.pod_start_workers(settings_from({"workers": 3})) == 3
    assert kubernetes.pod_start_workers(settings_from({})) == 1  # auto without --autoscale: one, not "auto"


def test_kubernetes_hpa_target_stays_inside_the_in_pod_band() -> None:
    assert kubernetes.hpa_target(settings_from({}), OPTIONS) == (70, None)
    band = settings_from({"autoscale": "1:4", "target_utilisation": "50:90"})
    assert kubernetes.hpa_target(band, OPTIONS) == (70, None)
    low = kubernetes.KubernetesOptions(image="i:1", memory=1, memory_source="x", cpu_target=30)
    target, why = kubernetes.hpa_target(band, low)
    assert target == 50 and why is not None and "inside the in-pod band 50-90 %" in why and "30" in why
    high = kubernetes.KubernetesOptions(image="i:1", memory=1, memory_source="x", cpu_target=95)
    assert kubernetes.hpa_target(band, high)[0] == 90
    edge = kubernetes.KubernetesOptions(image="i:1", memory=1, memory_source="x", cpu_target=90)
    assert kubernetes.hpa_target(band, edge) == (90, None)


def test_kubernetes_release_id() -> None:
    assert kubernetes.release_id(settings_from({"release": "r7"}), "app:latest") == "r7"
    assert kubernetes.release_id(settings_from({}), "registry.example:5000/team/app:v2") == "v2"
    digest = "sha256:" + "ab" * 32
    assert kubernetes.release_id(settings_from({}), f"registry.example/app@{digest}") == "ab" * 6
    for image in ("registry.example/app:latest", "registry.example:5000/app", "app"):
        with pytest.raises(ConfigError) as refused:
            kubernetes.release_id(settings_from({}), image)
        assert str(refused.value) == ("the pre-start Job is named per release: give --release ID, or an --image "
                                      "tagged other than latest")


def test_kubernetes_job_name_is_a_dns_label_unique_per_release() -> None:
    assert kubernetes.job_name("api", "R1") == "api-prestart-r1"
    long_a = kubernetes.job_name("api", "a" * 80)
    long_b = kubernetes.job_name("api", "a" * 79 + "b")
    assert len(long_a) <= 63 and len(long_b) <= 63 and long_a != long_b
    assert long_a.startswith("api-prestart-aaaa") and long_a[-9] == "-"
    exact = "x" * (63 - len("api-prestart-"))
    assert kubernetes.job_name("api", exact) == f"api-prestart-{exact}"  # 63: kept whole
    cut = kubernetes.job_name("api", exact + "y")  # 64: cut, with the hash
    assert len(cut) <= 63 and cut != f"api-prestart-{exact}y"[:63]


def test_docker_stop_timeout_and_health_command() -> None:
    class Plan:
        settings = settings_from({"drain_delay": 2.5, "graceful_timeout": 30})

    assert docker.stop_timeout(Plan()) == 43  # type: ignore[arg-type] # ceil(2.5 + 30 + 10)
    command = docker.health_command("http://127.0.0.1:9000/livez")
    assert command[:2] == ["python", "-c"]
    assert "urlopen('http://127.0.0.1:9000/livez', timeout=4)" in command[2]
    assert docker.default_images("3.12") == ("python:3.12-slim", "python:3.12")


def test_compose_points_a_local_database_at_the_service() -> None:
    assert compose._to_service("postgresql://app:pw@localhost:5432/app?sslmode=disable") == (
        "postgresql://app:${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}@postgres:5432/app?sslmode=disable"
    )
    assert compose._to_service("postgresql://localhost/app") == "postgresql://postgres@postgres:5432/app"
