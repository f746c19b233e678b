"""The floors of the house: the layering contract in pyproject.toml (import-linter) holds,
and no module imports itself back through others (no import cycles at all)."""

import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]


def test_layering_contract_is_kept():
    r = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-cache"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]


def test_no_import_cycles():
    g = grimp.build_graph("monitor", "detectors", "alerts", cache_dir=None)
    cycles = []
    for m in sorted(g.modules):
        for imported in g.find_modules_directly_imported_by(m):
            back = g.find_shortest_chain(importer=imported, imported=m)
            if back:
                cycles.append(" -> ".join((m, *back)))
    assert not cycles, "\n".join(cycles)
