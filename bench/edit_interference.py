"""Why does a merge of per-subset edits forget less at the same utility? Each subset's edit, measured alone.

For a finished frontier cell (a run directory of `bench/frontiers.py`, e.g.
runs/frontiers/facts-smollm2-135m/smollm2-135m/rmu/capitals--city_countries), per seed:

- geometry of the edits (edit = the run's tensors − the base's, over every tensor a run changes): the norm
  of each forgotten domain's edit and of the un-split edit, the cosine between the two domains' edits, the
  share of entries where their signs disagree (where TIES' sign election drops one side), and the norm of
  the TIES merge (density 1, `normalize: true`, computed here from the two edits) against their sum;
- behaviour of each domain's edit alone, at each λ given: forget accuracy on its own domain, on the other
  forgotten domain, and keep avg, next to the un-split baseline and the TIES merge at the same λ (read from
  the cell's grid when evaluated there).

If each edit mostly forgets its own domain while its damage to the kept domains adds up in the merge, the merge
pays two edits' collateral damage for forgetting that each domain gets from one edit only; the un-split edit
pays once. That is what the read-out's "TIES forgets less at matched utility" would then come from.

    OMP_NUM_THREADS=1 python bench/edit_interference.py runs/frontiers/facts-smollm2-135m/smollm2-135m/rmu/capitals--city_countries \\
        --method rmu --lambdas 1 --out bench/results/edit_interference/rmu
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from grid_points import evaluate_model, label  # noqa: E402 - bench/ is on sys.path when this runs as a script


def edits(run_path: Path, base, views_dir: Path) -> dict[str, torch.Tensor]:
    """{tensor name: run − base} in float32 for every tensor the run changes (any run kind, through its merge view)."""
    from safetensors import safe_open

    from spunge_merge.merge.inputs import expand_runs
    from spunge_merge.merge.views import CHANGED_FILE, materialize_view
    from spunge_merge.tensorfiles import weight_files

    (run,) = expand_runs([run_path])
    view = materialize_view(run, base, views_dir)
    files = weight_files(base.path)
    found, originals = {}, {}  # each base shard opened once, and closed with the stack
    with contextlib.ExitStack() as stack:
        changed = stack.enter_context(safe_open(str(view / CHANGED_FILE), framework="pt"))
        for name in changed.keys():  # noqa: SIM118 - safe_open has no iterator
            if files[name] not in originals:
                originals[files[name]] = stack.enter_context(safe_open(str(files[name]), framework="pt"))
            found[name] = changed.get_tensor(name).float() - originals[files[name]].get_tensor(name).float()
    return found


def geometry(a: dict, b: dict, union: dict) -> dict[str, float]:
    """Norms, cosine, sign disagreement and TIES(density 1, normalize) of two edits, over all their tensors."""
    import torch
    from mergekit.merge_methods.generalized_task_arithmetic import get_mask

    names = sorted(a)
    if set(b) != set(a) or set(union) != set(a):
        raise SystemExit(f"error: the runs change different tensors ({len(a)}, {len(b)}, {len(union)}): not one method's runs")
    ea, eb, eu = (torch.cat([edit[n].flatten() for n in names]) for edit in (a, b, union))
    both = (ea != 0) & (eb != 0)
    disagree = both & (torch.sign(ea) != torch.sign(eb))
    # TIES at density 1 as mergekit computes it: its sign election (the summed edit's sign per entry), then the
    # mean of the entries that agree with it
    stacked = torch.stack([ea, eb])
    agree = get_mask(stacked, method="sum")
    ties = (stacked * agree).sum(dim=0) / agree.sum(dim=0).clamp(min=1)
    total = ea + eb
    return {"norm_a": float(ea.norm()), "norm_b": float(eb.norm()), "norm_union": float(eu.norm()),
            "cosine_a_b": float(torch.nn.functional.cosine_similarity(ea, eb, dim=0)),
            "cosine_sum_union": float(torch.nn.functional.cosine_similarity(total, eu, dim=0)),
            "sign_disagree": float(disagree.sum() / both.sum().clamp(min=1)),
            "norm_ties_over_sum": float(ties.norm() / total.norm()),
            "norm_ties_over_union": float(ties.norm() / eu.norm()),
            "norm_sum_over_union": float(total.norm() / eu.norm())}


def accuracies(eval_dir: Path, forget: list[str]) -> dict[str, float]:
    """Accuracy (%) on each forgotten domain and the keep avg over the others."""
    domains = json.loads((eval_dir / "knowledge.json").read_text(encoding="utf-8"))["domains"]
    kept = [d for d in domains if d not in forget]
    return {**{d: 100 * domains[d]["accuracy"] for d in forget},
            "keep": 100 * sum(domains[d]["accuracy"] for d in kept) / len(kept)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("cell", type=Path, help="a frontier cell's run directory (its name is the two forgotten domains, a--b)")
    parser.add_argument("--method", required=True, help="the cell's unlearning method (its registry name)")
    parser.add_argument("--model", default="smollm2-135m", help="the cell's base model (alias, path or Hub id)")
    parser.add_argument("--seeds", default="0,1,2", help="seeds to measure, comma-separated")
    parser.add_argument("--lambdas", default="1", help="λ at which each domain's edit is evaluated alone, comma-separated")
    parser.add_argument("--out", type=Path, required=True, help="folder for summary.json and summary.md (the evaluations "
                        "of each edit alone go to CELL/alone/, skipped when there)")
    args = parser.parse_args()

    from spunge_merge.config import load_yaml
    from spunge_merge.fsutil import atomic_write_text, write_json
    from spunge_merge.models import resolve_model
    from spunge_merge.unlearn import registry

    base, method = resolve_model(args.model), registry.get_method(args.method)
    forget = args.cell.name.split("--")
    lambdas = [float(x) for x in args.lambdas.split(",")]
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        seed_dir = args.cell / "seeds" / str(seed)
        raw = load_yaml(seed_dir / "pipeline.yaml")
        views = args.cell.parents[3] / ".views" / args.model
        per_domain = {d: edits(seed_dir / "unlearn" / d, base, views) for d in forget}
        shape = geometry(per_domain[forget[0]], per_domain[forget[1]], edits(seed_dir / "baseline" / "run", base, views))
        del per_domain
        for lam in lambdas:
            row = {"seed": seed, "lambda": lam, "geometry": shape, "alone": {}}
            for domain in forget:
                work = args.cell / "alone" / str(seed) / label(domain, lam)  # beside the cell's grid, not in the results
                if not (work / "eval" / "knowledge.json").is_file():
                    method.to_model(base, seed_dir / "unlearn" / domain, lam, work / "model", work / "scratch")
                    evaluate_model(work / "model", work / "eval", raw["eval"], REPO)
                    shutil.rmtree(work / "model")
                    shutil.rmtree(work / "scratch", ignore_errors=True)
                row["alone"][domain] = accuracies(work / "eval", forget)
            for arm in ("baseline", "spunge-ties", "spunge-ties-sum"):
                graded = args.cell / "grid" / str(seed) / "eval" / label(arm, lam)
                if (graded / "knowledge.json").is_file():
                    row[arm] = accuracies(graded, forget)
            row["base"] = accuracies(args.cell / "grid" / "base", forget)
            rows.append(row)
            print(json.dumps(row), flush=True)
    cell = args.cell.resolve()
    summary = {"cell": str(cell.relative_to(REPO)) if cell.is_relative_to(REPO) else str(cell), "method": args.method,
               "model": args.model, "forget": forget, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "summary.json", summary)
    atomic_write_text(args.out / "summary.md", render(summary))
    print(render(summary))


def render(summary: dict) -> str:
    a, b = summary["forget"]
    lines = [f"# Each domain's edit alone: {summary['method']} on {summary['model']}, forgetting {a} + {b}", "",
             "Accuracy (%) on the held-out facts: each forgotten domain, and the keep avg over the kept domains.", "",
             f"| seed | λ | model | {a} | {b} | keep avg |", "|---:|---:|---|---:|---:|---:|"]
    for row in summary["rows"]:
        arms = [("base", row["base"])] + [(f"edit of {d} alone", row["alone"][d]) for d in (a, b)]
        arms += [(arm, row[arm]) for arm in ("spunge-ties", "spunge-ties-sum", "baseline") if arm in row]
        for name, acc in arms:
            lines.append(f"| {row['seed']} | {row['lambda']:g} | {name} | {acc[a]:.1f} | {acc[b]:.1f} | {acc['keep']:.1f} |")
    lines += ["", "Geometry of the edits (every tensor a run changes, flattened together):", "",
              "| seed | ‖A‖ | ‖B‖ | ‖un-split‖ | cos(A, B) | sign disagreement | cos(A + B, un-split) | ‖TIES‖/‖A + B‖ "
              "| ‖TIES‖/‖un-split‖ | ‖A + B‖/‖un-split‖ |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    seen = set()
    for row in summary["rows"]:
        if row["seed"] in seen:
            continue
        seen.add(row["seed"])
        g = row["geometry"]
        lines.append(f"| {row['seed']} | {g['norm_a']:.3g} | {g['norm_b']:.3g} | {g['norm_union']:.3g} | {g['cosine_a_b']:.3f} | "
                     f"{100 * g['sign_disagree']:.1f} % | {g['cosine_sum_union']:.3f} | {g['norm_ties_over_sum']:.3f} | "
                     f"{g['norm_ties_over_union']:.3f} | {g['norm_sum_over_union']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
