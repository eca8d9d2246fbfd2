#!/usr/bin/env bash
# The release artifacts, from static binaries already built (`just dist` builds them):
#
#   <target>/artifacts/portolan-<version>-<triple>.tar.gz   binaries, LICENSE, README.md, CHANGELOG.md,
#                                                      config/ (deploy/config), systemd/ (deploy/systemd),
#                                                      rules/default.yaml (the default rule pack)
#   <target>/artifacts/portolan-agent_<version>-1_<arch>.deb
#   <target>/artifacts/portolan-collector_<version>-1_<arch>.deb   (with the `portolan` CLI)
#   <target>/artifacts/sha256sums.txt                        over every file above
#
# for each TRIPLE given (x86_64-unknown-linux-musl, aarch64-unknown-linux-musl), from
# <target>/<triple>/dist/. The archives are reproducible: sorted, owned by root, dated
# SOURCE_DATE_EPOCH (default: the last commit's date).
#
#   deploy/dist/build.sh x86_64-unknown-linux-musl [aarch64-unknown-linux-musl]
set -euo pipefail

[ $# -gt 0 ] || { echo "usage: $0 TRIPLE... (e.g. x86_64-unknown-linux-musl)" >&2; exit 64; }
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
target=${CARGO_TARGET_DIR:-target}
case "$target" in /*) ;; *) target="$repo/$target" ;; esac
# Not <target>/dist: cargo keeps the dist profile's build scripts and proc macros there.
out="$target/artifacts"
binaries=(portolan portolan-agent portolan-collector)
version=$(cargo metadata --no-deps --format-version 1 \
    | python3 -c 'import json, sys; print({p["name"]: p["version"] for p in json.load(sys.stdin)["packages"]}["portolan-agent"])')
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}

command -v cargo-deb >/dev/null || cargo install cargo-deb --locked

rm -rf "$out"
mkdir -p "$out"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

for triple in "$@"; do
    built="$target/$triple/dist"
    for bin in "${binaries[@]}"; do
        [ -x "$built/$bin" ] || { echo "$built/$bin is missing: build it first (just dist)" >&2; exit 1; }
    done

    # The tarball: one directory named like the archive, as node_exporter's.
    name="portolan-$version-$triple"
    dir="$stage/$name"
    mkdir -p "$dir/config" "$dir/systemd" "$dir/rules"
    for bin in "${binaries[@]}"; do install -m 0755 "$built/$bin" "$dir/"; done
    install -m 0644 LICENSE README.md CHANGELOG.md "$dir/"
    install -m 0644 deploy/config/portolan-agent.toml deploy/config/portolan-collector.toml "$dir/config/"
    install -m 0644 deploy/systemd/portolan-agent.service deploy/systemd/portolan-collector.service "$dir/systemd/"
    install -m 0644 deploy/rules/default.yaml "$dir/rules/"
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$SOURCE_DATE_EPOCH" \
        --format=gnu -C "$stage" -cf - "$name" | gzip -n -9 >"$out/$name.tar.gz"

    # The packages' units: deploy/systemd's, with the binary where a package puts it.
    mkdir -p "$built/deb"
    for unit in portolan-agent portolan-collector; do
        sed "s#^ExecStart=/usr/local/bin/$unit #ExecStart=/usr/bin/$unit #" "deploy/systemd/$unit.service" >"$built/deb/$unit.service"
        grep -q "^ExecStart=/usr/bin/$unit " "$built/deb/$unit.service" \
            || { echo "deploy/systemd/$unit.service: no ExecStart=/usr/local/bin/$unit line to rewrite for the package" >&2; exit 1; }
    done
    # The unit is an asset (written above, in the target directory); cargo-deb adds the
    # systemd snippets for it to the maintainer scripts all the same, after warning that
    # the maintainer-scripts directory holds no unit: that one warning is dropped.
    for package in portolan-agent portolan-collector; do
        cargo deb --package "$package" --target "$triple" --profile dist --no-build --no-strip \
            --output "$out/" 2> >(grep -v '^warning: No usable systemd units found' >&2)
    done
done

(cd "$out" && sha256sum -- *.tar.gz *.deb >sha256sums.txt)
echo "release artifacts in $out:"
(cd "$out" && ls -l -- *.tar.gz *.deb sha256sums.txt)
