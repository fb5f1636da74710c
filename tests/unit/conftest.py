"""Unit tier: no Ray, no built variants, no network, no server subprocesses. Every test in this folder is marked
`unit`; a run that collects only unit tests fails if anything imported Ray (the tier must stay fast and light)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
FORBIDDEN_MODULES = ("ray",)
UNIT_TIMEOUT_SECONDS = 30  # the whole tier runs in well under a minute; one test near this is a bug


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.unit)
            item.add_marker(pytest.mark.timeout(UNIT_TIMEOUT_SECONDS))


def forbidden_imports() -> list[str]:
    return sorted(name for name in sys.modules if name.split(".")[0] in FORBIDDEN_MODULES)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    items = getattr(session, "items", [])
    if not items or not all(item.path.is_relative_to(HERE) for item in items):
        return  # a run with integration tests imports Ray on purpose
    if imported := forbidden_imports():
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        reporter.ensure_newline()
        reporter.write_sep("=", f"the unit tier imported {', '.join(imported[:3])}...: unit tests must not import Ray",
                           red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
