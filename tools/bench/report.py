#!/usr/bin/env python3
"""The benchmark report: one table from every part's JSON.

Reads every `<target>/bench/*.json` except `report.json` (the common format: a `table`
of rows with measure, figure, reference, ratio, target and met), prints one aligned
table under a header naming the machine and the command, and writes the same as
`<target>/bench/report.json`.

    python3 tools/bench/report.py [--target DIR] [--command CMD] [PART=STATUS ...]

`<target>` is `--target`, else `$CARGO_TARGET_DIR`, else `target`. Each PART=STATUS
(`scan=ok`, `fanin=failed`, `latency=absent`) says how `just bench` ran a part: a
failed part, or one that ran but wrote no JSON, gets a row saying so. Standard library
only: it runs with the system's python3.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

COLUMNS = ("measure", "figure", "reference", "ratio", "target", "met")
ORDER = ("scan", "steady", "ingest", "fanin", "rules", "latency", "netns")


def read_text(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def machine() -> dict:
    """CPU model, cores, memory and kernel, from /proc."""
    cpuinfo = read_text("/proc/cpuinfo")
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in cpuinfo.splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    cores = sum(1 for line in cpuinfo.splitlines() if line.startswith("processor"))
    mem_kib = next(
        (
            int(line.split()[1])
            for line in read_text("/proc/meminfo").splitlines()
            if line.startswith("MemTotal:")
        ),
        0,
    )
    kernel = read_text("/proc/sys/kernel/osrelease").strip() or platform.release()
    return {
        "cpu": model,
        "cores": cores or os.cpu_count() or 0,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": kernel,
    }


def format_ratio(ratio) -> str:
    if ratio is None:
        return "-"
    if isinstance(ratio, (int, float)):
        if ratio != ratio:  # NaN
            return "-"
        if ratio < 0.01:
            return f"{ratio:.4f}x"
        return f"{ratio:.2f}x" if ratio < 100 else f"{ratio:.0f}x"
    return str(ratio)


def format_met(met) -> str:
    if met is None:
        return "-"
    return "yes" if met else "NO"


def cell(row: dict, column: str) -> str:
    value = row.get(column)
    if column == "ratio":
        return format_ratio(value)
    if column == "met":
        return format_met(value)
    return "-" if value is None else str(value)


def load_parts(bench_dir: Path) -> tuple[dict[str, dict], list[str]]:
    """Every part's JSON by name; and problems reading them."""
    parts, problems = {}, []
    for path in sorted(bench_dir.glob("*.json")):
        if path.name == "report.json":
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            problems.append(f"cannot read `{path}`: {e}")
            continue
        if not isinstance(data, dict) or not isinstance(data.get("table"), list):
            problems.append(f"`{path}` has no `table` (see the common format)")
            continue
        parts[data.get("bench") or path.stem] = data
    return parts, problems


def rows_of(parts: dict[str, dict], statuses: dict[str, str]) -> list[dict]:
    names = sorted(
        set(parts) | set(statuses),
        key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n),
    )
    rows = []
    for name in names:
        status = statuses.get(name, "ok")
        if status == "absent":
            continue
        if status != "ok":
            rows.append(
                {
                    "bench": name,
                    "measure": f"{name}: {status}",
                    "figure": f"see {name}.log",
                    "reference": None,
                    "ratio": None,
                    "target": None,
                    "met": False,
                }
            )
            continue
        if name not in parts:
            rows.append(
                {
                    "bench": name,
                    "measure": f"{name}: ran but wrote no {name}.json",
                    "figure": None,
                    "reference": None,
                    "ratio": None,
                    "target": None,
                    "met": False,
                }
            )
            continue
        for row in parts[name]["table"]:
            if isinstance(row, dict):
                rows.append({"bench": name, **{c: row.get(c) for c in COLUMNS}})
    return rows


def render(rows: list[dict]) -> list[str]:
    header = [c for c in COLUMNS]
    body = [[cell(r, c) for c in COLUMNS] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    right = {"ratio", "met"}

    def line(cells):
        return "  ".join(
            c.rjust(w) if name in right else c.ljust(w)
            for c, w, name in zip(cells, widths, COLUMNS)
        ).rstrip()

    out = [line(header), line(["-" * w for w in widths])]
    out.extend(line(r) for r in body)
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", help="the cargo target directory")
    parser.add_argument("--command", default="just bench", help="the command that ran")
    parser.add_argument("parts", nargs="*", help="PART=STATUS (ok, failed, absent)")
    args = parser.parse_args(argv)
    target = Path(args.target or os.environ.get("CARGO_TARGET_DIR") or "target")
    bench_dir = target / "bench"
    statuses = {}
    for part in args.parts:
        name, sep, status = part.partition("=")
        if not sep:
            parser.error(f"`{part}` is not PART=STATUS")
        statuses[name] = status
    parts, problems = load_parts(bench_dir) if bench_dir.is_dir() else ({}, [])
    rows = rows_of(parts, statuses)
    host = machine()
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print()
    print(
        f"Portolan benchmarks — {host['cpu']}, {host['cores']} cores, "
        f"{host['memory_gib']} GiB, Linux {host['kernel']}; {when}"
    )
    print(f"command: {args.command}")
    print()
    for text in render(rows):
        print(text)
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    report = {
        "bench": "report",
        "machine": host,
        "command": args.command,
        "generated": when,
        "parts": {
            name: statuses.get(name, "ok") for name in sorted(set(parts) | set(statuses))
        },
        "table": rows,
    }
    bench_dir.mkdir(parents=True, exist_ok=True)
    out = bench_dir / "report.json"
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print()
    print(f"wrote {out}")
    missed = [r for r in rows if r.get("met") is False]
    if missed:
        print(f"{len(missed)} row(s) missed their target or failed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
