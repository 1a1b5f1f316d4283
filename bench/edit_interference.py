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

`--merge NAME` (a merge of the plan's `merges:` table, `recipes/frontiers.yaml` unless `--plan` names another) also
passes each edit alone through that merge, a merge of its one run as `grid_points.build_model` builds the
`baseline-<merge>` arm: each domain's edit and the un-split edit, evaluated at each λ beside the plain edit (own
forget, other forget, keep avg). For a merge that reads statistics (`anchored_ls`) the geometry gets what the
one-run anchored solve does to each edit, from the Gram files the merge itself computes or finds again: the norm
of the anchored edit over the plain one's, their cosine, and per changed linear weight the edit's effect on the
forget inputs against the retain inputs, ‖X_f Δᵀ‖/‖X_r Δᵀ‖ (per token with `gram_normalize`), before and after, and
the share of its effect on the held-out prompts the evaluation asks (its own forgotten domains', the kept domains')
that the solve keeps. Shared inputs shrink both together (the ratio stays); inputs apart let the solve keep the
forget effect alone. `--facts FILE` points the evaluations at the facts file where the cell's pipeline files name
a copy that is gone (checked against the one the cell's grid was evaluated on).

    OMP_NUM_THREADS=1 python bench/edit_interference.py runs/frontiers/facts-smollm2-135m/smollm2-135m/rmu/capitals--city_countries \\
        --method rmu --lambdas 1 --out bench/results/edit_interference/rmu
    OMP_NUM_THREADS=1 python bench/edit_interference.py runs/robustness/facts-smollm2-135m/smollm2-135m/rmu/capitals--city_countries \\
        --method rmu --lambdas 1 --merge anchored_ls --facts bench/knowledge/facts-smollm2-135m.jsonl \\
        --out bench/results/robustness/edits-anchored
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from frontiers_plan import PLAN, load_plan  # noqa: E402 - bench/ is on sys.path when this runs as a script
from grid_points import evaluate_model, label  # noqa: E402

UNSPLIT = "un-split"  # the un-split run's edit, beside each forgotten domain's


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


def input_effect(delta: torch.Tensor, gram: torch.Tensor) -> float:
    """‖X Δᵀ‖_F, the edit Δ (out × in: a linear layer computes x Wᵀ) acting on the inputs X (tokens × in), from
    G = XᵀX alone (in × in, as `gram.py` stores it): ‖X Δᵀ‖_F² = tr(Δ G Δᵀ), so the inputs need not be kept."""
    d = delta.double()
    return float(((d @ gram.double()) * d).sum().clamp(min=0).sqrt())


def _over(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def anchoring(plain: dict[str, torch.Tensor], forget: dict[str, torch.Tensor], retain: dict[str, torch.Tensor] | None, *,
              rho: float, ridge: float, probes: dict[str, dict[str, torch.Tensor]] | None = None) -> dict:
    """What `anchored_ls` does to one edit merged alone: per linear weight with statistics Δ' = `anchored_edit([Δ], [G_f],
    G_r)`, as its kernel computes it (any other tensor keeps Δ, the mean of one edit); then ‖Δ'‖/‖Δ‖ and cos(Δ, Δ') over
    every tensor, and per weight the edit's effect on the forget and the retain inputs (`input_effect`) before and after.

    `forget` and `retain` are {weight name: G} as the merge reads them (per token with `gram_normalize`), so
    `ratio_*` = ‖X_f Δᵀ‖/‖X_r Δᵀ‖ compares the edit's effect per forget token with its effect per retain token.
    `probes` ({label: {weight name: G}}, other inputs: the evaluated prompts) add `<label>_kept` = ‖X Δ'ᵀ‖/‖X Δᵀ‖."""
    import torch

    from spunge_merge.merge.methods import anchored_edit

    names = sorted(plain)
    anchored, layers = {}, {}
    for name in names:
        delta, gram = plain[name], forget.get(name) if plain[name].ndim == 2 else None
        if gram is None:
            anchored[name] = delta
            continue
        kept = (retain or {}).get(name)
        if rho > 0 and kept is None:
            raise SystemExit(f"error: no retain statistics for {name} (rho {rho} needs them)")
        anchored[name] = anchored_edit([delta], [gram], kept, rho=rho, ridge=ridge).float()
        if kept is not None:
            effect = {f"{inputs}_{edit}": input_effect(d, g) for edit, d in (("plain", delta), ("anchored", anchored[name]))
                      for inputs, g in (("forget", gram), ("retain", kept))}
            layers[name] = {**effect, "ratio_plain": _over(effect["forget_plain"], effect["retain_plain"]),
                            "ratio_anchored": _over(effect["forget_anchored"], effect["retain_anchored"]),
                            "forget_kept": _over(effect["forget_anchored"], effect["forget_plain"]),
                            "retain_kept": _over(effect["retain_anchored"], effect["retain_plain"]),
                            **{f"{label}_kept": _over(input_effect(anchored[name], grams[name]), input_effect(delta, grams[name]))
                               for label, grams in (probes or {}).items() if name in grams}}
    before, after = (torch.cat([edit[n].double().flatten() for n in names]) for edit in (plain, anchored))
    return {"norm_ratio": _over(float(after.norm()), float(before.norm())),
            "cosine": float(torch.nn.functional.cosine_similarity(before, after, dim=0)), "layers": layers}


def merge_parameters(entry: dict) -> dict:
    """A merge's parameters with its method's declared defaults filled in (from mergekit's registry, where spunge's
    methods declare them once)."""
    from mergekit import merge_methods

    from spunge_merge.merge.methods import register_methods

    register_methods()
    declared = {p.name: p.default for p in merge_methods.get(entry["method"]).spec.parameters
                if isinstance(p.default, bool | int | float | str)}
    return {**declared, **(entry.get("parameters") or {})}


def run_statistics(run_path: Path, base, views_dir: Path, entry: dict) -> tuple[dict, dict | None]:
    """({weight: G_f}, {weight: G_r} or None) of a merge of one run alone: the files `merge_runs` computes (or finds
    again) for it, read as its kernel reads them."""
    from safetensors import safe_open

    from spunge_merge.merge.gram import statistics_for_runs
    from spunge_merge.merge.inputs import expand_runs
    from spunge_merge.merge.methods import read_gram
    from spunge_merge.merge.settings import StatisticsSettings
    from spunge_merge.merge.views import model_for_run

    parameters = merge_parameters(entry)
    (run,) = expand_runs([run_path])
    (forget,), retain = statistics_for_runs([run], [model_for_run(run, base, views_dir)], base,
                                           StatisticsSettings(**(entry.get("statistics") or {})), need_retain=parameters["rho"] > 0)

    def read(path: Path) -> dict:
        with safe_open(str(path), framework="pt") as handle:
            names = list(handle.keys())
        return {name: read_gram(str(path), name, normalize=parameters["gram_normalize"]) for name in names}

    return read(forget), read(retain) if retain is not None else None


def heldout_statistics(base, eval_section: dict, forget: list[str], names: list[str]) -> dict[str, dict]:
    """{group: {weight: G per token}} of the prompts the knowledge evaluation asks (its facts file and `where`): each
    forgotten domain's, both forgotten domains' (`un-split`) and the kept domains' (`kept`); computed once, then found
    again beside the merge's statistics."""
    from spunge_merge.data.loading import load_table
    from spunge_merge.data.split import apply_filters
    from spunge_merge.data.where import parse_condition
    from spunge_merge.merge.gram import statistics_file
    from spunge_merge.merge.methods import read_gram
    from spunge_merge.merge.settings import StatisticsSettings
    from spunge_merge.merge.views import model_identity

    knowledge = eval_section["knowledge"]
    table = apply_filters(load_table(knowledge["facts"]), [parse_condition(w) for w in knowledge.get("where", [])], knowledge["facts"])
    rows = list(zip(table[knowledge.get("domain_column", "domain")], table[knowledge.get("prompt_column", "prompt")], strict=True))
    groups = {**{d: [d] for d in forget}, UNSPLIT: forget, "kept": sorted({d for d, _ in rows} - set(forget))}
    found = {}
    for group, domains in groups.items():
        path = statistics_file(base, [p for d, p in rows if d in domains], set(names), label=f"heldout-{group}",
                               settings=StatisticsSettings(rows=len(rows)), model_key=model_identity(base.path))
        found[group] = {name: read_gram(str(path), name, normalize=True) for name in names}
    return found


def accuracies(eval_dir: Path, forget: list[str]) -> dict[str, float]:
    """Accuracy (%) on each forgotten domain and the keep avg over the others."""
    domains = json.loads((eval_dir / "knowledge.json").read_text(encoding="utf-8"))["domains"]
    kept = [d for d in domains if d not in forget]
    return {**{d: 100 * domains[d]["accuracy"] for d in forget},
            "keep": 100 * sum(domains[d]["accuracy"] for d in kept) / len(kept)}


def edit_record(acc: dict, edit: str, forget: list[str]) -> dict:
    """Own forget, other forget and keep avg (%) of one edit's model: a domain's edit owns its domain, the other forgotten
    domain is its other; the un-split edit owns both (their mean) and has no other."""
    if edit in forget:
        return {"own": acc[edit], "other": acc[next(d for d in forget if d != edit)], "keep": acc["keep"]}
    return {"own": sum(acc[d] for d in forget) / len(forget), "other": None, "keep": acc["keep"]}


def merged_alone(base, run: Path, lam: float, views: Path, entry: dict, out: Path, _scratch: Path) -> None:
    """One run merged alone by the merge `entry` at λ (as `grid_points.build_model` builds `baseline-<merge>`)."""
    from spunge_merge.merge import merge_runs

    merge_runs(base, [run], out, lam=lam, views_dir=views, progress=False, force=True, **entry)


def evaluated(work: Path, build: Callable[[Path, Path], None], eval_section: dict, stamp: dict | None = None) -> Path:
    """`work/eval`: one model built by `build(work/model, work/scratch)`, evaluated, then deleted; skipped when evaluated.
    `stamp` (a merge's settings) is kept in `work/merge.json`, and an evaluation made with other settings is refused."""
    from spunge_merge.fsutil import read_json, write_json

    if stamp is not None:
        if (work / "merge.json").is_file() and read_json(work / "merge.json") != stamp:
            raise SystemExit(f"error: {work} holds a model merged with other settings ({work / 'merge.json'}); delete it to rebuild")
        write_json(work / "merge.json", stamp)
    if not ((work / "eval" / "knowledge.json").is_file() and (work / "eval" / "perplexity.json").is_file()):
        if not (work / "model" / "config.json").is_file():
            build(work / "model", work / "scratch")
        evaluate_model(work / "model", work / "eval", eval_section, REPO)
    shutil.rmtree(work / "model", ignore_errors=True)
    shutil.rmtree(work / "scratch", ignore_errors=True)
    return work / "eval"


def with_facts(eval_section: dict, facts: Path | None) -> dict:
    """The pipeline's `eval:` with its facts file at `facts` (knowledge, and perplexity where it reads the same file):
    a cell made in another checkout names that checkout's copy."""
    if facts is None:
        return eval_section
    recorded, given = eval_section["knowledge"]["facts"], str(facts.resolve())
    perplexity = dict(eval_section["perplexity"])
    if perplexity["data"]["path"] == recorded:
        perplexity["data"] = {**perplexity["data"], "path": given}
    return {**eval_section, "knowledge": {**eval_section["knowledge"], "facts": given}, "perplexity": perplexity}


def measure_seed(cell: Path, seed: int, lambdas: list[float], forget: list[str], *, base, method, views: Path,
                 merge: tuple[str, dict] | None, facts: Path | None = None) -> list[dict]:
    """One row per λ of one seed: the geometry, each domain's edit alone, the grid's arms at λ, and with `merge` every
    edit (the un-split one too) through the merge beside the plain edit."""
    from spunge_merge.config import load_yaml
    from spunge_merge.merge.methods import takes_statistics

    seed_dir, alone = cell / "seeds" / str(seed), cell / "alone" / str(seed)  # beside the cell's grid, not in the results
    eval_section = with_facts(load_yaml(seed_dir / "pipeline.yaml")["eval"], facts)
    runs = {**{d: seed_dir / "unlearn" / d for d in forget}, UNSPLIT: seed_dir / "baseline" / "run"}
    plain = {edit: edits(run, base, views) for edit, run in runs.items()}
    shape = geometry(plain[forget[0]], plain[forget[1]], plain[UNSPLIT])
    if merge is not None and takes_statistics(merge[1]["method"]):
        parameters, shape["anchoring"] = merge_parameters(merge[1]), {}
        for edit, run in runs.items():
            grams, retain = run_statistics(run, base, views, merge[1])
            heldout = heldout_statistics(base, eval_section, forget, sorted(grams))  # the evaluated prompts: own and kept
            shape["anchoring"][edit] = anchoring(plain[edit], grams, retain, rho=parameters["rho"], ridge=parameters["ridge"],
                                                 probes={"heldout_own": heldout[edit], "heldout_kept": heldout["kept"]})
    del plain
    arms = ("baseline", "spunge-ties", "spunge-ties-sum", *((f"spunge-{merge[0]}", f"baseline-{merge[0]}") if merge else ()))
    rows = []
    for lam in lambdas:
        row = {"seed": seed, "lambda": lam, "geometry": shape, "alone": {}, "base": accuracies(cell / "grid" / "base", forget)}
        for domain in forget:
            row["alone"][domain] = accuracies(evaluated(alone / label(domain, lam), partial(method.to_model, base, runs[domain], lam),
                                                        eval_section), forget)
        for arm in arms:
            graded = cell / "grid" / str(seed) / "eval" / label(arm, lam)
            if (graded / "knowledge.json").is_file():
                row[arm] = accuracies(graded, forget)
        if merge is not None:
            name, entry = merge
            if "baseline" not in row:  # the plain un-split edit at λ, where the grid did not evaluate it
                row["baseline"] = accuracies(evaluated(alone / label("baseline", lam), partial(method.to_model, base, runs[UNSPLIT], lam),
                                                       eval_section), forget)
            row["through"] = {edit: accuracies(evaluated(alone / label(f"{edit}-{name}", lam), partial(
                merged_alone, base, run, lam, views, entry), eval_section, stamp=entry), forget) for edit, run in runs.items()}
            row["edits"] = {edit: {"plain": edit_record(row["alone"][edit] if edit in forget else row["baseline"], edit, forget),
                                   "through": edit_record(row["through"][edit], edit, forget)} for edit in runs}
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("cell", type=Path, help="a frontier cell's run directory (its name is the two forgotten domains, a--b)")
    parser.add_argument("--method", required=True, help="the cell's unlearning method (its registry name)")
    parser.add_argument("--model", default="smollm2-135m", help="the cell's base model (alias, path or Hub id)")
    parser.add_argument("--seeds", default="0,1,2", help="seeds to measure, comma-separated")
    parser.add_argument("--lambdas", default="1", help="λ at which each domain's edit is evaluated alone, comma-separated")
    parser.add_argument("--merge", help="also pass each edit alone (and the un-split edit) through this merge of the plan's "
                        "`merges:` table, e.g. anchored_ls")
    parser.add_argument("--plan", type=Path, default=PLAN, help="the plan file whose `merges:` table --merge names "
                        "(default recipes/frontiers.yaml)")
    parser.add_argument("--facts", type=Path, help="the cell's facts file, where its pipeline files name a copy that is gone")
    parser.add_argument("--out", type=Path, required=True, help="folder for summary.json and summary.md (the evaluations "
                        "of each edit alone go to CELL/alone/, skipped when there)")
    args = parser.parse_args()

    from spunge_merge.fsutil import atomic_write_text, read_json, sha256_file, write_json
    from spunge_merge.models import resolve_model
    from spunge_merge.unlearn import registry

    base, method = resolve_model(args.model), registry.get_method(args.method)
    merge = None
    if args.merge:
        table = load_plan(args.plan)["merges"]
        if args.merge not in table:
            raise SystemExit(f"error: --merge {args.merge}: not a merge of {args.plan} (merges: {', '.join(table)})")
        merge = (args.merge, dict(table[args.merge]))
    forget = args.cell.name.split("--")
    graded = read_json(args.cell / "grid" / "base" / "knowledge.json").get("facts", {}).get("source_sha256")
    if args.facts is not None and graded and sha256_file(args.facts) != graded:
        raise SystemExit(f"error: --facts {args.facts} is not the facts file the cell's grid was evaluated on (sha256 {graded})")
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for row in measure_seed(args.cell, seed, [float(x) for x in args.lambdas.split(",")], forget, base=base, method=method,
                                views=args.cell.parents[3] / ".views" / args.model, merge=merge, facts=args.facts):
            rows.append(row)
            print(json.dumps(row), flush=True)
    cell = args.cell.absolute()  # not resolved: a cell reached through a link (runs/robustness) is named by the repo's path
    summary = {"cell": str(cell.relative_to(REPO)) if cell.is_relative_to(REPO) else str(cell), "method": args.method,
               "model": args.model, "forget": forget, "rows": rows}
    if merge is not None:
        summary["merge"] = {"name": merge[0], "settings": merge[1]}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "summary.json", summary)
    atomic_write_text(args.out / "summary.md", render(summary))
    print(render(summary))


def render(summary: dict) -> str:
    a, b = summary["forget"]
    merge = (summary.get("merge") or {}).get("name")
    lines = [f"# Each domain's edit alone: {summary['method']} on {summary['model']}, forgetting {a} + {b}", "",
             "Accuracy (%) on the held-out facts: each forgotten domain, and the keep avg over the kept domains.", "",
             f"| seed | λ | model | {a} | {b} | keep avg |", "|---:|---:|---|---:|---:|---:|"]
    for row in summary["rows"]:
        arms = [("base", row["base"])] + [(f"edit of {d} alone", row["alone"][d]) for d in (a, b)]
        arms += [(f"{'un-split edit' if d == UNSPLIT else f'edit of {d}'} through {merge}", row["through"][d])
                 for d in (a, b, UNSPLIT) if d in row.get("through", {})]
        grid = ("spunge-ties", "spunge-ties-sum", *((f"spunge-{merge}", f"baseline-{merge}") if merge else ()), "baseline")
        arms += [(arm, row[arm]) for arm in grid if arm in row]
        for name, acc in arms:
            lines.append(f"| {row['seed']} | {row['lambda']:g} | {name} | {acc[a]:.1f} | {acc[b]:.1f} | {acc['keep']:.1f} |")
    lines += ["", "Geometry of the edits (every tensor a run changes, flattened together):", "",
              "| seed | ‖A‖ | ‖B‖ | ‖un-split‖ | cos(A, B) | sign disagreement | cos(A + B, un-split) | ‖TIES‖/‖A + B‖ "
              "| ‖TIES‖/‖un-split‖ | ‖A + B‖/‖un-split‖ |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for g in _per_seed(summary).values():
        lines.append(f"| {g['seed']} | {g['norm_a']:.3g} | {g['norm_b']:.3g} | {g['norm_union']:.3g} | {g['cosine_a_b']:.3f} | "
                     f"{100 * g['sign_disagree']:.1f} % | {g['cosine_sum_union']:.3f} | {g['norm_ties_over_sum']:.3f} | "
                     f"{g['norm_ties_over_union']:.3f} | {g['norm_sum_over_union']:.3f} |")
    if merge:
        lines += _edit_lines(summary, merge)
    if any("anchoring" in g for g in _per_seed(summary).values()):
        lines += _anchoring_lines(summary, merge)
    return "\n".join(lines) + "\n"


def _per_seed(summary: dict) -> dict[int, dict]:
    """{seed: its geometry (with the seed)}: every λ row of a seed carries the same one."""
    return {row["seed"]: {"seed": row["seed"], **row["geometry"]} for row in summary["rows"]}


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _cell(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _edit_lines(summary: dict, merge: str) -> list[str]:
    """Each edit plain and through the merge: own forget, other forget, keep avg, per seed and their mean."""
    edits = [*summary["forget"], UNSPLIT]
    lines = ["", f"Each edit alone, plain and through `{merge}` (a merge of its one run): accuracy (%) left on its own "
             "domain(s) (the un-split edit: the mean of both), on the other forgotten domain, and the keep avg.", "",
             "| λ | edit | seed | own plain | own through | other plain | other through | keep plain | keep through |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for lam in sorted({row["lambda"] for row in summary["rows"]}):
        rows = [row for row in summary["rows"] if row["lambda"] == lam and "edits" in row]
        for edit in edits:
            records = [(str(row["seed"]), row["edits"][edit]) for row in rows]
            mean = {kind: {key: _mean([r[kind][key] for _, r in records]) for key in ("own", "other", "keep")}
                    for kind in ("plain", "through")}
            for seed, r in [*records, ("mean", mean)]:
                lines.append(f"| {lam:g} | {edit} | {seed} | " + " | ".join(
                    _cell(r[kind][key]) for key in ("own", "other", "keep") for kind in ("plain", "through")) + " |")
    return lines


def _short(name: str) -> str:
    return name.removeprefix("model.").removesuffix(".weight")


def _anchoring_lines(summary: dict, merge: str | None) -> list[str]:
    """What the one-run anchored solve does to each edit: norm, cosine, and per linear weight the forget/retain effect."""
    geometry = _per_seed(summary)
    edits = [*summary["forget"], UNSPLIT]
    lines = ["", f"What `{merge}` does to each edit merged alone (Δ plain, Δ' anchored; X_f the edit's own forget inputs, "
             "X_r the retain inputs, Gram matrices as the merge reads them: per token): ‖Δ'‖/‖Δ‖ and cos(Δ, Δ') over "
             "every tensor the run changes; per changed linear weight ‖X_f Δᵀ‖/‖X_r Δᵀ‖ before and after, and the share "
             "of the edit's effect on each kind of input that the solve keeps (‖X Δ'ᵀ‖/‖X Δᵀ‖): the forget and retain "
             "inputs it solves on, and the held-out prompts the evaluation asks, of the edit's own forgotten domain(s) "
             "and of the kept domains.", "",
             "| edit | seed | weight | ‖Δ'‖/‖Δ‖ | cos(Δ, Δ') | ‖X_fΔ‖/‖X_rΔ‖ plain | anchored | forget effect kept "
             "| retain effect kept | held-out own kept | held-out kept domains kept |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    keys = ("ratio_plain", "ratio_anchored", "forget_kept", "retain_kept", "heldout_own_kept", "heldout_kept_kept")
    for edit in edits:
        found = [(seed, g["anchoring"][edit]) for seed, g in geometry.items() if "anchoring" in g]
        for seed, record in found:
            for name, layer in sorted(record["layers"].items()):
                lines.append(f"| {edit} | {seed} | {_short(name)} | {_cell(record['norm_ratio'], 3)} | {record['cosine']:.3f} | "
                             + " | ".join(_cell(layer.get(k), 3) for k in keys) + " |")
        layers = [layer for _, record in found for layer in record["layers"].values()]
        lines.append(f"| {edit} | mean | all | {_cell(_mean([r['norm_ratio'] for _, r in found]), 3)} | "
                     f"{_cell(_mean([r['cosine'] for _, r in found]), 3)} | "
                     + " | ".join(_cell(_mean([layer.get(k) for layer in layers]), 3) for k in keys) + " |")
    return lines


if __name__ == "__main__":
    main()
