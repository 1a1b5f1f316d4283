"""Why is one arm easier to undo than the other? Each forgotten domain's edit alone, and the un-split edit, attacked.

The robustness read-out (`bench/frontiers.py --relearn`, `bench/frontiers_robustness.py`) attacks each arm at
its matched-utility point, where the merge's edit of the attacked domain is one of two edits merged (TIES with
`normalize: true` averages the agreeing entries) and scaled by the merge's λ. That mixes two explanations of a
merge that comes back faster: the merging (dilution, λ) or the per-subset training itself. This script separates
them on a finished frontier cell: per seed it rebuilds, at each λ given (default 1, the edits as trained),

- the attacked domain's edit alone (the split run of the pair's first domain, through its method's `to_model`),
- the un-split baseline,

attacks both with the same in-subset attack as the read-out (`frontiers_relearn.attacks`: k training facts of the
pair's first domain, preset lucki2024 unless given), and tabulates, beside the merge's and the baseline's attacks at
their matched points (read from `grid/<seed>/relearn/` when the hook ran there), each model's accuracy on the
attacked domain before and after the attack, its recovery, the other forgotten domain's, and the attack's
training loss at its first and last logged step (how far from the facts the edit put the model).

    OMP_NUM_THREADS=1 python bench/relearn_edits.py runs/robustness/facts-smollm2-135m/smollm2-135m/rmu/capitals--city_countries \\
        --method rmu --facts bench/knowledge/facts-smollm2-135m.jsonl --out bench/results/robustness/edits-rmu

Models are built in `CELL/alone/<seed>/models/` and deleted after their attack; the attacks' results go to
`CELL/alone/<seed>/relearn/<label>/<attack>/relearn.json` and are skipped on a rerun.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from frontiers_relearn import RELEARN_FILE, attacks  # noqa: E402 - bench/ is on sys.path when this runs as a script
from grid_points import label  # noqa: E402


def attack_record(result: dict, pair: list[str]) -> dict:
    """The figures of one attack's result: the attacked and the other forgotten domain before/after, recovery
    (None where nothing was forgotten), and the attack's training loss at its first and last logged step."""
    first, last = result["curve"][0]["domains"], result["curve"][-1]["domains"]
    losses = [point["loss"] for point in result["curve"] if point.get("loss") is not None]
    return {"steps": result["curve"][-1]["step"],
            **{f"{role}_{when}": 100 * points[domain]["accuracy"] for role, domain in zip(("in", "cross"), pair, strict=True)
               for when, points in (("before", first), ("after", last))},
            "in_recovery": result["domains"][pair[0]]["recovery"], "cross_recovery": result["domains"][pair[1]]["recovery"],
            "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None}


def attack_alone(cell: Path, seed: int, lam: float, pair: list[str], *, base, method, attack: str, spec: dict,
                 knowledge: dict) -> dict[str, dict]:
    """{label: result} for the attacked domain's edit alone and the baseline at λ, attacking what is missing (the
    baseline's attack is the hook's own where λ is one of its matched points: the same model, seed and attack)."""
    from spunge_merge.evaluate.relearn import evaluate_relearn
    from spunge_merge.fsutil import read_json

    seed_dir, work = cell / "seeds" / str(seed), cell / "alone" / str(seed)
    found = {}
    models = {label(f"edit-{pair[0]}", lam): seed_dir / "unlearn" / pair[0], label("baseline", lam): seed_dir / "baseline" / "run"}
    for name, run in models.items():
        out = work / "relearn" / name / attack
        matched = cell / "grid" / str(seed) / "relearn" / name / attack
        if not (out / RELEARN_FILE).is_file() and (matched / RELEARN_FILE).is_file():
            out = matched  # the hook attacked the same model (the baseline at this λ is a matched point): not again
        if not (out / RELEARN_FILE).is_file():
            model_dir = work / "models" / name
            if not (model_dir / "config.json").is_file():
                method.to_model(base, run, lam, model_dir, work / "scratch")
            evaluate_relearn(model_dir, out=out, base_result=str(cell / "grid" / "base"), measure_settings=knowledge,
                             device="cpu", seed=seed, **spec)
            shutil.rmtree(model_dir)
            shutil.rmtree(work / "scratch", ignore_errors=True)
        found[name] = read_json(out / RELEARN_FILE)
    for matched in sorted((cell / "grid" / str(seed) / "relearn").glob(f"*/{attack}/{RELEARN_FILE}")):
        found[f"{matched.parent.parent.name} (matched point)"] = read_json(matched)
    return found


def render(summary: dict) -> str:
    a, b = summary["pair"]
    lines = [f"# Each edit alone under relearning: {summary['method']} on {summary['model']}, forgetting {a} + {b}", "",
             f"Attack `{summary['attack']}` (preset {summary['preset']}) on {a}'s training facts. Accuracy (%) on the held-out "
             f"facts of {a} (attacked) and {b} (not attacked) before and after the attack; recovery = share of what was forgotten "
             "that came back; the attack's training loss (nats/token) at its first and last logged step.", "",
             f"| seed | model | {a} before | {a} after | recovery | {b} before | {b} after | loss first | loss last |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]

    def pct(value):
        return "–" if value is None else f"{100 * value:.0f} %"

    def nats(value):
        return "–" if value is None else f"{value:.2f}"

    for row in summary["rows"]:
        r = row["record"]
        lines.append(f"| {row['seed']} | {row['label']} | {r['in_before']:.1f} | {r['in_after']:.1f} | {pct(r['in_recovery'])} | "
                     f"{r['cross_before']:.1f} | {r['cross_after']:.1f} | {nats(r['loss_first'])} | {nats(r['loss_last'])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("cell", type=Path, help="a finished frontier cell's run directory (its name is the two forgotten domains, a--b)")
    parser.add_argument("--method", required=True, help="the cell's unlearning method (its registry name)")
    parser.add_argument("--facts", type=Path, required=True, help="the cell's facts file (the attack's training facts come from it)")
    parser.add_argument("--model", default="smollm2-135m", help="the cell's base model (alias, path or Hub id)")
    parser.add_argument("--seeds", default="0,1,2", help="seeds to attack, comma-separated")
    parser.add_argument("--lambdas", default="1", help="λ of the edits attacked, comma-separated (1: as trained)")
    parser.add_argument("--attack", default="in-subset-k10", help="one of frontiers_relearn.attacks' names")
    parser.add_argument("--preset", default="lucki2024", help="the attack's preset (lucki2024, che2025, deeb2024)")
    parser.add_argument("--out", type=Path, required=True, help="folder for summary.json and summary.md")
    args = parser.parse_args()

    from spunge_merge.config import load_yaml
    from spunge_merge.fsutil import atomic_write_text, write_json
    from spunge_merge.models import resolve_model
    from spunge_merge.unlearn import registry

    base, method = resolve_model(args.model), registry.get_method(args.method)
    pair = args.cell.name.split("--")
    spec = attacks(SimpleNamespace(facts=args.facts.resolve(), pair=tuple(pair)), args.preset)[args.attack]
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        knowledge = dict(load_yaml(args.cell / "seeds" / str(seed) / "pipeline.yaml")["eval"]["knowledge"])
        knowledge["facts"] = str(args.facts.resolve())
        for lam in [float(x) for x in args.lambdas.split(",")]:
            results = attack_alone(args.cell, seed, lam, pair, base=base, method=method, attack=args.attack, spec=spec,
                                   knowledge=knowledge)
            rows += [{"seed": seed, "label": name, "record": attack_record(result, pair)} for name, result in results.items()
                     if not any(r["seed"] == seed and r["label"] == name for r in rows)]
    summary = {"method": args.method, "model": args.model, "pair": pair, "attack": args.attack, "preset": args.preset, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "summary.json", summary)
    atomic_write_text(args.out / "summary.md", render(summary))
    print(render(summary))


if __name__ == "__main__":
    main()
