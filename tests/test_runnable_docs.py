"""Docs that cannot go stale: every shell block of README.md and docs/ marked ```` ```bash runnable ```` is run.

Each block runs with bash (`set -euo pipefail`) in a fresh folder, with `spunge` on PATH (this checkout),
`MODEL` set to the tiny test model, `FACTS` to the demo's facts and `DEMO` to the demo pipeline: a block
reads them as `${MODEL:-smollm2-135m}` and so works unchanged for a reader at the repository root. A
block passes when every command in it exits 0 (a block checks its own output with `grep -q`, `test`).
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^```bash runnable[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _blocks() -> list[tuple[str, str]]:
    found = []
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for number, match in enumerate(MARKER.finditer(page.read_text(encoding="utf-8")), start=1):
            found.append((f"{page.relative_to(REPO)}#{number}", match.group(1)))
    return found


def test_the_docs_have_runnable_blocks():
    names = [name for name, _ in _blocks()]
    assert "docs/push.md#1" in names and "docs/pipelines.md#1" in names


@pytest.mark.parametrize("name, script", _blocks(), ids=[name for name, _ in _blocks()])
def test_runnable_block(name, script, tiny_model, tmp_path):
    shims = tmp_path / "bin"
    shims.mkdir()
    spunge = shims / "spunge"
    spunge.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m spunge_merge "$@"\n', encoding="utf-8")
    spunge.chmod(spunge.stat().st_mode | stat.S_IXUSR)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PATH": f"{shims}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONPATH": str(REPO),
           "OMP_NUM_THREADS": "1", "MODEL": str(tiny_model), "FACTS": str(REPO / "spunge_merge" / "demo" / "facts.jsonl"),
           "DEMO": str(REPO / "spunge_merge" / "demo" / "pipeline.yaml"), "HF_HUB_OFFLINE": "1", "COLUMNS": "120"}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    output = f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
    assert done.returncode == 0, f"{name} failed (exit {done.returncode}):\n{script}\n{output}"
