"""What the Python tests of deploy/ (ansible, dist) share: where cargo put things, the
workspace version, running a command, and starting, waiting for and stopping processes.
Each test directory's conftest.py puts deploy/ on sys.path."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def target(sub: str) -> Path:
    """`<target>/<sub>`: $CARGO_TARGET_DIR (relative to the repository) or target/."""
    base = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    if not base.is_absolute():
        base = REPO / base
    return base / sub


def workspace_version() -> str:
    """The workspace's version (the agent's, which names every artifact)."""
    result = run(["cargo", "metadata", "--no-deps", "--format-version", "1"], cwd=REPO)
    assert result.returncode == 0, result.stderr
    return {p["name"]: p["version"] for p in json.loads(result.stdout)["packages"]}["portolan-agent"]


def run(args, **kwargs) -> subprocess.CompletedProcess:
    """`args` (paths allowed) run to completion, output captured as text."""
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    return subprocess.run([str(a) for a in args], **kwargs)


def setpriv(uid: int, gid: int, caps: list[str]) -> list[str]:
    """`setpriv` as a systemd unit runs its service: `uid`/`gid`, no supplementary groups,
    no new privileges, and exactly `caps` (lower case, no `cap_`) as ambient, inheritable
    and bounding set."""
    command = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--no-new-privs"]
    if caps:
        spec = ",".join(f"+{c}" for c in caps)
        return command + [f"--inh-caps=-all,{spec}", f"--ambient-caps={spec}", f"--bounding-set=-all,{spec}"]
    return command + ["--inh-caps=-all", "--bounding-set=-all"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, condition, timeout: float, logs: list[Path] = ()) -> object:
    """`condition()`'s first truthy value within `timeout` seconds; else the test fails
    with `what` and the logs."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            text = "\n".join(f"--- {p} ---\n{p.read_text(errors='replace') if p.exists() else '(none)'}" for p in logs)
            pytest.fail(f"{what} within {timeout:.0f} s\n{text}")
        time.sleep(0.5)


def stop(process: subprocess.Popen | None) -> None:
    """SIGTERM, then SIGKILL after 45 s."""
    if process and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=45)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
