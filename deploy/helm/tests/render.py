"""Renders the chart offline and prints its manifests as one JSON array, for tests in other
languages (tests/deploy/chart.rs plays them with podman).

    python deploy/helm/tests/render.py VALUES.json

VALUES.json holds the values (JSON, the same tree as a values file). Rendering uses Helm's
Go SDK as the chart tests do (conftest.render), so no `helm` binary is needed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import render  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: render.py VALUES.json", file=sys.stderr)
        return 64
    try:
        values = json.loads(Path(argv[1]).read_text())
    except (OSError, json.JSONDecodeError) as e:
        print(f"cannot read the values {argv[1]}: {e}", file=sys.stderr)
        return 64
    json.dump(render(values).manifests, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
