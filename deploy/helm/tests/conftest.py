"""Rendering the Portolan chart offline, for the tests in this directory.

The chart is rendered with Helm's own Go SDK (the `helm-python-sdk` package bundles it), so
no `helm` binary, cluster or network is needed. Every case is a values file in `values/`;
its render is kept in `golden/<case>.yaml`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

TESTS = Path(__file__).resolve().parent
CHART = TESTS.parent / "portolan"
REPO = TESTS.parents[2]
VALUES = TESTS / "values"
GOLDEN = TESTS / "golden"
SCHEMAS = TESTS / "schemas"

RELEASE = "portolan"
NAMESPACE = "portolan"

CASES = sorted(p.stem for p in VALUES.glob("*.yaml"))

BLESS = os.environ.get("PORTOLAN_BLESS") == "1"


def load_chart() -> helm.Chart:
    return helm.Chart.load(CHART)


def read_values(case: str) -> dict[str, Any]:
    return yaml.safe_load((VALUES / f"{case}.yaml").read_text()) or {}


@dataclass
class Render:
    """One render of the chart: template path → text, and the manifests it holds."""

    files: dict[str, str]
    manifests: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def of(cls, files: dict[str, str]) -> Render:
        manifests = []
        for path in sorted(files):
            if path.endswith("NOTES.txt"):
                continue
            for doc in yaml.safe_load_all(files[path]):
                if doc:
                    manifests.append(doc)
        return cls(files=files, manifests=manifests)

    @property
    def notes(self) -> str:
        return next((text for path, text in self.files.items() if path.endswith("NOTES.txt")), "")

    def text(self) -> str:
        """The golden form: every non-empty template, in path order, with its source."""
        out = []
        for path in sorted(self.files):
            body = self.files[path].strip("\n")
            if not body.strip():
                continue
            # Manifests that a template only conditionally writes start with `---` or not;
            # normalise so that the golden file reads the same either way.
            body = re.sub(r"\A---\n", "", body)
            out.append(f"# Source: {path}\n{body}\n")
        return "---\n".join(out)

    def kind(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.manifests if m["kind"] == kind]

    def one(self, kind: str, name: str) -> dict[str, Any]:
        found = [m for m in self.kind(kind) if m["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
        return found[0]

    def workloads(self) -> list[dict[str, Any]]:
        return [m for m in self.manifests if m["kind"] in ("DaemonSet", "Deployment")]


def render(values: dict[str, Any] | None, chart: helm.Chart | None = None) -> Render:
    chart = chart or load_chart()
    files = chart.render(values=values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return Render.of(files)


@pytest.fixture(scope="session")
def chart() -> helm.Chart:
    return load_chart()


@pytest.fixture(scope="session")
def renders(chart: helm.Chart) -> dict[str, Render]:
    return {case: render(read_values(case), chart) for case in CASES}


def bin_dir() -> Path:
    """Where `cargo build --bins` put the binaries: $PORTOLAN_BIN_DIR, else
    $CARGO_TARGET_DIR/debug, else target/debug."""
    if os.environ.get("PORTOLAN_BIN_DIR"):
        return Path(os.environ["PORTOLAN_BIN_DIR"])
    target = os.environ.get("CARGO_TARGET_DIR") or str(REPO / "target")
    return Path(target) / "debug"


def binary(name: str) -> Path:
    path = bin_dir() / name
    if not path.is_file():
        pytest.fail(
            f"{path} is missing: build the binaries first (`cargo build --workspace --bins`, "
            "or set PORTOLAN_BIN_DIR / CARGO_TARGET_DIR)"
        )
    return path
