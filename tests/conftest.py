"""Fixtures shared by every test tier. The machinery lives in ``tests/support`` (README there).

- ``http_backend``: one tiny HTTP backend process for the whole session (``.port``).
- ``haproxy_version``: not a fixture; parametrize with ``tests.support.haproxy.HAPROXY_VERSIONS``.
- every test item gets ``rep_setup`` / ``rep_call`` report attributes, so a fixture can check
  ``request.node.rep_call.failed`` at teardown and dump logs only for failures.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.backend import BackendProcess, start_backend


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def http_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackendProcess]:
    """A 200-answering HTTP backend (see tests/support/backend.py) on a free port."""
    backend = start_backend(tmp_path_factory.mktemp("backend") / "backend.log")
    try:
        yield backend
    finally:
        backend.stop()


@pytest.fixture
def log_records() -> Iterator[list[dict[str, Any]]]:
    """Every loguru record emitted during the test: dicts with ``level`` (name), ``message``
    and ``extra``. For asserting that something was (or was not) logged."""
    from loguru import logger

    records: list[dict[str, Any]] = []

    def sink(message: Any) -> None:
        record = message.record
        records.append(
            {"level": record["level"].name, "message": record["message"], "extra": record["extra"]}
        )

    sink_id = logger.add(sink, level="TRACE", format="{message}")
    try:
        yield records
    finally:
        logger.remove(sink_id)
