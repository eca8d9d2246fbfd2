"""The roles installing from a release URL (`portolan_*_install_from: release`), against a
web server on 127.0.0.1 serving the artifacts of `just dist` (<target>/artifacts):

1. the example playbook, run into a temporary root, installs the tarball's binaries
   (byte for byte), which check the rendered configuration; a second run downloads
   nothing and changes nothing, and neither does `--check`;
2. a tarball whose sum differs from sha256sums.txt fails the play on the controller,
   saying so, before anything is installed;
3. a version the release does not list fails the same way;
4. the roles' default version is the workspace's.
"""

from __future__ import annotations

import functools
import grp
import http.server
import json
import os
import pwd
import shutil
import sys
import tarfile
import threading
from pathlib import Path

import pytest
import yaml

from deploy_testkit import target, workspace_version
from test_ansible import REPO, ansible_env, playbook, run, tool

TRIPLE = "x86_64-unknown-linux-musl"






@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """Two release directories served on 127.0.0.1: `good`, a copy of <target>/artifacts, and
    `tampered`, the same with one byte of the tarball changed."""
    name = f"portolan-{workspace_version()}-{TRIPLE}.tar.gz"
    if not (target('artifacts') / name).is_file() or not (target('artifacts') / "sha256sums.txt").is_file():
        pytest.fail(f"{target('artifacts') / name} or sha256sums.txt is missing: run `just dist` first (`just test-ansible` does)")
    if os.uname().machine != "x86_64":
        pytest.fail(f"these tests install the x86_64 tarball on this host, which is {os.uname().machine}")
    root = tmp_path_factory.mktemp("release")
    good, tampered = root / "good", root / "tampered"
    for directory in (good, tampered):
        directory.mkdir()
        for artifact in (name, "sha256sums.txt"):
            shutil.copyfile(target('artifacts') / artifact, directory / artifact)
    data = bytearray((tampered / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tampered / name).write_bytes(bytes(data))

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    yield {"good": f"{url}/good", "tampered": f"{url}/tampered", "tarball": target('artifacts') / name}
    server.shutdown()
    server.server_close()


def inventory(workdir: Path, root: Path, url: str, cache: Path, extra: dict | None = None) -> Path:
    """Both roles on localhost, into `root`, from the release at `url`."""
    pki = workdir / "pki"
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    common = {
        "manage_service": False,
        "manage_user": False,
        "user": user,
        "group": group,
        "root": str(root),
        "install_from": "release",
        "release_url": url,
        "version": workspace_version(),
        "release_cache_dir": str(cache),
    }
    variables = {
        **{f"portolan_agent_{k}": v for k, v in common.items()},
        **{f"portolan_collector_{k}": v for k, v in common.items()},
        "portolan_agent_tls_ca_src": str(pki / "ca.pem"),
        "portolan_agent_tls_cert_src": str(pki / "agent-release-e2e.pem"),
        "portolan_agent_tls_key_src": str(pki / "agent-release-e2e.key"),
        "portolan_agent_host_id": "release-e2e",
        "portolan_collector_tls_ca_src": str(pki / "ca.pem"),
        "portolan_collector_tls_cert_src": str(pki / "collector-release-e2e.pem"),
        "portolan_collector_tls_key_src": str(pki / "collector-release-e2e.key"),
        **(extra or {}),
    }
    path = workdir / f"inventory-{root.name}.json"
    path.write_text(
        json.dumps(
            {
                "all": {
                    "hosts": {"localhost": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable, "ansible_become": False}},
                    "children": {"portolan_collectors": {"hosts": {"localhost": {}}}, "portolan_agents": {"hosts": {"localhost": {}}}},
                    "vars": variables,
                }
            }
        )
    )
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, release):
    if os.geteuid() != 0:
        pytest.fail("the playbook installs files owned by root: run as root (as `just test` does)")
    path = tmp_path_factory.mktemp("ansible-release")
    # The CLI of the release itself issues the certificates.
    with tarfile.open(release["tarball"]) as archive:
        archive.extractall(path / "unpacked", filter="data")
    portolan = path / "unpacked" / f"portolan-{workspace_version()}-{TRIPLE}" / "portolan"
    for args in (["init"], ["issue-collector", "--name", "release-e2e", "--ip", "127.0.0.1"], ["issue-agent", "--host-id", "release-e2e"]):
        result = run([portolan, "pki", *args, "--dir", path / "pki"])
        assert result.returncode == 0, result.stderr
    return path


def failed_playbook(home: Path, *args) -> str:
    result = run([tool("ansible-playbook"), *args], env=ansible_env(home), cwd=REPO / "deploy" / "ansible")
    output = result.stdout + result.stderr
    assert result.returncode != 0, f"the play succeeded:\n{output}"
    return output


def test_release_install_is_the_tarballs_binaries_and_idempotent(release, workdir, summary):
    root, cache = workdir / "root", workdir / "cache"
    inv = inventory(workdir, root, release["good"], cache)
    recap, output = playbook(workdir / "home", "-i", inv, "playbook.yml")
    assert recap["failed"] == 0 and recap["changed"] > 0, output
    top = f"portolan-{workspace_version()}-{TRIPLE}"
    with tarfile.open(release["tarball"]) as archive:
        for binary in ("portolan-agent", "portolan-collector"):
            installed = root / "usr/local/bin" / binary
            assert installed.read_bytes() == archive.extractfile(f"{top}/{binary}").read(), f"{installed} is not the release's"
            assert installed.stat().st_mode & 0o777 == 0o755
    # Downloaded once, for both roles.
    assert sorted(p.name for p in cache.iterdir()) == [top, f"{top}.tar.gz"]
    result = run([root / "usr/local/bin/portolan-agent", "run", "--print-config", "--config", root / "etc/portolan/agent.toml"])
    assert result.returncode == 0, result.stderr

    again, output = playbook(workdir / "home", "-i", inv, "playbook.yml")
    assert again["changed"] == 0, output
    check, output = playbook(workdir / "home", "-i", inv, "playbook.yml", "--check")
    assert check["changed"] == 0, output
    summary.append(
        f"install from a release URL: changed={recap['changed']}, then changed={again['changed']}, --check changed={check['changed']}"
    )


def test_tampered_tarball_fails_before_anything_is_installed(release, workdir):
    root, cache = workdir / "root-tampered", workdir / "cache-tampered"
    inv = inventory(workdir, root, release["tampered"], cache)
    output = failed_playbook(workdir / "home", "-i", inv, "playbook.yml")
    assert "Download the release tarball, checked against sha256sums.txt" in output
    assert "did not match" in output and "checksum" in output.lower(), output
    assert not (root / "usr/local/bin").exists(), "a binary was installed from a tarball whose checksum is wrong"
    assert not (cache / f"portolan-{workspace_version()}-{TRIPLE}").exists()


def test_version_missing_from_the_release_fails(release, workdir):
    root, cache = workdir / "root-missing", workdir / "cache-missing"
    inv = inventory(workdir, root, release["good"], cache, {"portolan_agent_version": "0.0.0-absent", "portolan_collector_version": "0.0.0-absent"})
    output = failed_playbook(workdir / "home", "-i", inv, "playbook.yml")
    assert "portolan-0.0.0-absent-x86_64-unknown-linux-musl.tar.gz" in output, output
    assert not (root / "usr/local/bin").exists()


@pytest.mark.parametrize("role", ["portolan_agent", "portolan_collector"])
def test_default_version_is_the_workspaces(role):
    """The roles install, by default, the release of the code they come with."""
    defaults = yaml.safe_load((REPO / "deploy/ansible/roles" / role / "defaults/main.yml").read_text())
    assert str(defaults[f"{role}_version"]) == workspace_version(), (
        f"deploy/ansible/roles/{role}/defaults/main.yml: {role}_version is {defaults[f'{role}_version']}, the workspace is {workspace_version()} "
        "(bump it with the workspace's version, in meta/argument_specs.yml too)"
    )
