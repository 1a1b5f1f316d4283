"""Published text names no machine's folders: docs and benchmark records use repo-relative paths or `<home>`.

A path such as `/root/.cache/...` or `/work/main/...` tells a reader nothing they can use and goes stale
the moment the files move; the records under bench/results/ are read by people on other machines.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Home directories and this project's machine folders; /tmp scratch folders in commands are fine (any machine has /tmp).
MACHINE_PATH = re.compile(r"(?<![\w.~<>-])/(?:root|home/[\w.-]+|Users/[\w.-]+|work)/[\w.-]")


def _published() -> list[Path]:
    files = [REPO / "README.md", REPO / "BENCHMARKS.md", *sorted((REPO / "docs").glob("*.md"))]
    files += [p for p in sorted((REPO / "bench" / "results").rglob("*")) if p.suffix in {".md", ".json", ".csv", ".txt"}]
    return [p for p in files if p.is_file()]


def test_docs_and_benchmark_records_name_no_machine_paths():
    found = []
    for path in _published():
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
            if match := MACHINE_PATH.search(line):
                found.append(f"{path.relative_to(REPO)}:{number}: {match.group(0)}")
    assert not found, "machine paths (use repo-relative paths or <home>):\n" + "\n".join(found[:20])
