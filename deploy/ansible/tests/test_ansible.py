"""deploy/ansible and deploy/systemd, checked with the real tools (`just test-ansible`).

1. ansible-lint, production profile, over deploy/ansible.
2. The roles' defaults: meta/argument_specs.yml describes every variable with its default;
   rendered with the defaults, the configuration files equal deploy/config/*.toml and the
   units equal deploy/systemd/*.service (`PORTOLAN_BLESS=1` rewrites deploy/systemd).
3. The example playbook, run for real against localhost into a temporary root with the
   binaries of the cargo build and certificates from `portolan pki`: the installed agent,
   started with the rendered configuration, reaches the installed collector (managed
   ClickHouse) and its inventory lands in ClickHouse. A second run changes nothing, and
   neither does `--check`. The same playbook then installs an agent with only the CA and a
   bootstrap token (created by an admin on that collector): the agent makes its key, enrols,
   its key is bound in ClickHouse and its inventory stored; a second run and `--check`
   leave its key and certificate alone, and a token with a certificate to install fails
   the play.
4. `--check` on a fresh root, system users included, writes nothing anywhere.
5. `systemd-analyze security --offline=yes` scores both units under a threshold, every
   protection left off is explained in a comment, and `systemd-analyze verify` accepts
   the installed units.
6. The agent's two capabilities are exactly what it needs: an unprivileged user with
   CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE attributes a socket of a root process, with
   either one alone it cannot, and it lists the socket even with none. With
   `namespaces = "all"` and the same two, it lists and attributes a listener in another
   network namespace, read from /proc/<pid>/net (entering it needs CAP_SYS_ADMIN).

Binaries come from `${CARGO_TARGET_DIR:-target}/debug` (`cargo build --workspace --bins`).
"""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import tomllib
import urllib.parse
import urllib.request
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml
from deploy_testkit import free_port, run, setpriv, stop, target, wait_for

ANSIBLE = Path(__file__).resolve().parents[1]
REPO = ANSIBLE.parents[1]
SYSTEMD = REPO / "deploy" / "systemd"
CONFIG = REPO / "deploy" / "config"
ROLES = ("portolan_agent", "portolan_collector")
UNITS = ("portolan-agent.service", "portolan-collector.service")
VENV_BIN = Path(sys.executable).parent

# Highest acceptable `systemd-analyze security` exposure (0 = locked down, 10 = none).
# Measured with Debian bookworm's systemd 252: agent 2.0, collector 1.2 (managed
# ClickHouse) and 1.1 (external ClickHouse); the margin absorbs other systemd versions.
THRESHOLDS = {"portolan-agent.service": 2.5, "portolan-collector.service": 1.5}


# --- helpers ---------------------------------------------------------------------------




def built(name: str) -> Path:
    path = target("debug") / name
    if not path.is_file():
        pytest.fail(f"{path} is missing: build first (`cargo build --workspace --bins`; `just test-ansible` does)")
    return path


def tool(name: str) -> str:
    """A tool of the virtualenv running the tests, else from PATH."""
    path = VENV_BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"`{name}` not found: run `just setup-python`")
    return found




def ansible_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    # ansible-core refuses to run without a UTF-8 locale; bare containers often have none.
    if "UTF-8" not in (env.get("LC_ALL") or env.get("LANG") or "").upper().replace("UTF8", "UTF-8"):
        env["LC_ALL"] = "C.UTF-8"
    env.update(
        {
            "ANSIBLE_HOME": str(home),
            "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_RETRY_FILES_ENABLED": "0",
            "ANSIBLE_LOCALHOST_WARNING": "0",
            "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0",
            "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        }
    )
    return env


def playbook(home: Path, *args) -> tuple[dict[str, int], str]:
    """Runs ansible-playbook; returns the recap of localhost and the whole output."""
    result = run([tool("ansible-playbook"), *args], env=ansible_env(home), cwd=ANSIBLE)
    output = result.stdout + result.stderr
    print(output)
    assert result.returncode == 0, f"ansible-playbook {' '.join(map(str, args))} failed:\n{output}"
    match = re.search(r"^localhost\s+:\s+(.*)$", output, re.MULTILINE)
    assert match, f"no PLAY RECAP for localhost in:\n{output}"
    recap = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1))}
    return recap, output


def changed_tasks(output: str) -> list[str]:
    """The tasks that reported `changed`, for failure messages."""
    tasks, current = [], None
    for line in output.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            current = line.rstrip(" *")
        elif line.startswith("changed:") and current:
            tasks.append(f"{current}: {line}")
    return tasks








def flatten(table: dict, prefix: str = "") -> dict[str, object]:
    """Dotted keys of a TOML document; empty tables are leaves."""
    out = {}
    for key, value in table.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def security(unit: Path) -> tuple[float, str]:
    result = run(["systemd-analyze", "security", "--offline=yes", "--no-pager", unit])
    output = result.stdout + result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", output)
    assert match, f"no exposure level from systemd-analyze security {unit}:\n{output}"
    return float(match.group(1)), output


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir():
    # Not pytest's tmp_path: its directories are 0700, and the capability test runs an
    # unprivileged user who must reach the installed binary, as on a real host.
    path = Path(tempfile.mkdtemp(prefix="portolan-ansible-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def rendered(workdir):
    """The roles' units and configuration files rendered with the roles' defaults, and
    the collector's unit for an external ClickHouse."""
    out = {}
    for variant, extra in (("defaults", []), ("external", ["-e", "portolan_collector_clickhouse_url=http://clickhouse.example.net:8123"])):
        directory = workdir / "render" / variant
        directory.mkdir(parents=True)
        playbook(
            workdir / "ansible-home",
            *("-i", "localhost,", "tests/render.yml"),
            *("-e", f"portolan_render_out={directory}", "-e", f"ansible_python_interpreter={sys.executable}"),
            *extra,
        )
        out[variant] = directory
    return out


@pytest.fixture(scope="module")
def installed(workdir):
    """The example playbook run once into <workdir>/root, as the collector's and the
    agent's host at once, with fresh certificates."""
    if os.geteuid() != 0:
        pytest.skip("the playbook installs files owned by root: run as root (as `just test` does)")
    portolan = built("portolan")
    pki = workdir / "pki"
    host_id = f"ansible-e2e-{uuid.uuid4().hex[:8]}"
    for args in (
        ["init"],
        ["issue-collector", "--name", "ansible-e2e", "--ip", "127.0.0.1", "--dns", "localhost"],
        ["issue-agent", "--host-id", host_id],
        ["issue-agent", "--host-id", "revoked-host"],
        # The collectors' enrollment signer, and an admin who creates bootstrap tokens.
        ["issue-signer", "--name", "ansible-e2e"],
        ["issue-operator", "--name", "ansible-admin", "--role", "admin"],
    ):
        result = run([portolan, "pki", *args, "--dir", pki])
        assert result.returncode == 0, result.stderr
    root = workdir / "root"
    port = free_port()
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    common = {"manage_service": False, "manage_user": False, "user": user, "group": group, "root": str(root)}
    variables = {
        **{f"portolan_agent_{k}": v for k, v in common.items()},
        **{f"portolan_collector_{k}": v for k, v in common.items()},
        "portolan_agent_binary_src": str(built("portolan-agent")),
        "portolan_agent_tls_ca_src": str(pki / "ca.pem"),
        "portolan_agent_tls_cert_src": str(pki / f"agent-{host_id}.pem"),
        "portolan_agent_tls_key_src": str(pki / f"agent-{host_id}.key"),
        "portolan_agent_host_id": host_id,
        "portolan_agent_scan_interval": "1s",
        # Characters TOML must escape, in a value the collector accepts.
        "portolan_agent_labels": {"env": "test", "role": "ansible", "note": 'quote " backslash \\ é'},
        "portolan_agent_collector_endpoint": f"https://127.0.0.1:{port}",
        "portolan_agent_collector_max_backoff": "2s",
        "portolan_collector_binary_src": str(built("portolan-collector")),
        "portolan_collector_tls_ca_src": str(pki / "ca.pem"),
        "portolan_collector_tls_cert_src": str(pki / "collector-ansible-e2e.pem"),
        "portolan_collector_tls_key_src": str(pki / "collector-ansible-e2e.key"),
        "portolan_collector_listen": f"127.0.0.1:{port}",
        "portolan_collector_name": "ansible-e2e",
        "portolan_collector_rules_evaluate": True,
        "portolan_collector_rules_interval": "2s",
        "portolan_collector_rules_src": [str(REPO / "deploy" / "rules" / "default.yaml")],
        # Named by the role, written by the operator (the test, before the collector starts).
        "portolan_collector_tls_revoked": "/etc/portolan/revoked.txt",
        "portolan_collector_tls_crls": ["/etc/portolan/ca.crl.pem"],
        # Agents may also join with a bootstrap token (the `enrolled` fixture's agent).
        "portolan_collector_enrollment_enabled": True,
        "portolan_collector_enrollment_signer_cert_src": str(pki / "signer-ansible-e2e.pem"),
        "portolan_collector_enrollment_signer_key_src": str(pki / "signer-ansible-e2e.key"),
        "portolan_collector_enrollment_certificate_lifetime": "2h",
        "portolan_collector_enrollment_second_key": "hold",
    }
    inventory = workdir / "inventory.json"
    inventory.write_text(
        json.dumps(
            {
                "all": {
                    "hosts": {"localhost": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable, "ansible_become": False}},
                    "children": {"portolan_collectors": {"hosts": {"localhost": {}}}, "portolan_agents": {"hosts": {"localhost": {}}}},
                    "vars": variables,
                }
            },
            indent=2,
        )
    )
    recap, output = playbook(workdir / "ansible-home", "-i", inventory, "playbook.yml")
    assert recap["failed"] == 0 and recap["changed"] > 0, output
    return {"root": root, "inventory": inventory, "host_id": host_id, "port": port, "variables": variables, "pki": pki}


# --- 1. ansible-lint ------------------------------------------------------------------------


def test_ansible_lint_production_profile(workdir):
    result = run([tool("ansible-lint"), "--nocolor"], cwd=ANSIBLE, env=ansible_env(workdir / "lint-home"))
    print(result.stdout + result.stderr)
    assert result.returncode == 0, f"ansible-lint failed:\n{result.stdout}{result.stderr}"
    assert "Profile 'production' was required, and it passed" in result.stdout + result.stderr


# --- 2. defaults, argument specs and the checked-in files --------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_argument_specs_describe_every_variable_with_its_default(role):
    defaults = yaml.safe_load((ANSIBLE / "roles" / role / "defaults" / "main.yml").read_text())
    options = yaml.safe_load((ANSIBLE / "roles" / role / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    assert sorted(options) == sorted(defaults), "defaults/main.yml and meta/argument_specs.yml list different variables"
    for name, spec in options.items():
        assert name.startswith(f"{role}_"), name
        assert spec.get("description"), f"{name} has no description"
        assert spec.get("default") == defaults[name], f"{name}: default {defaults[name]!r} in defaults/main.yml, {spec.get('default')!r} in argument_specs.yml"


@pytest.mark.parametrize("name", ["agent", "collector"])
def test_configuration_rendered_with_the_defaults_is_the_example(rendered, name):
    ours = tomllib.loads((rendered["defaults"] / f"{name}.toml").read_text())
    example = tomllib.loads((CONFIG / f"portolan-{name}.toml").read_text())
    assert flatten(ours) == flatten(example), f"the role portolan_{name} does not render deploy/config/portolan-{name}.toml with its defaults"


@pytest.mark.parametrize("unit", UNITS)
def test_checked_in_units_are_the_roles_units(rendered, unit):
    ours = (rendered["defaults"] / unit).read_text()
    if os.environ.get("PORTOLAN_BLESS") == "1":
        (SYSTEMD / unit).write_text(ours)
    assert (SYSTEMD / unit).read_text() == ours, (
        f"deploy/systemd/{unit} differs from what the role renders with its defaults: edit the role's template and run "
        "`PORTOLAN_BLESS=1 just test-ansible`"
    )


# --- 3. the playbook for real ------------------------------------------------------------------


@pytest.fixture(scope="module")
def collector(installed, workdir):
    """The installed collector (managed ClickHouse) started with its rendered
    configuration, once the files the role names but the operator writes (the revocation
    list and the CA's CRL) are there: what it answers with, and `query` for its ClickHouse."""
    root, port, pki = installed["root"], installed["port"], installed["pki"]
    binary = root / "usr/local/bin/portolan-collector"
    toml = root / "etc/portolan/collector.toml"
    config = tomllib.loads(toml.read_text())
    revoked = Path(config["tls"]["revoked"])
    assert revoked == root / "etc/portolan/revoked.txt"
    # Another host's agent is revoked: this one still gets through.
    revoked.write_text("# revoked by the test\nhost:another-host\n")
    # And the CA's CRL, written by `portolan pki crl`, revokes another agent's certificate.
    (crl,) = (Path(p) for p in config["tls"]["crls"])
    assert crl == root / "etc/portolan/ca.crl.pem"
    result = run([built("portolan"), "pki", "crl", "--revoke-cert", pki / "agent-revoked-host.pem", "--out", crl, "--dir", pki])
    assert result.returncode == 0, result.stderr

    state = Path(config["state_dir"])
    log_path = workdir / "collector.log"
    env = {**os.environ, "PORTOLAN_LOG": "info"}
    env.pop("PORTOLAN_CLICKHOUSE_URL", None)  # the rendered configuration says: managed
    with open(log_path, "w") as log:
        process = subprocess.Popen([binary, "--config", toml], stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
    try:

        def ready():
            assert process.poll() is None, f"the collector exited:\n{log_path.read_text()}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                return None
            return (state / "clickhouse.url").exists()

        wait_for("the collector did not listen", ready, 120, [log_path])
        url = (state / "clickhouse.url").read_text().strip()

        def query(sql: str) -> str:
            request = urllib.request.Request(url, data=sql.encode(), method="POST")
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.read().decode().strip()

        yield {"config": config, "database": config["clickhouse"]["database"], "query": query, "log": log_path, "binary": binary}
    finally:
        stop(process)


def start_agent(binary: Path, config: Path, log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "PORTOLAN_LOG": "info"}
    with open(log_path, "w") as log:
        return subprocess.Popen([binary, "run", "--config", config], stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)


def wait_stored(collector: dict, agent: subprocess.Popen, host_id: str, logs: list[Path]) -> int:
    """How many current sockets of `host_id` ClickHouse holds, once there are some."""

    def stored() -> int:
        assert agent.poll() is None, f"the agent exited:\n{logs[-1].read_text()}"
        return int(collector["query"](f"SELECT count() FROM {collector['database']}.sockets_current WHERE host_id = '{host_id}'") or 0)

    return wait_for(f"the inventory of `{host_id}` did not land in ClickHouse", stored, 90, logs)


def test_playbook_installs_an_agent_that_reaches_the_collector(installed, collector, workdir, summary):
    root, host_id, port = installed["root"], installed["host_id"], installed["port"]
    agent_bin = root / "usr/local/bin/portolan-agent"
    collector_bin = collector["binary"]
    agent_toml = root / "etc/portolan/agent.toml"
    collector_toml = root / "etc/portolan/collector.toml"
    for path in (agent_bin, collector_bin):
        assert path.read_bytes() == built(path.name).read_bytes(), f"{path} is not the built binary"
    for path in (root / "etc/portolan/agent.key", root / "etc/portolan/collector.key", agent_toml, collector_toml):
        assert path.stat().st_mode & 0o777 == 0o640, f"{path} is readable by others"
    # The signer's key makes agent identities: its owner alone (the collector's user) reads it.
    signer_key = root / "etc/portolan/signer.key"
    assert signer_key.stat().st_mode & 0o777 == 0o600 and signer_key.stat().st_uid == os.getuid(), f"{signer_key} is readable by others"

    # The rendered files point into the root, and the installed binaries accept them.
    agent = tomllib.loads(agent_toml.read_text())
    config = collector["config"]
    assert agent["enrollment"] == {"token": "", "token_file": ""}, "no token given, yet agent.toml enrols"
    assert config["enrollment"]["enabled"] is True and config["enrollment"]["certificate_lifetime"] == "2h"
    collector_tls = [v for k, v in config["tls"].items() if k != "crls"] + config["tls"]["crls"]
    signer = [config["enrollment"]["signer_cert"], config["enrollment"]["signer_key"]]
    for path in [*agent["tls"].values(), *collector_tls, *signer, agent["spool"]["dir"], config["state_dir"], *config["rules"]["files"]]:
        assert Path(path).is_relative_to(root) and Path(path).exists(), path
    assert agent["labels"]["note"] == 'quote " backslash \\ é'
    for command in ([agent_bin, "run", "--print-config", "--config", agent_toml], [collector_bin, "--print-config", "--config", collector_toml]):
        result = run(command)
        assert result.returncode == 0, result.stderr

    logs = [collector["log"], workdir / "agent.log"]
    agent_process = start_agent(agent_bin, agent_toml, logs[1])
    try:
        count = wait_stored(collector, agent_process, host_id, logs)
        summary.append(f"installed agent -> installed collector: {count} sockets of host `{host_id}` in {collector['database']}.sockets_current")
        # The agent saw the installed collector listening, owned by the installed binary.
        listeners = collector["query"](
            f"SELECT executable FROM {collector['database']}.sockets_current FINAL "
            f"WHERE host_id = '{host_id}' AND listener = 1 AND local_port = {port} FORMAT TSV"
        ).splitlines()
        assert str(collector_bin) in listeners, f"the collector's listener on port {port} is not attributed to {collector_bin}: {listeners}"
    finally:
        stop(agent_process)


def test_second_run_changes_nothing(installed, workdir, summary):
    recap, output = playbook(workdir / "ansible-home", "-i", installed["inventory"], "playbook.yml")
    assert recap["changed"] == 0, "not idempotent; changed:\n" + "\n".join(changed_tasks(output))
    summary.append(f"second run: ok={recap['ok']} changed={recap['changed']} failed={recap['failed']}")


def test_check_mode_reports_no_changes(installed, workdir, summary):
    recap, output = playbook(workdir / "ansible-home", "-i", installed["inventory"], "playbook.yml", "--check", "--diff")
    assert recap["changed"] == 0, "--check reports changes:\n" + "\n".join(changed_tasks(output))
    summary.append(f"--check after a run: ok={recap['ok']} changed={recap['changed']} failed={recap['failed']}")


# --- 3b. an agent that joins with a bootstrap token -------------------------------------------


def openssl(*args, stdin: bytes | None = None) -> bytes:
    result = subprocess.run(["openssl", *map(str, args)], input=stdin, capture_output=True)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


@pytest.fixture(scope="module")
def enrolled(installed, collector, workdir):
    """The example playbook run for the agents only, into <workdir>/enrol-root, with a
    bootstrap token that an admin created on the running collector, the CA and nothing
    else: no certificate, no key."""
    pki, port = installed["pki"], installed["port"]
    host_id = f"ansible-enrol-{uuid.uuid4().hex[:8]}"
    result = run(
        [
            *(built("portolan"), "--collector", f"https://127.0.0.1:{port}", "--ca", pki / "ca.pem"),
            *("--cert", pki / "operator-ansible-admin.pem", "--key", pki / "operator-ansible-admin.key"),
            *("token", "create", "--host", "ansible-enrol-*", "--uses", "1", "--ttl", "1h", "--label", "enrolled=ansible"),
        ],
        env={k: v for k, v in os.environ.items() if k != "PORTOLAN_CONFIG"},
    )
    assert result.returncode == 0, f"portolan token create failed:\n{result.stderr}"
    token = result.stdout.strip()
    assert token, result.stderr
    root = workdir / "enrol-root"
    base = installed["variables"]
    variables = {
        **{k: v for k, v in base.items() if k.startswith("portolan_agent_") and not k.startswith("portolan_agent_tls_")},
        "portolan_agent_root": str(root),
        "portolan_agent_host_id": host_id,
        "portolan_agent_tls_ca_src": str(pki / "ca.pem"),
        "portolan_agent_enrollment_token": token,
    }
    inventory = workdir / "enrol-inventory.json"
    inventory.write_text(
        json.dumps(
            {
                "all": {
                    "hosts": {"localhost": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable, "ansible_become": False}},
                    "children": {"portolan_agents": {"hosts": {"localhost": {}}}},
                    "vars": variables,
                }
            },
            indent=2,
        )
    )
    recap, output = playbook(workdir / "ansible-home", "-i", inventory, "playbook.yml", "--diff")
    assert recap["failed"] == 0 and recap["changed"] > 0, output
    assert token not in output, "the bootstrap token is in the playbook's output"
    return {"root": root, "inventory": inventory, "host_id": host_id, "token": token, "pki": pki}


def test_agent_with_only_a_token_and_the_ca_enrols_with_the_installed_collector(enrolled, collector, workdir, summary):
    root, host_id, token = enrolled["root"], enrolled["host_id"], enrolled["token"]
    agent_toml = root / "etc/portolan/agent.toml"
    agent = tomllib.loads(agent_toml.read_text())
    spool = root / "var/lib/portolan-agent"
    token_file = root / "etc/portolan/agent.token"
    cert, key = spool / "agent.pem", spool / "agent.key"
    # The token is in its file, readable by the agent's user only, never in agent.toml.
    assert agent["enrollment"] == {"token": "", "token_file": str(token_file)}
    assert token not in agent_toml.read_text()
    assert token_file.read_text().strip() == token
    assert token_file.stat().st_mode & 0o777 == 0o600 and token_file.stat().st_uid == os.getuid(), f"{token_file} is readable by others"
    # The agent writes its key and certificate into its spool directory, the only one its unit may write.
    assert agent["tls"] == {"ca": str(root / "etc/portolan/ca.pem"), "cert": str(cert), "key": str(key)}
    unit = (root / "etc/systemd/system/portolan-agent.service").read_text()
    assert f"\nReadWritePaths={spool}\n" in unit, "the unit does not let the agent write its certificate"
    assert not cert.exists() and not key.exists(), "the role installed a certificate or key for an enrolling agent"
    assert not (root / "etc/portolan/agent.pem").exists() and not (root / "etc/portolan/agent.key").exists()

    logs = [collector["log"], workdir / "enrol-agent.log"]
    agent_process = start_agent(root / "usr/local/bin/portolan-agent", agent_toml, logs[1])
    try:
        count = wait_stored(collector, agent_process, host_id, logs)
    finally:
        stop(agent_process)
    assert "enrolled: certificate obtained with the bootstrap token" in logs[1].read_text(), logs[1].read_text()

    # The key was made on the host (0600) and the certificate is for it, its host_id, signed
    # by the signer, for the collector's certificate_lifetime (2h).
    assert key.stat().st_mode & 0o777 == 0o600, f"{key} is readable by others"
    public = openssl("pkey", "-in", key, "-pubout")
    assert openssl("x509", "-in", cert, "-noout", "-pubkey") == public, "the certificate is not for the host's key"
    text = openssl("x509", "-in", cert, "-noout", "-text").decode()
    assert f"URI:spiffe://portolan/host/{host_id}" in text, text
    pki = enrolled["pki"]
    issuer = openssl("x509", "-in", cert, "-noout", "-issuer", "-nameopt", "RFC2253").decode().split("=", 1)[1]
    signer = openssl("x509", "-in", pki / "signer-ansible-e2e.pem", "-noout", "-subject", "-nameopt", "RFC2253").decode().split("=", 1)[1]
    assert issuer == signer, f"issued by {issuer}, not by the signer {signer}"
    openssl("verify", "-CAfile", pki / "ca.pem", "-untrusted", pki / "signer-ansible-e2e.pem", cert)
    dates = dict(line.split("=", 1) for line in openssl("x509", "-in", cert, "-noout", "-startdate", "-enddate").decode().split("\n") if "=" in line)
    lifetime = datetime.strptime(dates["notAfter"], "%b %d %H:%M:%S %Y %Z") - datetime.strptime(dates["notBefore"], "%b %d %H:%M:%S %Y %Z")
    assert timedelta(hours=1, minutes=55) <= lifetime <= timedelta(hours=2, minutes=5), f"certificate lifetime {lifetime}, configured 2h"

    # ClickHouse binds the host_id to that key, with the token's label.
    spki_sha256 = hashlib.sha256(openssl("pkey", "-in", key, "-pubout", "-outform", "DER")).hexdigest()
    rows = collector["query"](
        f"SELECT key_sha256, state, label_keys, label_values FROM {collector['database']}.host_keys FINAL WHERE host_id = '{host_id}' FORMAT JSONCompact"
    )
    data = json.loads(rows)["data"]
    assert data == [[spki_sha256, "bound", ["enrolled"], ["ansible"]]], data
    summary.append(f"agent with only the CA and a token: enrolled as `{host_id}` (key {spki_sha256[:12]}… bound, {lifetime} certificate), {count} sockets stored")


def test_enrolled_agent_second_run_and_check_change_nothing(enrolled, workdir, summary):
    """After the agent wrote its key and certificate, the role leaves them alone."""
    for extra in ([], ["--check", "--diff"]):
        recap, output = playbook(workdir / "ansible-home", "-i", enrolled["inventory"], "playbook.yml", *extra)
        assert recap["changed"] == 0, f"{extra or 'second run'}: changed:\n" + "\n".join(changed_tasks(output))
        assert enrolled["token"] not in output, "the bootstrap token is in the playbook's output"
        summary.append(f"enrolled agent, {' '.join(extra) or 'second run'}: ok={recap['ok']} changed={recap['changed']}")


def test_a_token_with_a_certificate_to_install_fails_the_play(enrolled, workdir):
    """A token and a hand-issued certificate at once: the play stops before it installs
    anything and says what to do."""
    variables = json.loads(enrolled["inventory"].read_text())
    fresh = workdir / "both-root"
    variables["all"]["vars"].update(
        {"portolan_agent_root": str(fresh), "portolan_agent_tls_cert_src": str(enrolled["pki"] / "agent-revoked-host.pem"), "portolan_agent_tls_key_src": str(enrolled["pki"] / "agent-revoked-host.key")}
    )
    inventory = workdir / "both-inventory.json"
    inventory.write_text(json.dumps(variables))
    result = run([tool("ansible-playbook"), "-i", inventory, "playbook.yml"], env=ansible_env(workdir / "ansible-home"), cwd=ANSIBLE)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "leave portolan_agent_tls_cert_src and portolan_agent_tls_key_src empty" in output, output
    assert enrolled["token"] not in output, "the bootstrap token is in the playbook's output"
    assert not fresh.exists(), f"the failed play installed files into {fresh}"


# --- 4. check mode on a fresh host ----------------------------------------------------------


@pytest.mark.parametrize("case", ["certificates", "token"])
def test_check_mode_on_a_fresh_root_writes_nothing(request, workdir, case):
    """As on a new host: nothing installed, system users still to create; for the
    collector and an agent with its certificate, and for an agent with a token."""
    source = request.getfixturevalue("installed" if case == "certificates" else "enrolled")
    variables = json.loads(source["inventory"].read_text())
    fresh = workdir / f"fresh-root-{case}"
    for key in list(variables["all"]["vars"]):
        if key.endswith(("_manage_user", "_user", "_group")):
            del variables["all"]["vars"][key]  # the roles' defaults: create portolan-agent, portolan-collector
        elif key.endswith("_root"):
            variables["all"]["vars"][key] = str(fresh)
    inventory = workdir / f"fresh-inventory-{case}.json"
    inventory.write_text(json.dumps(variables))

    def digest() -> str:
        return "".join(hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in ("/etc/passwd", "/etc/group"))

    before = digest()
    recap, output = playbook(workdir / "ansible-home", "-i", inventory, "playbook.yml", "--check")
    assert recap["failed"] == 0 and recap["changed"] > 0, output
    assert not fresh.exists(), f"--check created {fresh}"
    assert digest() == before, "--check changed /etc/passwd or /etc/group"


# --- 5. systemd-analyze ---------------------------------------------------------------------


def test_units_are_hardened(rendered, summary):
    scores = {}
    units = [(SYSTEMD / unit, "deploy/systemd") for unit in UNITS]
    units.append((rendered["external"] / "portolan-collector.service", "rendered for an external ClickHouse"))
    for path, variant in units:
        score, output = security(path)
        scores[f"{path.name} ({variant})"] = score
        # Every protection left off is explained: its directive is named in a comment.
        comments = "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))
        for line in output.splitlines():
            if line.startswith("✗"):
                directive = line[1:].split()[0].split("=")[0]
                assert directive in comments, f"{path}: `{directive}` is off without a comment saying why:\n{line}"
        assert score <= THRESHOLDS[path.name], f"{path}: exposure {score} > {THRESHOLDS[path.name]}\n{output}"
    summary.append("systemd-analyze security --offline=yes (exposure 0-10, lower is better; threshold):")
    for name, score in scores.items():
        summary.append(f"  {score:4.1f}  {name}  (<= {THRESHOLDS[name.split()[0]]})")


def test_agent_unit_grants_only_the_two_capabilities():
    unit = (SYSTEMD / "portolan-agent.service").read_text()
    assert "\nCapabilityBoundingSet=CAP_DAC_READ_SEARCH CAP_SYS_PTRACE\n" in unit
    assert "\nAmbientCapabilities=CAP_DAC_READ_SEARCH CAP_SYS_PTRACE\n" in unit
    assert "\nRestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK\n" in unit
    collector = (SYSTEMD / "portolan-collector.service").read_text()
    assert "\nCapabilityBoundingSet=\n" in collector and "\nAmbientCapabilities=\n" in collector


def test_installed_units_verify(installed):
    units = [installed["root"] / "etc/systemd/system" / unit for unit in UNITS]
    result = run(["systemd-analyze", "verify", *units])
    assert result.returncode == 0 and not result.stderr.strip(), result.stdout + result.stderr


# --- 6. the agent's capabilities, for real -------------------------------------------------


@pytest.mark.parametrize(
    ("caps", "attribution"),
    [
        (["dac_read_search", "sys_ptrace"], "owned"),
        (["dac_read_search"], None),
        (["sys_ptrace"], None),
        ([], None),
    ],
    ids=["both", "dac_read_search-only", "sys_ptrace-only", "none"],
)
def test_agent_attributes_other_users_sockets_with_exactly_its_two_capabilities(installed, caps, attribution):
    """The unit's user and capabilities (setpriv as `nobody`, no new privileges), against
    a socket held by this root process: listed in every case, attributed only with both."""
    agent = installed["root"] / "usr/local/bin/portolan-agent"
    nobody = pwd.getpwnam("nobody")
    command = setpriv(nobody.pw_uid, nobody.pw_gid, caps)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        result = run([*command, agent, "scan", "--listening", "--output", "json"])
    assert result.returncode == 0, result.stderr
    sockets = [s for s in json.loads(result.stdout)["sockets"] if s["local_port"] == port and s["protocol"] == "tcp"]
    assert len(sockets) == 1, f"the listener on {port} is not listed: {result.stdout[:2000]}"
    found = sockets[0]
    pids = [p["pid"] for p in found["processes"]]
    if attribution:
        assert found["attribution"] == attribution and os.getpid() in pids, found
    else:
        assert found["attribution"] != "owned" and not pids, found


def test_agent_reads_other_namespaces_without_entering_them(installed):
    """`namespaces = "all"` (`--all-namespaces`) with the unit's user and two capabilities,
    as argument_specs.yml describes it: a listener that a root process holds in another
    network namespace is listed and attributed, read from /proc/<pid>/net because entering
    the namespace (setns) needs CAP_SYS_ADMIN, and the agent says so."""
    agent = installed["root"] / "usr/local/bin/portolan-agent"
    nobody = pwd.getpwnam("nobody")
    command = setpriv(nobody.pw_uid, nobody.pw_gid, ["dac_read_search", "sys_ptrace"])
    hold = (
        "import socket, sys\n"
        "s = socket.socket()\n"
        "s.bind(('0.0.0.0', 0))\n"
        "s.listen()\n"
        "print(s.getsockname()[1], flush=True)\n"
        "sys.stdin.read()\n"
    )
    # unshare execs python in the new namespace: the holder's pid is the process's.
    holder = subprocess.Popen(["unshare", "--net", sys.executable, "-c", hold], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = holder.stdout.readline()
        assert line.strip().isdigit(), f"the listener in a new network namespace did not start (unshare --net: {holder.poll()})"
        port = int(line)
        result = run([*command, agent, "scan", "--listening", "--all-namespaces", "--output", "json"])
        own = run([*command, agent, "scan", "--listening", "--output", "json"])
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
    assert result.returncode == 0 and own.returncode == 0, result.stderr + own.stderr
    document = json.loads(result.stdout)

    def held(doc: dict) -> list[dict]:
        return [s for s in doc["sockets"] if s["local_port"] == port and s["protocol"] == "tcp" and s["local_address"] == "0.0.0.0"]

    assert not [s for s in held(json.loads(own.stdout)) if holder.pid in [p["pid"] for p in s["processes"]]], "own namespace only, yet the other namespace's listener is listed"
    (found,) = held(document)
    assert found["attribution"] == "owned" and holder.pid in [p["pid"] for p in found["processes"]], found
    assert any("cannot enter network namespaces" in w and "CAP_SYS_ADMIN" in w for w in document["warnings"]), document["warnings"]


# --- the example inventory ---------------------------------------------------------------------


def test_example_inventory_uses_only_variables_the_roles_declare(workdir):
    result = run([tool("ansible-inventory"), "-i", "inventory/example.yml", "--list"], cwd=ANSIBLE, env=ansible_env(workdir / "ansible-home"))
    assert result.returncode == 0, result.stderr
    inventory = json.loads(result.stdout)
    assert inventory["portolan_collectors"]["hosts"] and inventory["portolan_agents"]["hosts"]
    declared = set()
    for role in ROLES:
        declared |= set(yaml.safe_load((ANSIBLE / "roles" / role / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"])
    used = {name for host in inventory["_meta"]["hostvars"].values() for name in host if name.startswith(ROLES)}
    assert used and used <= declared, f"the example inventory sets undeclared variables: {sorted(used - declared)}"
