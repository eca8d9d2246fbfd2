"""Shared by the deploy/ansible tests: a summary printed at the end of the run (the units'
exposure scores, what landed in ClickHouse), whether or not output is captured."""

import sys
from pathlib import Path

import pytest

# deploy/deploy_testkit.py, shared with the dist tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

_LINES: list[str] = []


@pytest.fixture(scope="session")
def summary() -> list[str]:
    """Lines for the end-of-run summary."""
    return _LINES


def pytest_terminal_summary(terminalreporter):
    if _LINES:
        terminalreporter.section("deploy/ansible and deploy/systemd")
        for line in _LINES:
            terminalreporter.write_line(line)
