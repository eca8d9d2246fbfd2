"""What `just dist` writes, checked without installing anything.

- sha256sums.txt covers every tarball and package, and every sum is right;
- each tarball holds one directory with the three static binaries for its architecture
  (ELF of the right machine, no interpreter), LICENSE, README.md, CHANGELOG.md, the example
  configurations (deploy/config), the hardened units (deploy/systemd) and the default rule
  pack, owned by root; the binaries print their version (under qemu for aarch64);
- each package holds the binaries of the tarball of its architecture (the same bits), the
  unit of deploy/systemd with ExecStart in /usr/bin and nothing else changed, the example
  configuration as its only conffile, mode 0640, and maintainer scripts that create the
  user and state directory and carry the systemd snippets.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest

from conftest import REPO, artifact, dist_dir, version

BINARIES = ("portolan", "portolan-agent", "portolan-collector")
# Rust target triple -> (Debian architecture, ELF e_machine).
TRIPLES = {
    "x86_64-unknown-linux-musl": ("amd64", 62),
    "aarch64-unknown-linux-musl": ("arm64", 183),
}
PACKAGES = {
    "portolan-agent": {
        "binaries": ["portolan-agent"],
        "config": "agent.toml",
        "files": {
            "./usr/bin/portolan-agent": 0o755,
            "./usr/lib/systemd/system/portolan-agent.service": 0o644,
            "./etc/portolan/agent.toml": 0o640,
            "./usr/share/doc/portolan-agent/README.md": 0o644,
            "./usr/share/doc/portolan-agent/CHANGELOG.md": 0o644,
            "./usr/share/doc/portolan-agent/copyright": 0o644,
        },
    },
    "portolan-collector": {
        "binaries": ["portolan-collector", "portolan"],
        "config": "collector.toml",
        "files": {
            "./usr/bin/portolan-collector": 0o755,
            "./usr/bin/portolan": 0o755,
            "./usr/lib/systemd/system/portolan-collector.service": 0o644,
            "./etc/portolan/collector.toml": 0o640,
            "./usr/share/portolan/rules/default.yaml": 0o644,
            "./usr/share/doc/portolan-collector/README.md": 0o644,
            "./usr/share/doc/portolan-collector/CHANGELOG.md": 0o644,
            "./usr/share/doc/portolan-collector/copyright": 0o644,
        },
    },
}


def tarballs() -> dict[str, Path]:
    """The tarballs present, by triple; x86_64 must be there."""
    found = {triple: dist_dir() / f"portolan-{version()}-{triple}.tar.gz" for triple in TRIPLES}
    found = {t: p for t, p in found.items() if p.is_file()}
    artifact(f"portolan-{version()}-x86_64-unknown-linux-musl.tar.gz")
    return found


def deb(package: str, arch: str) -> Path:
    return artifact(f"{package}_{version()}-1_{arch}.deb")


def elf_facts(data: bytes) -> tuple[int, bool]:
    """(e_machine, has a PT_INTERP program header) of a 64-bit little-endian ELF file."""
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, "not a 64-bit little-endian ELF file"
    (machine,) = struct.unpack_from("<H", data, 18)
    (phoff,) = struct.unpack_from("<Q", data, 32)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    types = [struct.unpack_from("<I", data, phoff + i * phentsize)[0] for i in range(phnum)]
    return machine, 3 in types


def deb_members(path: Path) -> dict[str, tarfile.TarInfo]:
    """The data archive of a package, read with dpkg-deb (--fsys-tarfile)."""
    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", path], capture_output=True, check=True).stdout
    archive = tarfile.open(fileobj=io.BytesIO(data))
    return {m.name: m for m in archive.getmembers()}, archive


@pytest.fixture(scope="module", autouse=True)
def dpkg_deb():
    if not shutil.which("dpkg-deb"):
        pytest.fail("dpkg-deb is missing: these tests read the packages with it (Debian's dpkg)")


def test_sha256sums_cover_every_artifact():
    sums = artifact("sha256sums.txt").read_text().splitlines()
    listed = {}
    for line in sums:
        match = re.fullmatch(r"([0-9a-f]{64})  (\S+)", line)
        assert match, f"sha256sums.txt: not `<sha256>  <file>`: {line!r}"
        listed[match.group(2)] = match.group(1)
    present = sorted(p.name for p in dist_dir().iterdir() if p.name.endswith((".tar.gz", ".deb")))
    assert sorted(listed) == present, "sha256sums.txt and the artifacts in target/artifacts differ"
    for name, digest in listed.items():
        assert hashlib.sha256((dist_dir() / name).read_bytes()).hexdigest() == digest, f"{name}: wrong sum in sha256sums.txt"


def test_tarballs_hold_static_binaries_and_the_deploy_files(summary):
    found = tarballs()
    for triple, path in found.items():
        check_tarball(triple, path)
    summary.append(f"tarballs checked: {', '.join(f'{t} ({p.stat().st_size / 2**20:.1f} MiB)' for t, p in found.items())}")


def check_tarball(triple: str, path: Path) -> None:
    top = f"portolan-{version()}-{triple}"
    expected = {
        **{f"{top}/{b}": 0o755 for b in BINARIES},
        **{f"{top}/{f}": 0o644 for f in ("LICENSE", "README.md", "CHANGELOG.md")},
        **{f"{top}/config/portolan-{n}.toml": 0o644 for n in ("agent", "collector")},
        **{f"{top}/systemd/portolan-{n}.service": 0o644 for n in ("agent", "collector")},
        f"{top}/rules/default.yaml": 0o644,
    }
    with tarfile.open(path) as archive:
        members = {m.name: m for m in archive.getmembers() if m.isfile()}
        assert {m.name for m in archive.getmembers() if not m.isfile()} == {top, f"{top}/config", f"{top}/systemd", f"{top}/rules"}
        assert {n: m.mode for n, m in members.items()} == expected
        assert all(m.uid == 0 and m.gid == 0 for m in members.values())
        for name, source in [
            *((f"{top}/{f}", REPO / f) for f in ("LICENSE", "README.md", "CHANGELOG.md")),
            *((f"{top}/config/portolan-{n}.toml", REPO / f"deploy/config/portolan-{n}.toml") for n in ("agent", "collector")),
            *((f"{top}/systemd/portolan-{n}.service", REPO / f"deploy/systemd/portolan-{n}.service") for n in ("agent", "collector")),
            (f"{top}/rules/default.yaml", REPO / "deploy/rules/default.yaml"),
        ]:
            assert archive.extractfile(name).read() == source.read_bytes(), f"{name} differs from {source}"
        for binary in BINARIES:
            machine, interpreter = elf_facts(archive.extractfile(f"{top}/{binary}").read())
            assert machine == TRIPLES[triple][1], f"{binary}: ELF machine {machine}, not {triple}'s"
            assert not interpreter, f"{binary} is dynamically linked (it has an interpreter): not a static musl build"


def test_binaries_run(tmp_path, summary):
    """Each tarball's binaries print their version: natively on this machine's
    architecture, under qemu's user-mode emulator on the other (qemu-user-static)."""
    ran = []
    for triple, path in tarballs().items():
        arch = triple.split("-")[0]
        runner = []
        if arch != os.uname().machine:
            emulator = shutil.which(f"qemu-{arch}-static")
            if not emulator:
                pytest.fail(f"qemu-{arch}-static is missing: install qemu-user-static to run the {triple} binaries (`just test-dist` does)")
            runner = [emulator]
        with tarfile.open(path) as archive:
            archive.extractall(tmp_path / arch, filter="data")
        top = tmp_path / arch / f"portolan-{version()}-{triple}"
        for binary in BINARIES:
            result = subprocess.run([*runner, top / binary, "--version"], capture_output=True, text=True, env={})
            assert result.returncode == 0 and version() in result.stdout, f"{triple} {binary} --version: {result.stdout}{result.stderr}"
        ran.append(f"{arch}{' (qemu)' if runner else ''}")
    summary.append(f"binaries run: {', '.join(ran)}")


@pytest.mark.parametrize("package", PACKAGES)
def test_package_holds_the_tarballs_binaries_unit_and_conffile(package, tmp_path):
    spec = PACKAGES[package]
    for triple, tarball in tarballs().items():
        arch = TRIPLES[triple][0]
        path = deb(package, arch)
        fields = {}
        for field in ("Package", "Version", "Architecture", "Depends", "Maintainer"):
            fields[field] = subprocess.run(["dpkg-deb", "--field", path, field], capture_output=True, text=True, check=True).stdout.strip()
        assert fields["Package"] == package and fields["Version"] == f"{version()}-1" and fields["Architecture"] == arch, fields
        # Static binaries: nothing but adduser, for the maintainer scripts.
        assert fields["Depends"] == "adduser", fields

        members, data = deb_members(path)
        files = {n: m.mode for n, m in members.items() if m.isfile()}
        assert files == spec["files"], f"{path.name}: files and modes"
        assert all(m.uid == 0 and m.gid == 0 for m in members.values())
        top = f"portolan-{version()}-{triple}"
        with tarfile.open(tarball) as archive:
            for binary in spec["binaries"]:
                ours = data.extractfile(f"./usr/bin/{binary}").read()
                assert ours == archive.extractfile(f"{top}/{binary}").read(), f"{path.name}: {binary} is not the tarball's"
        name = package.removeprefix("portolan-")
        config = data.extractfile(f"./etc/portolan/{spec['config']}").read()
        assert config == (REPO / f"deploy/config/portolan-{name}.toml").read_bytes()

        # The unit: deploy/systemd's, only ExecStart moved to /usr/bin.
        unit = data.extractfile(f"./usr/lib/systemd/system/{package}.service").read().decode()
        source = (REPO / f"deploy/systemd/{package}.service").read_text()
        changed = [(a, b) for a, b in zip(source.splitlines(), unit.splitlines(), strict=True) if a != b]
        assert len(changed) == 1 and changed[0][1].startswith(f"ExecStart=/usr/bin/{package} "), changed
        assert changed[0][0] == changed[0][1].replace("/usr/bin/", "/usr/local/bin/", 1)

        control = tmp_path / arch / package
        control.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["dpkg-deb", "--control", path, control], check=True)
        assert (control / "conffiles").read_text().split() == [f"/etc/portolan/{spec['config']}"]
        postinst = (control / "postinst").read_text()
        postrm = (control / "postrm").read_text()
        assert "adduser --system" in postinst and f"/var/lib/{package}" in postinst
        # The systemd snippets of dh_installsystemd: not enabled nor started at install,
        # restarted on upgrade when running, stopped on removal, forgotten on purge.
        assert "deb-systemd-helper debian-installed" in postinst, "the unit is enabled at install: it must wait for certificates"
        assert "deb-systemd-invoke start" not in postinst, "the unit is started at install: it must wait for certificates"
        assert "deb-systemd-invoke try-restart" in postinst, "a running service is not restarted on upgrade"
        assert "deb-systemd-invoke stop" in (control / "prerm").read_text()
        assert "deb-systemd-helper purge" in postrm and f"rm -rf /var/lib/{package}" in postrm
        for script in ("postinst", "prerm", "postrm"):
            assert subprocess.run(["sh", "-n", control / script]).returncode == 0, f"{package} {script}: not valid sh"
