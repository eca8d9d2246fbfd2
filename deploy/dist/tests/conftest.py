"""Shared by the deploy/dist tests: where the artifacts of `just dist` are, and a summary
printed at the end of the run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
# deploy/deploy_testkit.py, shared with the Ansible tests.
sys.path.insert(0, str(REPO / "deploy"))

from deploy_testkit import target, workspace_version  # noqa: E402
_LINES: list[str] = []






def dist_dir() -> Path:
    """<target>/artifacts, where `just dist` writes the tarballs, the packages and sha256sums.txt."""
    return target("artifacts")


def version() -> str:
    """The workspace's version, which names every artifact."""
    return workspace_version()


def artifact(name: str) -> Path:
    path = dist_dir() / name
    if not path.is_file():
        pytest.fail(f"{path} is missing: run `just dist` first (`just test-dist` does)")
    return path


@pytest.fixture(scope="session")
def summary() -> list[str]:
    """Lines for the end-of-run summary."""
    return _LINES


def pytest_terminal_summary(terminalreporter):
    if _LINES:
        terminalreporter.section("deploy/dist")
        for line in _LINES:
            terminalreporter.write_line(line)
