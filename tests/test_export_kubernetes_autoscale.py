"""`corral export kubernetes --autoscale MIN:MAX`: the pod is sized for its maximum, the HPA's CPU target stays
inside the in-pod band, and the manifests still validate."""

from __future__ import annotations

from pathlib import Path

import yaml

from corral.cli import parse_run_arguments
from test_export_kubernetes import APP, by_kind, consistency_problems, corral, kubernetes_validate


def export(tmp_path: Path, *args: str) -> tuple[dict[str, dict[str, object]], str]:
    (tmp_path / "main.py").write_text(APP)
    out = tmp_path / "k8s"
    result = corral("export", "kubernetes", "main:app", "--image", "registry.example/shop:1.0", "--memory", "1Gi",
                    "--out", str(out), *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = (out / "app.yaml").read_text()
    documents = [d for d in yaml.safe_load_all(text) if d]
    assert consistency_problems(documents, None) == []
    kubernetes_validate(out / "app.yaml")
    return by_kind(documents), text


def test_the_pod_is_sized_for_its_maximum_and_starts_at_its_minimum(tmp_path: Path) -> None:
    kinds, text = export(tmp_path, "--autoscale", "2:6")
    container = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]  # type: ignore[index]
    settings = parse_run_arguments(container["args"][1:]).settings
    assert settings.autoscale == "2:6"
    assert settings.workers == "auto"  # starts at the minimum
    assert container["resources"]["requests"]["cpu"] == "3000m"  # 6 workers x 500m
    assert "Memory per pod (6 workers)" in text
    hpa = kinds["HorizontalPodAutoscaler"]["spec"]["metrics"][0]["resource"]["target"]  # type: ignore[index]
    assert hpa["averageUtilization"] == 70  # the default, inside the band 50-90
    assert "in-pod band" not in text


def test_the_hpa_target_moves_inside_the_band(tmp_path: Path) -> None:
    kinds, text = export(tmp_path, "--autoscale", "1:4", "--target-utilisation", "30:60", "-w", "3")
    container = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]  # type: ignore[index]
    assert parse_run_arguments(container["args"][1:]).settings.workers == 3  # the starting size, as given
    hpa = kinds["HorizontalPodAutoscaler"]["spec"]["metrics"][0]["resource"]["target"]  # type: ignore[index]
    assert hpa["averageUtilization"] == 60
    assert "# Note: the autoscaler's CPU target is 60 %, inside the in-pod band 30-60 % (--cpu-target 70" in text


def test_without_autoscale_nothing_changes(tmp_path: Path) -> None:
    kinds, _ = export(tmp_path, "-w", "2", "--cpu-target", "95")
    container = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]  # type: ignore[index]
    assert container["resources"]["requests"]["cpu"] == "1000m"
    hpa = kinds["HorizontalPodAutoscaler"]["spec"]["metrics"][0]["resource"]["target"]  # type: ignore[index]
    assert hpa["averageUtilization"] == 95
