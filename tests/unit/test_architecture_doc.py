"""docs/internal/architecture.md stays a map of the tree: its table names every `mtcp_*` and
`mosx_*` call of the public namespace, and every source file it cites exists."""
from __future__ import annotations

import re
from pathlib import Path

import mosxdp

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "internal" / "architecture.md").read_text()


def test_every_public_call_has_a_row_in_the_table():
    table = DOC[DOC.index("## Where each `mtcp_*` call is implemented"):]
    table = table[:table.index("\n## ", 1)]
    calls = sorted(n for n in dir(mosxdp) if n.startswith(("mtcp_", "mosx_")))
    assert calls, "the public namespace lost its calls"
    missing = [n for n in calls if f"`{n}`" not in table]
    assert not missing, f"calls without a row in architecture.md: {missing}"


def test_every_file_the_page_cites_exists():
    cited = set(re.findall(r"`([A-Za-z0-9_./]+\.(?:py|pyx|pxd|c|h))`", DOC))
    assert len(cited) > 50
    roots = [ROOT, ROOT / "mosxdp", ROOT / "bpf"]
    tree = {p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*")
            if p.suffix in (".py", ".pyx", ".pxd", ".c", ".h") and ".venv" not in p.parts}
    missing = sorted(
        c for c in cited
        if not any((r / c).exists() for r in roots)
        and not any(t.endswith("/" + c) for t in tree))
    assert not missing, f"architecture.md cites files that do not exist: {missing}"
