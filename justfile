# Portolan: the commands people run. Recipe names are the CI steps.
#
#   just demo    build, start a local ClickHouse, the collector and an agent, show this host's exposure
#   just test    everything the project checks

set shell := ["bash", "-euo", "pipefail", "-c"]

venv := justfile_directory() / ".venv"

# List the recipes.
default:
    @just --list

# Build, start a managed local ClickHouse, a collector and an agent for this host, and print this host's listeners as read back from ClickHouse.
demo *ARGS: setup build
    ./target/debug/portolan demo {{ARGS}}

# Everything the project checks: format, lints, unit, store, end-to-end, image, release-package and SQL-on-modern-ClickHouse tests.
test: setup setup-test lint deny build image test-helm test-ansible test-dist test-prometheus
    cargo nextest run --workspace --no-fail-fast
    {{venv}}/bin/python tools/chdb/check.py

# The Helm chart, offline: every case in deploy/helm/tests/values rendered, compared with its golden render (PORTOLAN_BLESS=1 re-blesses), validated against Kubernetes' schemas, its TOML checked by the real binaries.
test-helm: setup-python build
    {{venv}}/bin/python -m pytest -p no:cacheprovider deploy/helm/tests

# The Ansible roles and the systemd units: ansible-lint (production profile); the example playbook run for real into a temporary root, whose installed agent reaches its installed collector (managed ClickHouse); idempotence and --check; the agent's two capabilities under setpriv; systemd-analyze security scores under a threshold (PORTOLAN_BLESS=1 rewrites deploy/systemd from the roles).
test-ansible: setup setup-python build (dist "x86_64")
    #!/usr/bin/env bash
    set -euo pipefail
    # systemd-analyze scores the units (container images often lack systemd); setpriv runs the agent with the unit's capabilities.
    missing=()
    command -v systemd-analyze >/dev/null || missing+=(systemd)
    command -v setpriv >/dev/null || missing+=(util-linux)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing ${missing[*]} from the distribution's packages"
        sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    "{{venv}}/bin/python" -m pytest -p no:cacheprovider deploy/ansible/tests

# The release artifacts of ARCHES (`just test-dist "x86_64 aarch64"` for both) for real: checksums, tarball contents, each binary run (under qemu for aarch64); the .deb packages installed with dpkg on this machine (root), the installed collector and agent started with their units' ExecStart, user and capabilities until the installed `portolan hosts` lists the agent's host, then removed and purged with nothing left but what Debian policy keeps.
test-dist ARCHES="x86_64": setup setup-python (dist ARCHES)
    #!/usr/bin/env bash
    set -euo pipefail
    # setpriv runs the services as their units would; systemd-analyze verifies the installed units;
    # qemu runs the binaries of other architectures.
    missing=()
    case " {{ARCHES}} " in *" aarch64 "*) command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static) ;; esac
    command -v setpriv >/dev/null || missing+=(util-linux)
    command -v systemd-analyze >/dev/null || missing+=(systemd)
    command -v adduser >/dev/null || missing+=(adduser)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing ${missing[*]} from the distribution's packages"
        sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    "{{venv}}/bin/python" -m pytest -p no:cacheprovider deploy/dist/tests

# The Prometheus alerting rules for Portolan's own metrics, unit-tested with promtool (Debian's `prometheus` package).
test-prometheus:
    #!/usr/bin/env bash
    set -euo pipefail
    if ! command -v promtool >/dev/null; then
        echo "installing prometheus (for promtool) from the distribution's packages"
        sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    fi
    promtool check rules deploy/prometheus/portolan-alerts.yaml
    promtool test rules deploy/prometheus/portolan-alerts.test.yaml

# Build every binary (the end-to-end tests run the real binaries).
build:
    cargo build --workspace --bins

# The three binaries as static musl executables (profile dist: fat LTO, stripped), what the image and the release tarballs ship: target/x86_64-unknown-linux-musl/dist/.
static:
    #!/usr/bin/env bash
    set -euo pipefail
    rustup target list --installed | grep -qx x86_64-unknown-linux-musl || rustup target add x86_64-unknown-linux-musl
    # ring's C and assembly need a musl C compiler.
    if ! command -v musl-gcc >/dev/null; then
        echo "installing musl-tools (musl-gcc, for ring) from the distribution's packages"
        sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq musl-tools >/dev/null
    fi
    cargo build --profile dist --target x86_64-unknown-linux-musl -p portolan-agent -p portolan-collector -p portolan-cli --bins

# The container image (the Helm chart's default, image.repository:appVersion): the static binaries on an empty base with an OCI label set, built by buildah from deploy/image/Containerfile without a Docker engine. Prints its reference and size.
image: static
    #!/usr/bin/env bash
    set -euo pipefail
    missing=()
    command -v buildah >/dev/null || missing+=(buildah)
    command -v podman >/dev/null || missing+=(podman)
    command -v runc >/dev/null || missing+=(runc)
    [ -f /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing ${missing[*]} from the distribution's packages"
        sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    ref="$(tools/image/reference)"
    context="${CARGO_TARGET_DIR:-target}/image/context"
    rm -rf "$context"
    mkdir -p "$context/empty"
    cp deploy/image/Containerfile deploy/image/passwd deploy/image/group /etc/ssl/certs/ca-certificates.crt "$context/"
    cp "${CARGO_TARGET_DIR:-target}"/x86_64-unknown-linux-musl/dist/{portolan,portolan-agent,portolan-collector} "$context/"
    # The commit's time, not the clock's: the same commit builds the same image.
    created="$(git log -1 --format=%ct 2>/dev/null || date +%s)"
    buildah build --quiet --layers=false --timestamp "$created" \
        --build-arg VERSION="${ref##*:}" \
        --build-arg REVISION="$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
        --build-arg CREATED="$(date -u -d "@$created" +%Y-%m-%dT%H:%M:%SZ)" \
        -f "$context/Containerfile" -t "$ref" "$context" >/dev/null
    echo "$ref: $(podman image inspect --format '{{{{.Size}}' "$ref" | awk '{ printf "%.1f MiB", $1 / 1048576 }')"

# The release artifacts in target/artifacts/ (deploy/dist/README.md): for each architecture of ARCHES, a static tarball (the three binaries, LICENSE, README, CHANGELOG, deploy/config, deploy/systemd, the default rules) and the portolan-agent and portolan-collector packages (cargo-deb), with sha256sums.txt over all. aarch64 is cross-built with cargo-zigbuild, Zig (PyPI's ziglang) as its C compiler and linker.
dist ARCHES="x86_64 aarch64": static
    #!/usr/bin/env bash
    set -euo pipefail
    triples=()
    for arch in {{ARCHES}}; do
        case "$arch" in
            x86_64) ;;  # built by `just static`, the image's binaries
            aarch64)
                triple=aarch64-unknown-linux-musl
                rustup target list --installed | grep -qx "$triple" || rustup target add "$triple"
                command -v cargo-zigbuild >/dev/null || cargo install cargo-zigbuild --locked
                [ -x "{{venv}}/bin/python" ] || python3 -m venv "{{venv}}"
                "{{venv}}/bin/python" -c 'import ziglang' 2>/dev/null || "{{venv}}/bin/pip" install -q -r tools/dist-requirements.txt
                # cargo-zigbuild runs `python3 -m ziglang` when there is no `zig`: the virtualenv's.
                PATH="{{venv}}/bin:$PATH" cargo zigbuild --profile dist --target "$triple" \
                    -p portolan-agent -p portolan-collector -p portolan-cli --bins
                ;;
            *) echo "unknown architecture \`$arch\` in ARCHES: x86_64 or aarch64" >&2; exit 64 ;;
        esac
        triples+=("$arch-unknown-linux-musl")
    done
    deploy/dist/build.sh "${triples[@]}"

# Licences from the allow list, one crypto backend, crates only from crates.io (deny.toml); offline.
deny: setup-test
    cargo deny check licenses bans sources

# The RustSec advisories of every dependency (needs the advisory database, fetched from GitHub: not on offline machines).
audit: setup-test
    cargo deny check advisories

# cargo fmt and clippy, warnings are errors.
lint:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets -- -D warnings

# A bounded soak: 200 real agents (SOAK_AGENTS) streaming to one collector for 3 minutes (SOAK_MINUTES) while listeners churn; reports the memory growth of the collector and the agents, fails on a lost or doubled event.
soak: setup build
    ulimit -n "$(ulimit -Hn)" && cargo run -p portolan-e2e --example soak

# Every benchmark, then one table of ratios (each against a reference measured in the same run) with the machine and the command; the same as JSON in <target>/bench/report.json. A part that fails is reported as failed and the suite goes on; fan-in, ingest and latency run once their examples exist.
bench: setup
    #!/usr/bin/env bash
    set -uo pipefail
    out="${CARGO_TARGET_DIR:-target}/bench"
    mkdir -p "$out"
    rm -f "$out"/*.json "$out"/*.log
    parts=()
    part() {
        local name=$1; shift
        echo "=== bench part $name: $*"
        if "$@" 2>&1 | tee "$out/$name.log"; then parts+=("$name=ok"); else parts+=("$name=failed"); fi
    }
    # The end-to-end parts run the release binaries.
    if ! cargo build --release --workspace --bins; then
        echo "the release build failed: the end-to-end parts are skipped" >&2
        e2e=no
    else
        e2e=yes
    fi
    part scan "{{just_executable()}}" bench-scan
    if [ "$e2e" = yes ]; then part steady "{{just_executable()}}" bench-steady; else parts+=("steady=failed"); fi
    part netns "{{just_executable()}}" bench-netns
    part rules "{{just_executable()}}" bench-rules
    for example in fanin ingest latency; do
        if [ ! -f "tests/bench/$example.rs" ] || ! grep -q "^name = \"$example\"" tests/Cargo.toml; then
            parts+=("$example=absent")
        elif [ "$e2e" = yes ]; then
            part "$example" bash -c "ulimit -n \"\$(ulimit -Hn)\"; cargo run --release -p portolan-e2e --example $example"
        else
            parts+=("$example=failed")
        fi
    done
    python3 tools/bench/report.py --command "just bench" "${parts[@]}"

# The scan benchmark: 1,000, 20,000 and 100,000 loopback sockets held by worker processes (PORTOLAN_BENCH_SOCKETS=1000,20000,100000), agent scan time as a ratio to `ss -tanp` and `ss -tan` in the same run.
bench-scan: setup
    cargo bench -p portolan-agent --bench scan

# Steady state: a real agent (10 s scans) streaming over mTLS to a collector and ClickHouse at 1,000 and 20,000 sockets with 1% churn per interval; its CPU against `ss -tanp` once per interval, its memory, and its bytes on the wire idle and with churn against one full snapshot (root: the agent runs in a network namespace).
bench-steady: setup
    cargo build --release -p portolan-agent -p portolan-collector --bins
    ulimit -n "$(ulimit -Hn)" && cargo run --release -p portolan-e2e --example steady

# The namespace benchmark: one scan of every network namespace at 1, 10 and 100 namespaces, as a ratio to `ss -tuanp` run inside each of them in the same run (root).
bench-netns: setup
    cargo bench -p portolan-agent --bench netns

# The rules benchmark: the default pack over 10,000 synthetic hosts × 50 sockets in a managed ClickHouse, each rule's time as a ratio to one pass over the current sockets.
bench-rules: setup
    cargo bench -p portolan-rules --bench evaluate

# Fuzz each target with libFuzzer for FUZZ_SECONDS (120) seconds, one after another (nightly and cargo-fuzz installed when missing, built in fuzz/target); inputs that add coverage are merged into the kept corpus fuzz/corpus/<target>/; prints each target's seconds and executions; fails on a crash, saying where its input is and how to make it a regression test.
fuzz:
    #!/usr/bin/env bash
    set -euo pipefail
    seconds="${FUZZ_SECONDS:-120}"
    rustup run nightly rustc --version >/dev/null 2>&1 || rustup toolchain install nightly --profile minimal
    command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
    cd "{{justfile_directory()}}/fuzz"
    # The nightly, instrumented build stays apart from the stable one, whatever CARGO_TARGET_DIR says.
    target_dir="${FUZZ_TARGET_DIR:-$PWD/target}"
    fuzz() { cargo +nightly fuzz "$1" --target-dir "$target_dir" "${@:2}"; }
    # Files and KiB (of content) in a directory.
    size() { find "$1" -type f -printf '%s\n' | awk '{ n++; s += $1 } END { printf "%d files, %.1f KiB", n, s / 1024 }'; }
    report=()
    crashed=()
    for t in $(cargo +nightly fuzz list); do
        run="$target_dir/runs/$t"
        kept="corpus/$t"
        rm -rf "$run"
        mkdir -p "$run/new" "$kept" "artifacts/$t"
        before=$(size "$kept")
        echo "=== fuzz $t: build"
        fuzz build "$t"
        echo "=== fuzz $t: ${seconds} s from $before in $kept (log: $run/fuzz.log)"
        touch "$run/started"
        start=$(date +%s)
        status=0
        # New inputs go to the first directory ($run/new); the kept corpus is read, not written.
        fuzz run "$t" "$run/new" "$kept" -- -max_total_time="$seconds" -timeout="${FUZZ_INPUT_TIMEOUT:-10}" \
            -print_final_stats=1 >"$run/fuzz.log" 2>&1 || status=$?
        ran=$(( $(date +%s) - start ))
        execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$run/fuzz.log" | tail -n 1)
        # Only the new inputs that add coverage to the kept corpus join it (libFuzzer -merge=1).
        fuzz run "$t" "$kept" "$run/new" -- -merge=1 >"$run/merge.log" 2>&1 \
            || { echo "merging $run/new into $kept failed: see $run/merge.log" >&2; exit 1; }
        after=$(size "$kept")
        line="$t: ${ran} s, ${execs:-unknown} executions, corpus $before -> $after"
        if [ "$status" -ne 0 ]; then
            input=$(find "artifacts/$t" -type f -newer "$run/started" | head -n 1)
            line="$line, CRASHED (exit $status): input fuzz/${input:-artifacts/$t/?}"
            crashed+=("$t|fuzz/${input:-artifacts/$t/}|$run/fuzz.log")
        fi
        echo "$line"
        report+=("$line")
    done
    echo "=== just fuzz, FUZZ_SECONDS=$seconds"
    printf '%s\n' "${report[@]}"
    kib=$(find corpus -type f -printf '%s\n' | awk '{ s += $1 } END { printf "%d", s / 1024 }')
    [ "$kib" -le 2048 ] || echo "the kept corpus holds $kib KiB, over 2 MiB: minimise it with (cd fuzz && cargo +nightly fuzz cmin <target>)" >&2
    if [ ${#crashed[@]} -gt 0 ]; then
        for c in "${crashed[@]}"; do
            IFS='|' read -r t input log <<<"$c"
            echo "$t crashed on $input (libFuzzer's report: $log). Replay it with" >&2
            echo "    (cd fuzz && cargo +nightly fuzz run $t ${input#fuzz/})" >&2
            echo "then copy it to fuzz/regressions/$t/<what-it-breaks>: cargo test -p portolan-core fuzz:: runs it on stable and fails until the code is fixed." >&2
        done
        exit 1
    fi

# Install what the demo and the tests need from Debian's packages, when missing.
setup:
    #!/usr/bin/env bash
    set -euo pipefail
    missing=()
    command -v clickhouse-server >/dev/null || { [ -n "${PORTOLAN_CLICKHOUSE_URL:-}" ] || missing+=(clickhouse-server clickhouse-client); }
    command -v ss >/dev/null || missing+=(iproute2)
    command -v ip >/dev/null || missing+=(iproute2)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing ${missing[*]} from the distribution's packages"
        sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
    fi

# What only the tests need: ClickHouse, tinyproxy, cargo-nextest, cargo-deny, and Python tools in a project-local virtualenv.
setup-test: setup-python
    #!/usr/bin/env bash
    set -euo pipefail
    # The store and end-to-end tests always run a managed local ClickHouse.
    if ! command -v clickhouse-server >/dev/null; then
        sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq clickhouse-server clickhouse-client >/dev/null
    fi
    # A real HTTP proxy for the HTTPS_PROXY tests.
    if ! command -v tinyproxy >/dev/null; then
        sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq tinyproxy >/dev/null
    fi
    command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked
    command -v cargo-deny >/dev/null || cargo install cargo-deny --locked

# Python tools in a project-local virtualenv (chdb-core: a modern ClickHouse to check our SQL against).
setup-python:
    #!/usr/bin/env bash
    set -euo pipefail
    [ -x "{{venv}}/bin/python" ] || python3 -m venv "{{venv}}"
    "{{venv}}/bin/pip" install -q -r tools/requirements.txt

# Regenerate the checked-in gRPC code after editing proto/.
proto:
    PORTOLAN_BLESS=1 cargo test -p portolan-proto --test generated
