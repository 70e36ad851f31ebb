"""``benchmarks/results/README.md`` indexes every entry of ``benchmarks/results/``, and only those."""

from __future__ import annotations

import re
from pathlib import Path

from benchmarks.harness import RESULTS_DIR

INDEX = RESULTS_DIR / "README.md"
#: Table rows: | [`name`](link) | question | command |
ROW = re.compile(r"^\| \[`(?P<name>[^`]+)`\]\((?P<link>[^)]+)\) \| (?P<question>[^|]+) \| (?P<command>.+) \|$")


def _local(name: str) -> bool:
    """Entries that are never committed: hidden files, scratch space, ``--quick`` smoke runs (see .gitignore)."""
    return name.startswith(".") or name == "_scratch" or name.endswith("-quick") or name == "__pycache__"


def _rows() -> list[re.Match]:
    return [m for line in INDEX.read_text().splitlines() if (m := ROW.match(line))]


def test_every_result_is_indexed_once():
    names = [m["name"].rstrip("/") for m in _rows()]
    on_disk = sorted(p.name for p in RESULTS_DIR.iterdir() if p.name != INDEX.name and not _local(p.name))
    assert len(names) == len(set(names)), "an entry is listed twice"
    assert sorted(set(on_disk) - set(names)) == [], "add a line to benchmarks/results/README.md"
    assert sorted(set(names) - set(on_disk)) == [], "the index lists entries that are not in benchmarks/results"


def test_every_index_line_links_an_existing_file_and_has_a_question_and_command():
    rows = _rows()
    assert len(rows) >= 20
    for m in rows:
        target = RESULTS_DIR / m["link"]
        assert target.is_file(), f"{m['name']}: broken link {m['link']}"
        assert target.resolve().is_relative_to((RESULTS_DIR / m["name"]).resolve()), m["name"]
        assert m["question"].strip() and m["command"].strip(), m["name"]
        if m["name"].endswith("/"):
            assert (RESULTS_DIR / m["name"]).is_dir(), m["name"]
