#!/usr/bin/env python3
"""Runs the store's schema and queries on a current ClickHouse, embedded by chDB.

The store tests run against the ClickHouse server on the machine (Debian's 18.16);
production runs 24.x-26.x. This check executes every statement the store sends, as
dumped with sample values by `cargo test -p portolan-store --test store_chdb_dump`,
on the ClickHouse that the `chdb-core` package embeds:

    python3 -m venv .venv && .venv/bin/pip install chdb-core
    cargo test -p portolan-store --test store_chdb_dump
    cargo test -p portolan-rules --test chdb_dump
    cargo nextest run -p portolan-e2e -E 'test(grafana_provisioning)'
    .venv/bin/python tools/chdb/check.py [target/chdb]

The compiled default rule pack (`rules.sql`, from the second command) and the Grafana
queries of deploy/grafana with their macros and variables expanded (`grafana.sql`, from
the third) run after each schema's statements, on the tables they created; each is
skipped with a note when missing.

Both schema flavors are checked, each in its own database: the modern one (what a
current server gets) and the legacy one (what a database created on an old server
keeps after the server is upgraded). Exits non-zero on the first failing statement,
printing it and the server's error.
"""

import pathlib
import sys

try:
    from chdb import session
except ImportError:  # pragma: no cover - depends on the environment
    sys.exit("tools/chdb/check.py: `chdb` is not installed: pip install chdb-core")


def statements(path):
    """(name, sql) pairs of a dump: `-- name` line, the SQL, a line holding only `;`."""
    name, lines, out = None, [], []
    for line in path.read_text().splitlines():
        if line == ";":
            out.append((name or "?", "\n".join(lines).strip()))
            name, lines = None, []
        elif line.startswith("-- ") and not lines:
            name = line[3:]
        elif line.strip() or lines:
            lines.append(line)
    return out


def check(sess, database, files):
    sess.query(f"DROP DATABASE IF EXISTS {database}")
    sess.query(f"CREATE DATABASE {database}")
    sess.query(f"USE {database}")
    count = 0
    for path in files:
        for name, sql in statements(path):
            try:
                sess.query(sql, "CSV")
            except Exception as error:  # chdb raises its own ChdbError
                print(f"FAILED {path.name}: {name}\n{sql}\n\n{error}", file=sys.stderr)
                return None
            count += 1
    return count


def main():
    root = pathlib.Path(__file__).resolve().parents[2]
    dump = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else root / "target" / "chdb"
    flavors = {
        "modern": [dump / "schema.sql", dump / "queries.sql"],
        "legacy": [dump / "schema_legacy.sql", dump / "queries_legacy.sql"],
    }
    missing = [str(p) for files in flavors.values() for p in files if not p.exists()]
    extras = [
        ("rules.sql", "rules", "cargo test -p portolan-rules --test chdb_dump"),
        (
            "grafana.sql",
            "Grafana queries",
            "cargo nextest run -p portolan-e2e -E 'test(grafana_provisioning)'",
        ),
    ]
    for name, what, command in extras:
        extra = dump / name
        if extra.exists():
            for files in flavors.values():
                files.append(extra)
        else:
            print(f"chdb: {extra} missing, {what} not checked (run `{command}`)")
    if missing:
        sys.exit(
            "tools/chdb/check.py: missing "
            + ", ".join(missing)
            + " (run `cargo test -p portolan-store --test store_chdb_dump` first)"
        )
    sess = session.Session()
    try:
        version = str(sess.query("SELECT version()", "CSV")).strip().strip('"')
        failed = False
        for flavor, files in flavors.items():
            count = check(sess, f"portolan_check_{flavor}", files)
            if count is None:
                failed = True
                print(f"chdb (ClickHouse {version}): {flavor} schema: FAILED")
            else:
                print(f"chdb (ClickHouse {version}): {flavor} schema: {count} statements ok")
    finally:
        sess.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
