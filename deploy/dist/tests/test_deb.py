"""The .deb packages installed for real on this machine (root), as an administrator would:

1. `dpkg -i` of portolan-agent and portolan-collector: the system users exist, the state
   directories and configuration files have their owners and modes, the units are in
   /usr/lib/systemd/system and `systemd-analyze verify` accepts them.
2. The certificates go to /etc/portolan and the overrides to the units' EnvironmentFile,
   then each service is started with its installed unit's ExecStart, User, Group,
   capabilities and environment file (systemd is not PID 1 here: setpriv does what the
   unit asks of it). The installed `portolan hosts` lists the agent's host, and the
   collector's managed ClickHouse keeps its data in /var/lib/portolan-collector, owned by
   the service's user.
3. `dpkg -r`: every file of the packages is gone but the conffiles; the state directories
   and users stay.
4. `dpkg -P`: no path with `portolan` in it is left under /etc, /usr and /var/lib
   (dpkg's database and deb-systemd-helper's state included) but the files the
   administrator put in /etc/portolan; the system users stay, as Debian policy advises.

It fails, never skips, when it cannot run: no dpkg, no setpriv, not root.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from conftest import artifact, version
from deploy_testkit import free_port, run, setpriv, stop, wait_for

PACKAGES = ("portolan-agent", "portolan-collector")
ETC = Path("/etc/portolan")
# systemd's PATH for services (systemd.exec(5)).
SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Where a package's leftovers would be.
SCANNED = (Path("/etc"), Path("/usr"), Path("/var/lib"))




def dpkg(*args) -> str:
    """dpkg, waiting up to 5 minutes for its lock (apt may be installing a tool meanwhile)."""
    deadline = time.monotonic() + 300
    while True:
        result = run(["dpkg", *args])
        if result.returncode == 0 or "lock" not in result.stderr or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert result.returncode == 0, f"dpkg {' '.join(map(str, args))} failed:\n{result.stdout}{result.stderr}"
    return result.stdout + result.stderr


def status(package: str) -> str:
    """dpkg's abbreviated status (`ii `, `rc `), or "" when dpkg does not know the package."""
    result = run(["dpkg-query", "--show", "--showformat=${db:Status-Abbrev}", package])
    return result.stdout.strip() if result.returncode == 0 else ""


def leftovers() -> set[Path]:
    """Every path under /etc, /usr and /var/lib with `portolan` in it."""
    found = set()
    for top in SCANNED:
        for directory, dirs, files in os.walk(top):
            # Container storage names layers by digest, and may hold other sessions' images.
            dirs[:] = [d for d in dirs if not (directory == "/var/lib" and d in ("containers", "docker"))]
            for name in dirs + files:
                path = Path(directory) / name
                if "portolan" in str(path):
                    found.add(path)
    return found


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def unit_settings(path: Path) -> dict[str, str]:
    """The [Service] settings of a unit file (the last value of a repeated key)."""
    settings, section = {}, None
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings[key] = value
    return settings


def environment_file(path: Path) -> dict[str, str]:
    env = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                key, value = line.split("=", 1)
                env[key] = value
    return env


def start_as_unit(unit: Path, log: Path) -> subprocess.Popen:
    """Runs the unit's ExecStart as its User and Group, with exactly its ambient
    capabilities and bounding set, no new privileges, its UMask and EnvironmentFile."""
    service = unit_settings(unit)
    user, group = pwd.getpwnam(service["User"]), grp.getgrnam(service["Group"])
    caps = [c.lower().removeprefix("cap_") for c in service["AmbientCapabilities"].split()]
    assert service["CapabilityBoundingSet"].split() == service["AmbientCapabilities"].split()
    command = setpriv(user.pw_uid, group.gr_gid, caps)
    env = {"PATH": SERVICE_PATH, "LANG": "C.UTF-8"}
    env.update(environment_file(Path(service["EnvironmentFile"].removeprefix("-"))))
    umask = int(service["UMask"], 8)
    with open(log, "w") as out:
        return subprocess.Popen(
            [*command, *service["ExecStart"].split()],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env=env,
            cwd="/",
            preexec_fn=lambda: os.umask(umask),
        )








def process_uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid in /proc/{pid}/status")


@pytest.fixture(scope="module")
def machine():
    """Root, dpkg and setpriv, or a failure that says what is missing; the packages purged
    before and after; the system users removed afterwards when the test created them."""
    missing = [tool for tool in ("dpkg", "dpkg-query", "setpriv", "adduser") if not shutil.which(tool)]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: this test installs the packages for real (Debian's dpkg, util-linux, adduser)")
    if os.geteuid() != 0:
        pytest.fail("the .deb test installs packages: run it as root (as `just test` does)")
    debs = [artifact(f"{p}_{version()}-1_{run(['dpkg', '--print-architecture']).stdout.strip()}.deb") for p in PACKAGES]
    for package in PACKAGES:
        if status(package):
            dpkg("--purge", package)
    users = {p: user_exists(p) for p in PACKAGES}
    work = Path(tempfile.mkdtemp(prefix="portolan-deb-"))
    yield {"debs": debs, "work": work, "before": leftovers()}
    for package in PACKAGES:
        if status(package):
            run(["dpkg", "--purge", package])
    for name in ("ca.pem", "collector.pem", "collector.key", "agent.pem", "agent.key", "collector.env", "agent.env"):
        (ETC / name).unlink(missing_ok=True)
    if ETC.is_dir() and not any(ETC.iterdir()):
        ETC.rmdir()
    for package, existed in users.items():
        if not existed and user_exists(package):
            run(["userdel", package])
            run(["groupdel", package])
    shutil.rmtree(work, ignore_errors=True)


def test_install_run_remove_purge(machine, summary):
    work, debs = machine["work"], machine["debs"]

    # --- 1. install -------------------------------------------------------------------------
    started = time.monotonic()
    dpkg("--install", *debs)
    installed = time.monotonic() - started
    files = {}
    for package in PACKAGES:
        assert status(package) == "ii", f"{package}: dpkg status {status(package)!r} after dpkg -i"
        # The package's files, not its directories (/usr/bin is everyone's).
        files[package] = [Path(p) for p in dpkg("--listfiles", package).splitlines() if p.startswith("/") and not Path(p).is_dir()]
        entry = pwd.getpwnam(package)
        assert entry.pw_shell == "/usr/sbin/nologin" and entry.pw_dir == "/nonexistent" and entry.pw_uid < 1000, entry
        state = Path(f"/var/lib/{package}")
        mode = 0o700 if package == "portolan-agent" else 0o750
        assert state.stat().st_uid == entry.pw_uid and state.stat().st_mode & 0o777 == mode, f"{state}: owner or mode"
        config = ETC / f"{package.removeprefix('portolan-')}.toml"
        assert config.stat().st_gid == grp.getgrnam(package).gr_gid and config.stat().st_mode & 0o777 == 0o640, f"{config}: group or mode"
        unit = Path(f"/usr/lib/systemd/system/{package}.service")
        assert unit in files[package] and unit_settings(unit)["ExecStart"].startswith(f"/usr/bin/{package} ")
    if shutil.which("systemd-analyze"):
        result = run(["systemd-analyze", "verify", *(f"/usr/lib/systemd/system/{p}.service" for p in PACKAGES)])
        assert result.returncode == 0 and not result.stderr.strip(), result.stdout + result.stderr

    # --- 2. configure and run, as the units would --------------------------------------------
    pki = work / "pki"
    host_id = f"deb-e2e-{uuid.uuid4().hex[:8]}"
    for args in (
        ["init"],
        ["issue-collector", "--name", "deb-e2e", "--ip", "127.0.0.1", "--dns", "localhost"],
        ["issue-agent", "--host-id", host_id],
        ["issue-operator", "--name", "deb-e2e", "--role", "reader"],
    ):
        result = run(["/usr/bin/portolan", "pki", *args, "--dir", pki])
        assert result.returncode == 0, result.stderr
    for source, name, group in (
        ("ca.pem", "ca.pem", "root"),
        ("collector-deb-e2e.pem", "collector.pem", "root"),
        ("collector-deb-e2e.key", "collector.key", "portolan-collector"),
        (f"agent-{host_id}.pem", "agent.pem", "root"),
        (f"agent-{host_id}.key", "agent.key", "portolan-agent"),
    ):
        shutil.copyfile(pki / source, ETC / name)
        os.chown(ETC / name, 0, grp.getgrnam(group).gr_gid)
        (ETC / name).chmod(0o640 if name.endswith(".key") else 0o644)
    port = free_port()
    (ETC / "collector.env").write_text(f"PORTOLAN_LISTEN=127.0.0.1:{port}\nPORTOLAN_NAME=deb-e2e\nPORTOLAN_LOG=info\n")
    (ETC / "agent.env").write_text(
        f"PORTOLAN_COLLECTOR_ENDPOINT=https://127.0.0.1:{port}\nPORTOLAN_HOST_ID={host_id}\n"
        "PORTOLAN_SCAN_INTERVAL=1s\nPORTOLAN_COLLECTOR_MAX_BACKOFF=2s\nPORTOLAN_LOG=info\n"
    )
    logs = [work / "collector.log", work / "agent.log"]
    collector = start_as_unit(Path("/usr/lib/systemd/system/portolan-collector.service"), logs[0])
    agent = None
    try:

        def listening() -> bool:
            assert collector.poll() is None, f"the installed collector exited:\n{logs[0].read_text()}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False

        wait_for("the installed collector did not listen", listening, 120, logs)
        agent = start_as_unit(Path("/usr/lib/systemd/system/portolan-agent.service"), logs[1])
        operator = [
            *("--collector", f"https://127.0.0.1:{port}", "--ca", pki / "ca.pem"),
            *("--cert", pki / "operator-deb-e2e.pem", "--key", pki / "operator-deb-e2e.key"),
        ]

        def listed() -> list[dict] | None:
            assert agent.poll() is None, f"the installed agent exited:\n{logs[1].read_text()}"
            result = run(["/usr/bin/portolan", "hosts", "--host", host_id, "--output", "json", *operator])
            if result.returncode != 0:
                return None
            hosts = [h for h in json.loads(result.stdout) if h["host_id"] == host_id and h["listeners"] > 0]
            return hosts or None

        (host,) = wait_for(f"`portolan hosts` did not list {host_id}", listed, 90, logs)
        assert process_uid(collector.pid) == pwd.getpwnam("portolan-collector").pw_uid
        assert process_uid(agent.pid) == pwd.getpwnam("portolan-agent").pw_uid
        state = Path("/var/lib/portolan-collector")
        owners = {p.stat().st_uid for p in state.rglob("*")}
        assert (state / "clickhouse.url").exists() and owners == {pwd.getpwnam("portolan-collector").pw_uid}, owners
        summary.append(
            f"dpkg -i of {len(debs)} packages in {installed:.1f} s; the installed agent, as portolan-agent with two "
            f"capabilities, reached the installed collector: `portolan hosts` lists {host_id} with {host['listeners']} listeners"
        )
    finally:
        stop(agent)
        stop(collector)

    # --- 3. remove: conffiles and state stay ------------------------------------------------
    dpkg("--remove", *PACKAGES)
    conffiles = {ETC / "agent.toml", ETC / "collector.toml"}
    for package in PACKAGES:
        assert status(package) == "rc", f"{package}: dpkg status {status(package)!r} after dpkg -r"
        for path in files[package]:
            if path in conffiles:
                assert path.is_file(), f"dpkg -r removed the conffile {path}"
            else:
                assert not path.exists() and not path.is_symlink(), f"dpkg -r left {path}"
        assert Path(f"/var/lib/{package}").is_dir(), f"dpkg -r removed /var/lib/{package}: state goes on purge only"
        assert user_exists(package)

    # --- 4. purge: only the administrator's files and the users stay -----------------------
    dpkg("--purge", *PACKAGES)
    ours = {ETC / n for n in ("ca.pem", "collector.pem", "collector.key", "agent.pem", "agent.key", "collector.env", "agent.env")}
    for package in PACKAGES:
        assert status(package) == "", f"{package}: still known to dpkg after dpkg -P"
        for path in files[package]:
            assert not path.exists() and not path.is_symlink(), f"dpkg -P left {path}"
        assert user_exists(package), f"dpkg -P removed the user {package} (Debian keeps system users)"
    left = leftovers() - machine["before"]
    assert left == {ETC, *ours}, f"dpkg -P left more than the administrator's files: {sorted(map(str, left - {ETC, *ours}))}"
    summary.append(f"dpkg -r kept {len(conffiles)} conffiles and 2 state directories; dpkg -P left only {len(ours)} files the test put in {ETC}")
