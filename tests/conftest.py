"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import Corral
from postgres import fresh_database, postgres_cluster


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """Admin URL of a PostgreSQL server started for this test session."""
    with postgres_cluster() as url:
        yield url


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """URL of an empty database of its own (advisory locks and tables are per database)."""
    with fresh_database(postgres_server) as url:
        yield url


@pytest.fixture
def corrals() -> Iterator[list[Corral]]:
    """`corral run` processes a test started; killed (with their process group) at the end."""
    started: list[Corral] = []
    yield started
    for corral in started:
        corral.stop()


@pytest.fixture(params=["file", "postgresql"])
def lock(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A --prestart-lock value of each kind."""
    if request.param == "file":
        return f"file:{tmp_path / 'prestart.lock'}"
    url: str = request.getfixturevalue("postgres_url")
    return url
