"""Seeds as an axis: every arm of a pipeline once per seed, then means, spreads and honest intervals.

One seed's Spunge − baseline gap mixes the method's effect with the luck of that seed's training
and with the prompts it happened to be scored on. A pipeline with `seeds: [0, 1, 2]` runs every
arm (the split runs, the baseline, the merge, the evaluations) once per seed, and reports each
figure as a mean over seeds with its min–max, and Spunge − baseline with a 95 % interval from
`evaluate.stats.hierarchical_bootstrap`: seeds resampled, and within each seed the facts or
prompts, paired (both arms of a seed are scored on the same ones).

Layout of the run directory:

    pipeline.yaml            the file as given
    split/, inputs/          the split, run once: it does not depend on the seed
    seeds/<s>/               a complete single run with every unlearning seed set to s (its own
                             report.md); its split/ is a plain copy of the parent's, recorded as up to
                             date under the same fingerprint, so the seed run does not split again
    report.md, report.json   the aggregate over seeds

What a seed changes: `unlearn.config.seed`, `baseline.config.seed` and any per-subset override's
`seed`. The evaluation settings (toxicity's prompt sample included) stay fixed, so every seed is
scored on the same prompts and the base model's evaluation, which no seed touches, is computed
once and copied into the other seeds under its fingerprint. Resuming works exactly as for single
runs: each seed directory is a run directory of its own.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spunge_merge.config import apply_overrides, as_run_text, load_pipeline_yaml
from spunge_merge.errors import SpungeError
from spunge_merge.fsutil import atomic_output_dir, atomic_write_bytes, atomic_write_text, copy_file, read_json, write_json
from spunge_merge.pipeline.preflight import check_before_run
from spunge_merge.pipeline.runner import (
    REPORT_FILE,
    REPORT_JSON,
    RunSummary,
    check_recorded_settings,
    default_run_dir,
    make_run_dir,
    pipeline_stages,
    run_dir_lock,
    run_pipeline,
)
from spunge_merge.pipeline.schema import Pipeline
from spunge_merge.pipeline.state import StateStore
from spunge_merge.unlearn import registry

SEEDS_DIR = "seeds"
SPLIT_KEY = "stage/split"
SHARED_WORK = ("eval/base",)  # work no seed changes: done by the first seed that needs it, copied into the others
BOOTSTRAP = {"n": 2000, "seed": 0, "confidence": 0.95}


@dataclass(frozen=True)
class SeedsSummary(RunSummary):
    """A `RunSummary` of the whole seeded run, plus each seed's own summary and the aggregate figures."""

    per_seed: dict[int, RunSummary] = field(default_factory=dict)
    aggregate: dict[str, Any] = field(default_factory=dict)


def seed_overrides(pipeline: Pipeline, seed: int, written: dict[str, Any] | None = None) -> list[str]:
    """`--set` assignments that make one seed's single run: no `seeds`, every unlearning seed set to `seed`.

    `written` is the pipeline file as read (with its `--set`s): an override's own `seed` is the one the
    file writes under `unlearn.overrides.NAME` (the parsed pipeline holds each subset's whole settings)."""
    cls = registry.get_method(pipeline.unlearn.method).config_class
    if "seed" not in cls.model_fields:
        raise SpungeError(f"seeds: unlearn.method {pipeline.unlearn.method} has no `seed` setting to vary")
    assignments = ["seeds=null", f"unlearn.config.seed={seed}", f"baseline.config.seed={seed}"]
    overrides = ((written or {}).get("unlearn") or {}).get("overrides") or {}
    for name, changes in overrides.items():
        if isinstance(changes, dict) and "seed" in changes:
            if "." in name or "=" in name:
                raise SpungeError(f"unlearn.overrides.{name}.seed: a subset name with '.' or '=' cannot be re-seeded by `seeds`; "
                                  "drop its `seed` override")
            assignments.append(f"unlearn.overrides.{name}.seed={seed}")
    return assignments


def _copy_tree(source: Path, target: Path) -> None:
    """A plain (symlink-free) copy of `source` that replaces `target` only once complete; never a link into `source`."""
    with atomic_output_dir(target, force=True) as tmp:
        shutil.copytree(source, tmp, symlinks=False, copy_function=copy_file, dirs_exist_ok=True)


def _copy_record(key: str, source_dir: Path, target_dir: Path) -> bool:
    """Give `target_dir` the finished work `key` of `source_dir` (its outputs and its state record).

    Skipped when the target already holds that work under the same fingerprint. The record keeps
    its fingerprint, so the target's run treats the copy as up to date only if it would compute the
    same fingerprint itself; otherwise it redoes the work, as for any changed setting.
    """
    source, target = StateStore(source_dir), StateStore(target_dir)
    record = source.get(key)
    if not record or not source.is_done(key, record["fingerprint"]) or target.is_done(key, record["fingerprint"]):
        return False
    for relative in record.get("outputs", []):
        origin, destination = source_dir / relative, target_dir / relative
        if origin.is_dir():
            _copy_tree(origin, destination)
        else:
            atomic_write_bytes(destination, origin.read_bytes())  # records and small result files
    if key == SPLIT_KEY:  # the split's record names its manifest; the subset files beside it travel with it
        _copy_tree(source_dir / "split", target_dir / "split")
    extra = {k: v for k, v in record.items() if k not in ("status", "fingerprint", "parts", "outputs")}
    target.done(key, record["fingerprint"], outputs=[target_dir / p for p in record.get("outputs", [])],
                parts=record.get("parts"), **extra)
    return True


def run_seeds(pipeline_file: str | Path, pipeline: Pipeline, *, run_dir: str | Path | None = None, only: str | None = None,
              force: bool = False, executor: str | None = None, ray_address: str | None = None, live: bool | None = None,
              console=None, overrides: list[str] | None = None, accept_changes: bool = False) -> SeedsSummary:
    """Run `pipeline` once per seed of `pipeline.seeds` (see the module docstring); `run_pipeline`'s arguments."""
    pipeline_file = Path(pipeline_file)
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(pipeline)
    given = list(overrides or [])
    written = apply_overrides(load_pipeline_yaml(pipeline_file), given, str(pipeline_file))
    common = {"force": force, "executor": executor, "ray_address": ray_address, "live": live, "console": console,
              "accept_changes": accept_changes}
    started = time.perf_counter()
    check_before_run(pipeline_file, pipeline, run_dir)
    changes = _check_settings(pipeline_file, pipeline, run_dir, given, written, only=only, accept=accept_changes or force)
    make_run_dir(run_dir)
    with run_dir_lock(run_dir, "seeds-lock"):  # one seeded run at a time; each seed's run locks its own dir too
        split = run_pipeline(pipeline_file, run_dir=run_dir, only="split", overrides=[*given, "seeds=null"], compared=changes,
                             **common)
        _record_pipeline_file(pipeline_file, run_dir, given)
        ran = ["split"] if split.ran else []
        per_seed: dict[int, RunSummary] = {}
        if only != "split":
            first_done: Path | None = None
            for seed in pipeline.seeds:
                seed_dir = run_dir / SEEDS_DIR / str(seed)
                _copy_record(SPLIT_KEY, run_dir, seed_dir)
                if first_done is not None:
                    for key in SHARED_WORK:
                        _copy_record(key, first_done, seed_dir)
                summary = run_pipeline(pipeline_file, run_dir=seed_dir, only=only,
                                       overrides=[*given, *seed_overrides(pipeline, seed, written)], **common)
                per_seed[seed] = summary
                ran += [f"seed {seed}: {stage}" for stage in summary.ran]
                first_done = first_done or seed_dir
        aggregate: dict[str, Any] = {}
        text = ""
        report = None
        seconds = time.perf_counter() - started
        if per_seed and all(s.report is not None for s in per_seed.values()):
            aggregate = aggregate_seeds(run_dir, pipeline, list(per_seed), seconds=seconds, ran=ran)
            text = aggregate.pop("markdown")
            report = run_dir / REPORT_FILE
    merged = {f"{label} seed {seed}": path for seed, s in per_seed.items() for label, path in s.merged.items()}
    baseline = {f"{label} seed {seed}": path for seed, s in per_seed.items() for label, path in s.baseline.items()}
    return SeedsSummary(run_dir=run_dir, report=report, merged=merged, baseline=baseline, seconds=seconds, ran=ran,
                        jobs=[f"seed {seed}: {job}" for seed, s in per_seed.items() for job in s.jobs] + split.jobs,
                        text=text, per_seed=per_seed, aggregate=aggregate)


def _check_settings(pipeline_file: Path, pipeline: Pipeline, run_dir: Path, given: list[str], written: dict[str, Any], *,
                    only: str | None, accept: bool) -> str:
    """Before anything is written: the run directory's recorded settings against the file as given, and each
    seed's against that seed's (the same comparison its own run makes later), so a refusal leaves all as it was.
    Returns the run directory's note on what differs ("" when nothing does)."""
    stages = pipeline_stages(pipeline)
    note = check_recorded_settings(run_dir, written, stages, accept=accept)
    if only != "split":
        for seed in pipeline.seeds:
            raw = apply_overrides(load_pipeline_yaml(pipeline_file), [*given, *seed_overrides(pipeline, seed, written)],
                                  str(pipeline_file))
            check_recorded_settings(run_dir / SEEDS_DIR / str(seed), raw, stages, accept=accept)
    return note


def _record_pipeline_file(pipeline_file: Path, run_dir: Path, overrides: list[str]) -> None:
    """The run directory's pipeline.yaml: the file as given (the split-only run wrote its internal `--set`)."""
    raw = apply_overrides(load_pipeline_yaml(pipeline_file), overrides, str(pipeline_file))
    text = as_run_text(pipeline_file, raw, overrides)
    atomic_write_text(run_dir / "pipeline.yaml", text)


# ------------------------------------------------------------------------------------------------
# Figures of one seed's run


@dataclass(frozen=True)
class Figure:
    """How to read one figure, and which way is better (for the verdict)."""

    key: str
    unit: str  # "%" (shown as percent, differences in points) or "" (as is)
    better: str  # "lower" or "higher"


def _knowledge(eval_dir: Path, forget: list[str]) -> dict[str, tuple[float, dict[str, dict[str, float]] | None]]:
    """Per domain, forget avg and keep avg: (value in %, {domain: {fact key: 100 or 0}})."""
    from spunge_merge.evaluate.matched import knowledge_figures

    return knowledge_figures(eval_dir, forget)


def _toxicity(eval_dir: Path) -> dict[str, tuple[float, dict | None]]:
    from spunge_merge.evaluate.toxicity import GENERATIONS_FILE, TOXICITY_FILE, judged_items

    if not (eval_dir / TOXICITY_FILE).is_file():
        return {}
    result = read_json(eval_dir / TOXICITY_FILE)
    items = None
    if (eval_dir / GENERATIONS_FILE).is_file():
        items = {"all": {key: value for key, (_, value) in judged_items(eval_dir).items()}}
    return {"toxicity %": (float(result["overall"]["pct"]), items)}


def _scalars(eval_dir: Path) -> dict[str, tuple[float, None]]:
    """Figures stored only as one number per model: their interval resamples seeds only."""
    found = {}
    for file, name, read in (("perplexity.json", "retain PPL", lambda r: r.get("perplexity")),
                             ("fluency.json", "fluency PPL", lambda r: r.get("perplexity")),
                             ("harness.json", "utility", lambda r: r.get("utility"))):
        if (eval_dir / file).is_file() and (value := read(read_json(eval_dir / file))) is not None:
            found[name] = (float(value), None)
    return found


def figure_kind(name: str, forget: list[str]) -> Figure:
    if name.startswith("knowledge: "):
        domain = name.removeprefix("knowledge: ")
        return Figure(name, "%", "lower" if domain in forget else "higher")
    if name == "forget avg":
        return Figure(name, "%", "lower")
    if name == "keep avg":
        return Figure(name, "%", "higher")
    if name == "toxicity %":
        return Figure(name, "%", "lower")
    if name == "utility":
        return Figure(name, "", "higher")
    return Figure(name, "", "lower")  # perplexities


def seed_figures(seed_dir: Path, forget: list[str]) -> dict[str, dict[str, tuple[float, dict | None]]]:
    """label → figure → (value, items by stratum or None) for one seed's run directory."""
    report = read_json(seed_dir / REPORT_JSON)
    labels = list(report.get("models") or {})
    found = {}
    for label in labels:
        eval_dir = seed_dir / "eval" / label
        found[label] = {**_knowledge(eval_dir, forget), **_toxicity(eval_dir), **_scalars(eval_dir)}
    return found


# ------------------------------------------------------------------------------------------------
# The aggregate


def _role(label: str) -> str:
    return label.split("-lam")[0]


def paired_differences(spunge: tuple[float, dict | None], baseline: tuple[float, dict | None]) -> tuple[Any, str]:
    """One seed's Spunge − baseline: per-item differences by stratum when both arms scored the same items,
    else the one difference of the figures (that seed then adds no within-seed resampling)."""
    (a, a_items), (b, b_items) = spunge, baseline
    if a_items is not None and b_items is not None and a_items.keys() == b_items.keys() and all(
            a_items[s].keys() == b_items[s].keys() for s in a_items):
        return {s: [a_items[s][k] - b_items[s][k] for k in a_items[s]] for s in a_items}, "items"
    return [a - b], "seeds"


TIE = 1e-9  # differences this close to 0 are 0 (float noise of averaging equal verdicts)


def verdict_word(low: float, high: float, better: str) -> str:
    """helps / hurts when the whole interval lies on one side of 0, else level."""
    if low > TIE:
        return "helps" if better == "higher" else "hurts"
    if high < -TIE:
        return "helps" if better == "lower" else "hurts"
    return "level"


def aggregate_seeds(run_dir: Path, pipeline: Pipeline, seeds: list[int], *, seconds: float, ran: list[str]) -> dict[str, Any]:
    """Write `report.md` and `report.json` over `seeds`; returns the JSON's content plus its `markdown`."""
    from spunge_merge.data.loading import load_subsets
    from spunge_merge.evaluate.stats import hierarchical_bootstrap

    forget = [str(s.value) for s in load_subsets(run_dir / "split")]
    per_seed = {seed: seed_figures(run_dir / SEEDS_DIR / str(seed), forget) for seed in seeds}
    labels = [label for label in per_seed[seeds[0]] if all(label in per_seed[s] for s in seeds)]
    models: dict[str, dict[str, Any]] = {}
    for label in labels:
        names = [n for n in per_seed[seeds[0]][label] if all(n in per_seed[s][label] for s in seeds)]
        models[label] = {}
        for name in names:
            values = [per_seed[s][label][name][0] for s in seeds]
            mean = sum(values) / len(values)
            sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
            models[label][name] = {"mean": mean, "sd": sd, "min": min(values), "max": max(values),
                                   "values": {str(s): v for s, v in zip(seeds, values, strict=True)},
                                   "unit": figure_kind(name, forget).unit}
    differences = []
    for spunge in (x for x in labels if _role(x) == "spunge"):
        for baseline in (x for x in labels if _role(x) == "baseline"):
            for name in (n for n in models[spunge] if n in models[baseline]):
                diffs, resampled = [], "items"
                for s in seeds:
                    d, how = paired_differences(per_seed[s][spunge][name], per_seed[s][baseline][name])
                    diffs.append(d)
                    resampled = "items" if resampled == "items" and how == "items" else "seeds"
                interval = hierarchical_bootstrap(diffs, **BOOTSTRAP)
                kind = figure_kind(name, forget)
                differences.append({"spunge": spunge, "baseline": baseline, "figure": name, "unit": kind.unit,
                                    "better": kind.better, "mean": interval["mean"], "low": interval["low"],
                                    "high": interval["high"], "resampled": "seeds and items" if resampled == "items" else
                                    "seeds", "reading": verdict_word(interval["low"], interval["high"], kind.better)})
    verdicts = [verdict_sentence(seeds, [d for d in differences if (d["spunge"], d["baseline"]) == pair])
                for pair in dict.fromkeys((d["spunge"], d["baseline"]) for d in differences)]
    content = {"kind": "seeds-report", "name": pipeline.name, "seeds": seeds, "forget": forget,
               "runs": {str(s): f"{SEEDS_DIR}/{s}" for s in seeds}, "models": models, "differences": differences,
               "verdict": " ".join(v for v in verdicts if v), "bootstrap": BOOTSTRAP,
               "seconds": round(seconds, 1), "stages_run": ran, "matched": _matched(run_dir, pipeline, seeds)}
    markdown = render_report(pipeline, content, run_dir=run_dir)
    atomic_write_text(run_dir / REPORT_FILE, markdown)
    write_json(run_dir / REPORT_JSON, content)
    return {**content, "markdown": markdown}


def _matched(run_dir: Path, pipeline: Pipeline, seeds: list[int]) -> list[dict[str, Any]] | None:
    """Toxicity at the screen's matched-utility targets over seeds (`evaluate/matched_toxicity.py`), for a sweep with
    `eval.screen`, toxicity and both arms; None otherwise (the per-λ differences above are then the whole report)."""
    screen = pipeline.eval.screen
    both_arms = {"baseline", "spunge"} <= set(pipeline.eval.models) and pipeline.baseline.enabled
    if screen is None or pipeline.eval.toxicity is None or not both_arms:
        return None
    from spunge_merge.evaluate.matched_toxicity import matched_toxicity

    return matched_toxicity({s: run_dir / SEEDS_DIR / str(s) / "eval" for s in seeds}, screen.targets, metric=screen.metric,
                            tolerance=screen.non_text_tolerance)


# ------------------------------------------------------------------------------------------------
# Text

HEADLINE = ("forget avg", "keep avg", "toxicity %", "retain PPL", "fluency PPL", "utility")
PHRASES = {  # figure: (helps, hurts, level)
    "forget avg": ("forgets more than", "forgets less than", "forgets about as much as"),
    "keep avg": ("keeps more than", "keeps less than", "keeps about as much as"),
    "toxicity %": ("is less toxic than", "is more toxic than", "is about as toxic as"),
    "retain PPL": ("has lower retain perplexity than", "has higher retain perplexity than", "has about the retain perplexity of"),
    "fluency PPL": ("is more fluent than", "is less fluent than", "is about as fluent as"),
    "utility": ("keeps more utility than", "keeps less utility than", "keeps about the utility of"),
}


def number(value: float, unit: str, *, signed: bool = False) -> str:
    """Percentages as whole numbers (differences to 0.1 point), other figures to 0.01; a signed 0 is plain 0."""
    digits = (1 if signed else 0) if unit == "%" else 2
    value = round(value, digits) + 0.0  # + 0.0 turns −0.0 into 0.0
    if signed and value != 0:
        return f"{value:+.{digits}f}".replace("-", "−")
    return f"{value:.{digits}f}".replace("-", "−")


def difference_text(entry: dict[str, Any]) -> str:
    unit = " points" if entry["unit"] == "%" else ""
    return (f"{number(entry['mean'], entry['unit'], signed=True)}{unit}, 95 % interval "
            f"{number(entry['low'], entry['unit'], signed=True)} to {number(entry['high'], entry['unit'], signed=True)}")


def verdict_sentence(seeds: list[int], differences: list[dict[str, Any]]) -> str:
    """One sentence that says, per headline figure, only what its interval supports."""
    by_name = {d["figure"]: d for d in differences}
    clauses = []
    for name in HEADLINE:
        if name not in by_name:
            continue
        entry = by_name[name]
        helps, hurts, level = PHRASES[name]
        phrase = {"helps": helps, "hurts": hurts, "level": level}[entry["reading"]]
        note = ": the interval includes 0" if entry["reading"] == "level" else ""
        clauses.append(f"{phrase} the baseline ({name} {difference_text(entry)}{note})")
    if not clauses:
        return ""
    pair = differences[0]
    who = "Spunge" if pair["spunge"] == "spunge" else f"Spunge ({pair['spunge']})"
    against = "" if pair["baseline"] == "baseline" else f" [vs. {pair['baseline']}]"
    body = clauses[0] if len(clauses) == 1 else ", ".join(clauses[:-1]) + " and " + clauses[-1]
    return f"Over seeds {', '.join(map(str, seeds))}, {who}{against} {body}."


def spread(entry: dict[str, Any]) -> str:
    unit = entry["unit"]
    suffix = "%" if unit == "%" else ""
    if entry["min"] == entry["max"]:
        return f"{number(entry['mean'], unit)}{suffix}"
    return f"{number(entry['mean'], unit)}{suffix} ({number(entry['min'], unit)}–{number(entry['max'], unit)})"


def knowledge_table(content: dict[str, Any]) -> str:
    """Models × domains (then forget avg, keep avg): mean over seeds (min–max)."""
    forget = content["forget"]
    domains: list[str] = []
    for figures in content["models"].values():
        domains += [n.removeprefix("knowledge: ") for n in figures if n.startswith("knowledge: ")
                    and n.removeprefix("knowledge: ") not in domains]
    if not domains:
        return ""
    columns = [f"knowledge: {d}" for d in domains] + ["forget avg", "keep avg"]
    head = [f"{d} ({'forget' if d in forget else 'keep'})" for d in domains] + ["forget avg", "keep avg"]
    lines = ["| model | " + " | ".join(head) + " |", "|---|" + "---:|" * len(head)]
    for label, figures in content["models"].items():
        lines.append(f"| {label} | " + " | ".join(spread(figures[c]) if c in figures else "–" for c in columns) + " |")
    return "\n".join(lines) + "\n"


def differences_table(content: dict[str, Any], figures: tuple[str, ...] | None = None) -> str:
    rows = [d for d in content["differences"] if figures is None or d["figure"] in figures]
    if not rows:
        return ""
    several = len({(d["spunge"], d["baseline"]) for d in rows}) > 1
    lines = ["| " + ("pair | " if several else "") + "figure | Spunge − baseline | 95 % interval | resampled | reading |",
             "|---|" + ("---|" if several else "") + "---:|---:|---|---|"]
    for d in rows:
        unit = " pt" if d["unit"] == "%" else ""
        pair = f"{d['spunge']} − {d['baseline']} | " if several else ""
        lines.append(f"| {pair}{d['figure'].removeprefix('knowledge: ')} | {number(d['mean'], d['unit'], signed=True)}{unit} | "
                     f"{number(d['low'], d['unit'], signed=True)} to {number(d['high'], d['unit'], signed=True)} | "
                     f"{d['resampled']} | {d['reading']} |")
    return "\n".join(lines) + "\n"


def render_report(pipeline: Pipeline, content: dict[str, Any], *, run_dir: Path) -> str:
    seeds = content["seeds"]
    parts = [f"# {pipeline.name}: Spunge vs. un-split baseline over {len(seeds)} seeds", ""]
    if pipeline.description:
        parts += [pipeline.description.strip(), ""]
    parts += [f"- seeds {', '.join(map(str, seeds))}: each a complete run in `{run_dir / SEEDS_DIR}/<seed>/` (its own "
              "report.md) with every unlearning seed set to it; one split shared by all",
              f"- base model: `{pipeline.model}`; method: **{pipeline.unlearn.method}**; merge: {pipeline.merge.method}", ""]
    if content["verdict"]:
        parts += [f"**{content['verdict']}**", ""]
    table = knowledge_table(content)
    if table:
        parts += ["## Knowledge: held-out facts completed correctly, mean over seeds (min–max)", "",
                  f"Forgotten (split and unlearned): {', '.join(content['forget'])}.", "", table]
    others = [n for n in ("toxicity %", "retain PPL", "fluency PPL", "utility")
              if any(n in figures for figures in content["models"].values())]
    if others:
        parts += ["## Other figures, mean over seeds (min–max)", "", "| model | " + " | ".join(others) + " |",
                  "|---|" + "---:|" * len(others)]
        for label, figures in content["models"].items():
            parts.append(f"| {label} | " + " | ".join(spread(figures[n]) if n in figures else "–" for n in others) + " |")
        parts.append("")
    if content.get("matched"):
        from spunge_merge.evaluate.matched_toxicity import render

        parts += [render(content["matched"])]
    diffs = differences_table(content)
    if diffs:
        boot = content["bootstrap"]
        parts += ["## Spunge − baseline", "",
                  f"Mean over seeds of the paired difference; 95 % percentile interval from {boot['n']} bootstrap resamples "
                  f"(numpy seed {boot['seed']}) that draw the seeds with replacement and, within each drawn seed, its facts or "
                  "prompts (paired: both arms of a seed scored the same ones; domains resampled separately for the averages). "
                  "`seeds` marks a figure stored as one number per model, whose interval reflects the seeds only. "
                  "Reading: helps or hurts when the whole interval lies on one side of 0, level when it includes 0. "
                  "With few seeds the interval is optimistic about seed-to-seed variation.", "", diffs]
    parts += ["## Per seed", "", "| seed | report |", "|---|---|"]
    for seed in seeds:
        parts.append(f"| {seed} | `{run_dir / SEEDS_DIR / str(seed) / REPORT_FILE}` |")
    ran = content["stages_run"]
    parts += ["", f"This invocation took {content['seconds']:.0f} s"
              + (f" (work done: {', '.join(ran)})." if ran else " (nothing to do: every seed was up to date)."), ""]
    return "\n".join(parts)
