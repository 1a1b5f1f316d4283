"""The frontier benchmark's plan file (`recipes/frontiers.yaml`, or a plan of one's own over it): read, its paths
resolved, its per-method sweeps and merge lists checked, and the driver's command line (`--only` included) parsed.
`bench/frontiers.py` selects the cells and settings from it; split out of that driver so each file stays one concept."""

from __future__ import annotations

import argparse
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLAN = REPO / "recipes" / "frontiers.yaml"


def load_plan(path: Path = PLAN) -> dict:
    """The plan file over the shipped plan's defaults, each relative path resolved against the file that names it,
    checked for the keys the driver reads.

    A plan other than the shipped one needs only what differs from it (typically `models` with their facts
    files): every other key is the shipped plan's. Its `runs` and `results` default to `<stem>-runs` and
    `<stem>-results` beside it, so it never writes into the shipped benchmark's folders."""
    from pydantic import ValidationError

    from spunge_merge.config import format_validation_error, load_yaml
    from spunge_merge.errors import SpungeError
    from spunge_merge.evaluate.matched import FrontierReadout

    path = Path(path).resolve()
    given = load_yaml(path)
    if not isinstance(given, dict):
        raise SpungeError(f"{path}: expected a mapping (the frontier plan)")
    plan = _resolved(dict(given), path.parent)
    if path != PLAN.resolve():
        defaults = _resolved(dict(load_yaml(PLAN)), PLAN.parent)
        defaults.update(runs=path.parent / f"{path.stem}-runs", results=path.parent / f"{path.stem}-results")
        plan = {**defaults, **plan}
        if "method_lambdas" not in given:  # the shipped sweeps of the methods this plan runs
            plan["method_lambdas"] = {m: v for m, v in (defaults.get("method_lambdas") or {}).items() if m in plan["methods"]}
        if "method_merges" not in given:  # the shipped lists of the methods it runs, unless it names its own merges
            plan["method_merges"] = {} if "merges" in given else {
                m: v for m, v in (defaults.get("method_merges") or {}).items() if m in plan["methods"]}
    for key in ("task", "runs", "results", "models", "methods", "pairs", "seeds", "merges", "lambdas",
                "baseline_lambdas", "readout", "budget_hours", "estimates"):
        if key not in plan:
            raise SpungeError(f"{path}: missing key `{key}`")
    for name, merge in plan["merges"].items():
        if not isinstance(merge, dict) or "method" not in merge:
            raise SpungeError(f"{path}: merges.{name} needs a mapping with `method`")
    for task, entry in (plan.get("not_planned") or {}).items():
        missing = [k for k in ("run", "seed_pipeline", "model", "why") if k not in (entry or {})]
        if missing:
            raise SpungeError(f"{path}: not_planned.{task} needs {', '.join(f'`{k}`' for k in missing)}")
    try:
        plan["readout"] = FrontierReadout(**dict(plan["readout"] or {})).model_dump()
    except ValidationError as exc:
        raise SpungeError(format_validation_error(exc, str(path), prefix=("readout",))) from None
    plan["_dir"], plan["_file"] = path.parent, path
    return plan


def _resolved(plan: dict, here: Path) -> dict:
    """The plan's relative paths (runs, results, fallback_facts, each model's facts, templates) made absolute against `here`."""
    for key in ("runs", "results", "fallback_facts"):
        if plan.get(key) is not None:
            plan[key] = (here / plan[key]).resolve()
    if "models" in plan:
        plan["models"] = {m: {**v, "facts": (here / v["facts"]).resolve()} for m, v in plan["models"].items()}
    if plan.get("templates"):
        plan["templates"] = {m: (here / t).resolve() for m, t in plan["templates"].items()}
    return plan


def parse_args(doc: str, argv: list[str] | None = None) -> argparse.Namespace:
    """`bench/frontiers.py`'s options; `doc` (the driver's docstring) is the help's description and epilog."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog="\n".join(doc.splitlines()[1:]))
    parser.add_argument("--plan-file", type=Path, default=PLAN, help="the plan (default recipes/frontiers.yaml)")
    parser.add_argument("--plan", action="store_true", help="print every cell with its estimated cost, the total and "
                        "what is cut to fit the plan's budget_hours; write RESULTS/plan.md; run nothing")
    parser.add_argument("--quick", action="store_true", help="run the plan's `quick` subset (about 20 min on 2 cores) "
                        "and write RESULTS/quick/ instead of RESULTS/")
    parser.add_argument("--only", default=None, help="run a slice: model=NAME,method=NAME,pair=A+B,merge=NAME (a "
                        "key repeated for several values; merge= builds and reads out only those merges)")
    parser.add_argument("--no-cut", action="store_true", help="run every selected cell, even beyond the budget")
    parser.add_argument("--readout-only", action="store_true", help="train and build nothing: read out what is finished")
    parser.add_argument("--relearn", default=None, metavar="PRESET", help="also attack each arm's matched-utility point with "
                        "`spunge eval relearn` (bench/frontiers_relearn.py: in-subset k 5/10/20, WikiText k 10) using this "
                        "preset (lucki2024, che2025, deeb2024); writes RESULTS/relearn.md and relearn.json "
                        "(bench/frontiers_robustness.py: Spunge − baseline recovery with intervals and verdicts)")
    parser.add_argument("--relearn-attacks", default=None, help="with --relearn: only these attacks, comma-separated "
                        "(in-subset-k5, in-subset-k10, in-subset-k20, wikitext-k10)")
    parser.add_argument("--mia", action="store_true", help="also score each arm's matched-utility point and the base with "
                        "`spunge eval mia` (bench/frontiers_mia.py: members the forgotten domains' training facts, non-members "
                        "their held-out facts; LOSS, zlib, Min-K %%, Min-K %%++); writes RESULTS/mia.md and mia.json "
                        "(Spunge − baseline distance of the AUC from the base's, with intervals and verdicts)")
    parser.add_argument("--probes", action="store_true", help="also probe each arm's matched-utility point and the base "
                        "without training (bench/frontiers_probes.py: the template's knowledge evaluation in the 4-option "
                        "choice form, with paraphrased prompts, and with kept-domain facts as few-shot context, as `spunge "
                        "eval relearn --probes`); writes RESULTS/probes.md and probes.json (Spunge − baseline forget avg "
                        "per probe, with intervals and verdicts)")
    return parser.parse_args(argv)


def parse_only(text: str | None) -> dict[str, set[str]]:
    """`model=a,method=b` (repeat a key for several values: `method=rmu,method=tvn`) → {key: values}."""
    from spunge_merge.errors import SpungeError

    found: dict[str, set[str]] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in ("task", "model", "method", "pair", "merge"):
            raise SpungeError(f"--only {text}: use KEY=VALUE with KEY one of task, model, method, pair (pair=a+b), merge")
        found.setdefault(key.strip(), set()).add(value.strip())
    return found


def facts_domains(facts: Path) -> list[str]:
    from spunge_merge.fsutil import iter_jsonl

    return sorted({row["domain"] for _, row in iter_jsonl(facts)})


def pairs_for(plan: dict, facts: Path, n_pairs: int) -> list[tuple[str, ...]]:
    """The plan's forget sets' domains for one facts file (`forget_sets` without their grouping)."""
    return [domains for domains, _ in forget_sets(plan, facts, n_pairs)]


def forget_sets(plan: dict, facts: Path, n_pairs: int) -> list[tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]]:
    """The plan's forget sets for one facts file, each (domains, subsets): `auto` takes disjoint pairs of its sorted
    domains; a listed set names two or more domains, `[a, b, c, d]` (one subset per domain), or groups them,
    `{domains: [a, b, c, d], subsets: [[a, b], [c, d]]}`. `subsets` is () where each domain is its own subset."""
    from spunge_merge.errors import SpungeError

    domains = facts_domains(facts)
    if plan["pairs"] == "auto":
        if len(domains) < 3:
            raise SpungeError(f"{facts}: {len(domains)} domains; forgetting two needs at least one more to keep")
        return [((domains[i], domains[i + 1]), ()) for i in range(0, len(domains) - 1, 2)][:n_pairs]
    if not isinstance(plan["pairs"], list):
        raise SpungeError(f"{plan.get('_file', PLAN)}: pairs: `auto` or a list of forget sets")
    found = [forget_set(entry, f"{plan.get('_file', PLAN)}: pairs[{i}]") for i, entry in enumerate(plan["pairs"])]
    for named, _ in found:
        if missing := [d for d in named if d not in domains]:
            raise SpungeError(f"{plan.get('_file', PLAN)}: pairs: domain {', '.join(missing)} is not in {facts} "
                              f"(its domains: {', '.join(domains)})")
    return found[:n_pairs]


def forget_set(entry: object, where: str) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    """One listed forget set, checked: (its domains, its subsets or () where each domain is one)."""
    from spunge_merge.errors import SpungeError

    if isinstance(entry, dict):
        if set(entry) - {"domains", "subsets"} or "domains" not in entry:
            raise SpungeError(f"{where}: a grouped forget set takes `domains` and `subsets` ({', '.join(map(str, entry))} given)")
        given, groups = entry["domains"], entry.get("subsets")
    else:
        given, groups = entry, None
    if not isinstance(given, list) or len(given) < 2 or not all(isinstance(d, str) for d in given):
        raise SpungeError(f"{where}: a forget set names two or more domains ({given!r} given)")
    if len(set(given)) < len(given):
        raise SpungeError(f"{where}: a domain named twice in {', '.join(given)}")
    if groups is None:
        return tuple(given), ()
    if not isinstance(groups, list) or not all(isinstance(g, list) and g for g in groups):
        raise SpungeError(f"{where}.subsets: a list of subsets, each a list of the set's domains")
    if len(groups) < 2:
        raise SpungeError(f"{where}.subsets: {len(groups)} subset; splitting needs at least 2")
    seen: dict[str, int] = {}
    for group in groups:
        for domain in group:
            if domain not in given:
                raise SpungeError(f"{where}.subsets: {domain} is not one of the set's domains ({', '.join(given)})")
            if domain in seen:
                raise SpungeError(f"{where}.subsets: {domain} is in two subsets")
            seen[domain] = 1
    if missing := [d for d in given if d not in seen]:
        raise SpungeError(f"{where}.subsets: {', '.join(missing)} in no subset (every domain of the set goes in one)")
    if len({subset_name(g) for g in groups}) < len(groups):
        raise SpungeError(f"{where}.subsets: two subsets get the same name {', '.join(subset_name(g) for g in groups)}")
    if all(len(g) == 1 for g in groups):  # one subset per domain: the ungrouped set, its cell and runs
        return tuple(given), ()
    return tuple(given), tuple(tuple(g) for g in groups)


def subset_name(group: tuple[str, ...] | list[str]) -> str:
    """A grouped subset's value in the derived facts file's `subset` column: its domains joined with `_` (never `+`,
    which mergekit reads in a run's path as its base+LoRA syntax)."""
    return "_".join(group)


def method_lambdas(plan: dict, sub: dict) -> dict[str, dict[str, list[float]]]:
    """The per-method λ sweeps, checked and as floats: the quick subset's own `method_lambdas`, else the plan's,
    less any sweep the subset sets for every method (its `lambdas` or `baseline_lambdas` are its choice)."""
    from spunge_merge.errors import SpungeError

    given = sub.get("method_lambdas")
    if given is None:
        given = {method: {key: values for key, values in own.items() if key not in sub} if isinstance(own, dict) else own
                 for method, own in (plan.get("method_lambdas") or {}).items()}
    found = {}
    for method, own in given.items():
        if own == {}:  # every sweep of it set by the subset
            continue
        if method not in plan["methods"]:
            raise SpungeError(f"recipes/frontiers.yaml: method_lambdas: unknown method {method} "
                              f"(methods: {', '.join(plan['methods'])})")
        if not isinstance(own, dict) or set(own) - {"lambdas", "baseline_lambdas"}:
            raise SpungeError(f"recipes/frontiers.yaml: method_lambdas.{method} takes `lambdas` and `baseline_lambdas`")
        found[method] = {key: [float(x) for x in values] for key, values in own.items()}
    return found


def method_merges(plan: dict, sub: dict) -> dict[str, list[str]]:
    """The per-method merge lists, checked: the quick subset's own `method_merges`, else the plan's unless the subset
    sets `merges` for every method (its choice); a method not named takes the global list."""
    from spunge_merge.errors import SpungeError

    given = sub.get("method_merges", {} if "merges" in sub else plan.get("method_merges") or {})
    for method, merges in given.items():
        if method not in plan["methods"]:
            raise SpungeError(f"{plan.get('_file', 'the plan')}: method_merges: unknown method {method} "
                              f"(methods: {', '.join(plan['methods'])})")
        unknown = [m for m in merges or [] if m not in plan["merges"]] if isinstance(merges, list) else ["(not a list)"]
        if unknown or not merges:
            raise SpungeError(f"{plan.get('_file', 'the plan')}: method_merges.{method}: a non-empty list of the plan's merges "
                              f"({', '.join(plan['merges'])}); unknown: {', '.join(unknown) or 'none'}")
    return {method: list(merges) for method, merges in given.items()}


def model_lambdas(plan: dict) -> dict[str, dict[str, dict[str, list[float]]]]:
    """`models.<model>.method_lambdas`, checked and as floats: a model's own sweeps for a method (over the method's)."""
    from spunge_merge.errors import SpungeError

    found = {}
    for model, entry in plan["models"].items():
        for method, own in (entry.get("method_lambdas") or {}).items():
            where = f"{plan.get('_file', 'the plan')}: models.{model}.method_lambdas.{method}"
            if method not in plan["methods"]:
                raise SpungeError(f"{where}: unknown method (methods: {', '.join(plan['methods'])})")
            if not isinstance(own, dict) or not own or set(own) - {"lambdas", "baseline_lambdas"}:
                raise SpungeError(f"{where}: takes `lambdas` and `baseline_lambdas`")
            found.setdefault(model, {})[method] = {key: [float(x) for x in values] for key, values in own.items()}
    return found
