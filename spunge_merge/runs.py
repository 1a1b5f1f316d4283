"""Run directories: what one unlearning run is on disk, and the per-subset fan-out with resume.

A method turns (base model, forget subset, settings) into a run directory holding its result and a
`spunge.json`. `run_subsets` calls it once per subset of a split directory, always from the same base
model, skipping runs that are already complete, and writes `DIR/manifest.json` listing the runs;
`list_runs` reads that listing back for the merge and the evaluations. It sits below both `unlearn/`
and `merge/` so that neither has to import the other to agree on what a run directory is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spunge_merge import __version__
from spunge_merge.data.loading import SPLIT_MANIFEST, Subset
from spunge_merge.errors import SpungeError
from spunge_merge.fsutil import atomic_output_dir, is_nonempty_dir, read_json, write_json
from spunge_merge.provenance import is_complete, read_provenance

RUNS_MANIFEST = "manifest.json"


@dataclass(frozen=True)
class RunOutcome:
    name: str
    path: Path
    skipped: bool  # True when an identical completed run was found


def execute_run(out: Path, fingerprint: str, work: Callable[[Path], None], *, force: bool = False,
                name: str | None = None) -> RunOutcome:
    """Run `work(tmp_dir)` unless `out` already holds a run with this fingerprint.

    `work` must write `spunge.json` (with this fingerprint) into the directory it is given;
    the directory is renamed to `out` only when `work` returns.
    """
    out = Path(out)
    if is_complete(out, fingerprint) and not force:
        return RunOutcome(name=name or out.name, path=out, skipped=True)
    if is_nonempty_dir(out) and not force:
        previous = read_provenance(out)
        what = "a run with different settings or data" if previous else "files that are not a spunge run"
        raise SpungeError(f"{out} holds {what}; pass --force to replace it, or choose another --out")
    with atomic_output_dir(out, force=True) as tmp:
        work(tmp)
        if not is_complete(tmp, fingerprint):
            raise RuntimeError(f"method wrote no spunge.json with the expected fingerprint into {tmp}")
    return RunOutcome(name=name or out.name, path=out, skipped=False)


def run_subsets(
    subsets: list[Subset],
    out: Path,
    *,
    method: str,
    run_one: Callable[[Subset, Path], RunOutcome],
    split_source: Path | None,
    force: bool = False,
    extra: dict[str, Any] | None = None,
) -> list[RunOutcome]:
    """`out/manifest.json` listing the runs, then one run per subset into `out/<name>/`.

    `run_one(subset, run_dir)` does (or skips) one run, normally through `execute_run`.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SpungeError(f"output path {out} exists and is not a directory")
    if is_nonempty_dir(out) and not (out / RUNS_MANIFEST).is_file() and not force:
        raise SpungeError(f"output directory {out} is not empty and is not a spunge unlearn output; pass --force")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpungeError(f"cannot create output directory {out}: {exc.strerror or exc}") from exc
    # The manifest goes first: an interrupted fan-out is then recognisable as ours and resumes,
    # each finished run being skipped by its fingerprint and unfinished ones redone.
    split_manifest = None
    if split_source is not None and (Path(split_source) / SPLIT_MANIFEST).is_file():
        split_manifest = read_json(Path(split_source) / SPLIT_MANIFEST)
    write_json(out / RUNS_MANIFEST, {
        "kind": "unlearn-runs",
        "method": method,
        "spunge_version": __version__,
        "attribute": split_manifest.get("column") if split_manifest else None,
        "split": {"path": str(Path(split_source).resolve()), "filters": split_manifest.get("filters")} if split_manifest else None,
        "runs": [{"name": s.name, "value": s.value, "rows": len(s.texts), "path": s.name} for s in subsets],
        **(extra or {}),
    })
    outcomes = [run_one(subset, out / subset.name) for subset in subsets]
    return outcomes


def list_runs(path: Path) -> list[Path]:
    """The run directories under an unlearn output (its manifest), or `[path]` for a single run."""
    path = Path(path)
    manifest = path / RUNS_MANIFEST
    if manifest.is_file() and read_json(manifest).get("kind") == "unlearn-runs":
        runs = [path / entry["path"] for entry in read_json(manifest)["runs"]]
        unfinished = [run.name for run in runs if read_provenance(run) is None]
        if unfinished:
            raise SpungeError(f"{path}: run(s) {', '.join(unfinished)} not finished (interrupted?); "
                              "rerun the same `spunge unlearn` command to complete them")
        return runs
    return [path]
