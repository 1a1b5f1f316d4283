"""More subsets (bench/frontiers_plan.py `forget_set`, bench/frontiers_facts.py `grouped_facts`, bench/frontiers_subsets.py):
a forget set of more than two domains, split one subset per domain or grouped into subsets, and the finer split's
Spunge arm against the coarser one's at matched utility."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import frontiers  # noqa: E402

from spunge_merge.errors import SpungeError  # noqa: E402

FACTS = REPO / "bench" / "knowledge" / "facts-smollm2-135m.jsonl"
FOUR = ["capitals", "city_countries", "elements", "languages"]
PAIRS = [["capitals", "city_countries"], ["elements", "languages"]]
READOUT = {"keep_drop": 5.0, "forget_at_most": 5.0, "level_margin": 2.0, "min_seeds": 3, "bootstrap": {"n": 500, "seed": 0}}


def _plan(tmp_path: Path, pairs: list, **model) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump({
        "runs": str(tmp_path / "runs"), "results": str(tmp_path / "results"),
        "models": {"smollm2-135m": {"facts": str(FACTS), "cost_scale": 1.0, **model}}, "methods": ["rmu"], "pairs": pairs,
        "n_pairs": 5, "seeds": [0, 1, 2], "merges": {"ties": {"method": "ties"}}, "method_merges": {}}), encoding="utf-8")
    return path


def _rows(path: Path) -> list[tuple[str, dict]]:
    return [(line, json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_a_set_of_four_domains_as_k4_and_as_k2_gives_two_cells_that_never_share_a_run(tmp_path):
    plan = frontiers.load_plan(_plan(tmp_path, [FOUR, {"domains": FOUR, "subsets": PAIRS}, ["capitals", "opposites"]]))
    cells, settings = frontiers.select(plan, quick=False, only={})
    k4, k2, pair = cells
    assert (k4.pair, k4.subsets, k4.k) == (tuple(FOUR), (), 4)
    assert (k2.pair, k2.subsets, k2.k) == (tuple(FOUR), tuple(map(tuple, PAIRS)), 2)
    assert k4.set_name == "capitals+city_countries+elements+languages" and k2.set_name == k4.set_name + "-k2"
    assert k2.key == "knowledge/smollm2-135m/rmu/capitals+city_countries+elements+languages-k2"
    # the two-domain cell is as before: its name, its directory, the facts file itself
    assert (pair.set_name, pair.facts, frontiers.cell_dir(plan, pair).name) == ("capitals+opposites", FACTS, "capitals--opposites")
    dirs = {frontiers.cell_dir(plan, c) for c in cells}
    assert len(dirs) == 3 and not any("+" in str(d) for d in dirs)
    assert frontiers.cell_dir(plan, k2).name == "capitals--city_countries--elements--languages-k2"
    # a set whose subsets are each one domain is the ungrouped set; --only pair= takes the set's name
    same = frontiers.load_plan(_plan(tmp_path, [{"domains": FOUR, "subsets": [[d] for d in FOUR]}]))
    assert frontiers.select(same, quick=False, only={})[0] == [k4]
    only = frontiers.select(plan, quick=False, only={"pair": {k2.set_name}})[0]
    assert only == [k2]
    # --plan: both cells, the grouping, a 4-domain pipeline costed at twice a pair's
    text, _ = frontiers.plan_text(plan, cells, settings, budget_hours=1000.0)
    assert "| capitals + city_countries + elements + languages (k = 4) |" in text
    assert "(k = 2: capitals + city_countries / elements + languages) |" in text
    assert "pipeline × 2 (4 domains)" in text and "pipeline × 1 (2 domains)" not in text
    # relearn's in- and cross-subset roles are a pair's: the larger sets are not attacked
    from frontiers_relearn import pairs_only

    assert pairs_only(cells) == [pair]


@pytest.mark.parametrize(("entry", "message"), [
    ({"domains": FOUR, "subsets": [["capitals", "city_countries"], ["elements", "opposites"]]},
     r"pairs\[0\].subsets: opposites is not one of the set's domains"),
    ({"domains": FOUR, "subsets": [["capitals", "city_countries"], ["elements", "languages", "capitals"]]},
     r"pairs\[0\].subsets: capitals is in two subsets"),
    ({"domains": FOUR, "subsets": [["capitals", "city_countries"], ["elements"]]}, r"pairs\[0\].subsets: languages in no subset"),
    ({"domains": FOUR, "subsets": [FOUR]}, r"pairs\[0\].subsets: 1 subset; splitting needs at least 2"),
    ({"domains": FOUR, "subsets": []}, r"pairs\[0\].subsets: 0 subset; splitting needs at least 2"),
    ({"domains": FOUR, "groups": PAIRS}, r"pairs\[0\]: a grouped forget set takes `domains` and `subsets`"),
    (["capitals"], r"pairs\[0\]: a forget set names two or more domains"),
    (["capitals", "capitals"], r"pairs\[0\]: a domain named twice"),
    (["capitals", "cities"], r"pairs: domain cities is not in"),
])
def test_a_bad_forget_set_is_refused_in_one_line(tmp_path, entry, message):
    plan = frontiers.load_plan(_plan(tmp_path, [entry]))
    with pytest.raises(SpungeError, match=message) as caught:
        frontiers.select(plan, quick=False, only={})
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "runs" / "derived").exists()


def test_the_grouped_file_adds_the_subset_column_to_the_forgotten_rows_only(tmp_path):
    import hashlib

    plan = frontiers.load_plan(_plan(tmp_path, [{"domains": FOUR, "subsets": PAIRS}]))
    [cell], _ = frontiers.select(plan, quick=False, only={})
    digest = hashlib.sha256(FACTS.read_bytes()).hexdigest()
    assert cell.facts == tmp_path / "runs" / "derived" / (
        f"facts-smollm2-135m-subsets-capitals_city_countries-elements_languages-{digest[:8]}.jsonl")
    before, after = _rows(FACTS), _rows(cell.facts)
    assert len(before) == len(after)
    name = {"capitals": "capitals_city_countries", "city_countries": "capitals_city_countries",
            "elements": "elements_languages", "languages": "elements_languages"}
    for (old_line, old), (new_line, new) in zip(before, after, strict=True):
        if old["domain"] in name:  # the row itself with its subset's name, `_` joined (never `+`)
            assert new == {**old, "subset": name[old["domain"]]}
        else:  # a kept domain's row: the same bytes, no subset
            assert new_line == old_line and "subset" not in new
    record = json.loads(cell.facts.with_suffix(".json").read_text(encoding="utf-8"))
    train = {n: sum(r["part"] == "train" and name.get(r["domain"]) == n for _, r in before) for n in set(name.values())}
    assert record["train_rows"] == train == {"capitals_city_countries": 28 + 39, "elements_languages": 20 + 40}
    assert record["source_sha256"] == digest
    # deterministic: derived again in another runs folder, byte for byte
    plan["runs"] = tmp_path / "again"
    assert frontiers.select(plan, quick=False, only={})[0][0].facts.read_bytes() == cell.facts.read_bytes()
    # with a cap too: grouped from the capped file (its name in the grouped one's), the capped domain's rows cut
    capped = frontiers.load_plan(_plan(tmp_path / "both", [{"domains": FOUR, "subsets": PAIRS}], train_rows={"languages": 10}))
    [both], _ = frontiers.select(capped, quick=False, only={})
    source = json.loads(both.facts.with_suffix(".json").read_text(encoding="utf-8"))["source"]
    assert "languages10" in source and both.facts.name.startswith(Path(source).stem + "-subsets-")
    rows = [r for _, r in _rows(both.facts)]
    assert sum(r["part"] == "train" and r["domain"] == "languages" for r in rows) == 10
    assert {r.get("subset") for r in rows if r["domain"] == "languages"} == {"elements_languages"}


def test_the_overrides_split_a_grouped_set_by_its_subsets_and_keep_the_other_domains(tmp_path):
    from spunge_merge.data.split import split_dataset

    plan = frontiers.load_plan(_plan(tmp_path, [FOUR, {"domains": FOUR, "subsets": PAIRS}]))
    (k4, k2), _ = frontiers.select(plan, quick=False, only={})
    keep = "domain not in capitals,city_countries,elements,languages"
    got = {c.k: dict(x.split("=", 1) for x in frontiers.overrides(plan, c, [0, 1])) for c in (k4, k2)}
    assert "split.by" not in got[4] and json.loads(got[4]["split.values"]) == FOUR
    assert got[2]["split.by"] == "subset" and json.loads(got[2]["split.values"]) == ["capitals_city_countries", "elements_languages"]
    for k, cell in ((4, k4), (2, k2)):
        assert json.loads(got[k]["unlearn.retain.where"]) == ["part == train", keep]
        assert json.loads(got[k]["eval.perplexity.data.where"]) == ["part == heldout", keep]
        assert {got[k][key] for key in ("split.data.path", "eval.knowledge.facts", "unlearn.retain.path")} == {str(cell.facts)}
    # the split stage as the template runs it (`where: part == train`): each subset is its two domains' training rows;
    # the kept domains' training rows have no subset and are left out
    result = split_dataset(k2.facts, by="subset", out=tmp_path / "split", where=["part == train"],
                           values=json.loads(got[2]["split.values"]), progress=False)
    rows = [r for _, r in _rows(FACTS) if r["part"] == "train"]
    assert result.counts == {"capitals_city_countries": sum(r["domain"] in PAIRS[0] for r in rows),
                             "elements_languages": sum(r["domain"] in PAIRS[1] for r in rows)}
    manifest = json.loads((tmp_path / "split" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["rows_without_value"] == sum(r["domain"] not in FOUR for r in rows) > 0


# ------------------------------------------------------------------------------------------------
# The read-out: k = 4 − k = 2 at matched utility


def _point(keep: float, facts: dict[str, list[float]]) -> dict:
    items = {d: {f"{d}{i}": v for i, v in enumerate(values)} for d, values in facts.items()}
    return {"keep": (keep, None), "forget": (sum(sum(v) / len(v) for v in facts.values()) / len(facts), items), "ppl": 10.0}


def _unit(seed: int, grouped: bool) -> tuple[dict, dict[str, list[float]]]:
    """Four forgotten domains (3 facts each). The Spunge arm crosses keep 95 between λ 1 (keep 99) and λ 2 (keep 91):
    w = 1/2; the baseline at λ 1 exactly. The values move with the seed and the grouping. Returns the unit and, by hand,
    the Spunge arm's per-fact values at the crossing."""
    r, g = seed % 2, int(grouped)
    s1 = {"a": [100, 0, 100], "b": [0, 0, 100], "c": [100, 0, 100 * r], "d": [100, 0, 0]}  # forget avg 42-50: a bracket
    # narrow enough to read (MAX_FORGET_GAP) against λ 2's 0-25
    s2 = {"a": [0, 100 * g, 0], "b": [0, 0, 100 * r], "c": [0, 0, 0], "d": [100 * g, 0, 100 * seed / 2]}
    points = {"base": _point(100.0, {d: [100] * 3 for d in "abcd"}),
              "baseline-lam1": _point(95.0, {d: [50, 50, 0] for d in "abcd"}), "baseline-lam2": _point(80.0, {d: [0] * 3 for d in "abcd"}),
              "spunge-ties-lam1": _point(99.0, s1), "spunge-ties-lam2": _point(91.0, s2)}
    unit = {"pair": list("abcd"), "set": "a+b+c+d" + ("-k2" if grouped else ""), "subsets": [["a", "b"], ["c", "d"]] if grouped else [],
            "seed": seed, "facts": "", "fallback": False, "points": points}
    return unit, {d: [(x + y) / 2 for x, y in zip(s1[d], s2[d], strict=True)] for d in "abcd"}


def test_the_finer_split_against_the_coarser_matches_an_independent_computation(tmp_path):
    from frontiers_subsets import subset_comparisons

    from spunge_merge.evaluate.stats import hierarchical_bootstrap

    k4 = [_unit(s, False) for s in (0, 1, 2)]
    k2 = [_unit(s, True) for s in (0, 1, 2)]
    units = [u for u, _ in k4 + k2]
    [entry] = subset_comparisons(units, ["ties"], READOUT)
    assert (entry["set"], entry["finer"], entry["coarser"], entry["k"]) == ("a+b+c+d", "a+b+c+d", "a+b+c+d-k2", [4, 2])
    found = entry["merges"]["ties"]
    # by hand: per seed, per domain, the per-fact difference k4 − k2 at the crossing; the seed's value the mean of the
    # domains' means (forget avg is a macro average); e.g. seed 0: k4 a (50, 0, 50), k2 a (50, 50, 50): a −16.7, d −16.7, b c 0
    diffs = [{d: [x - y for x, y in zip(f[d], c[d], strict=True)] for d in "abcd"} for (_, f), (_, c) in zip(k4, k2, strict=True)]
    per_seed = [sum(sum(v) / len(v) for v in seed.values()) / 4 for seed in diffs]
    assert per_seed[0] == pytest.approx(-(50 / 3 + 50 / 3) / 4)
    assert found["mean"] == pytest.approx(sum(per_seed) / 3)
    assert found["finer_forget"] == pytest.approx(sum(sum(sum(v) / 3 for v in f.values()) / 4 for _, f in k4) / 3)
    assert found["finer_lambda"] == found["coarser_lambda"] == [1.5, 1.5, 1.5]
    boot = hierarchical_bootstrap(diffs, n=500, seed=0)
    assert (found["low"], found["high"]) == (pytest.approx(boot["low"]), pytest.approx(boot["high"]))
    assert found["low"] < 0 and found["high"] <= 0 and found["verdict"] == "helps"  # k = 4 forgets at least as much each seed
    # paired by seed: a seed the coarser cell has not finished is left out
    fewer = subset_comparisons([u for u, _ in k4] + [u for u, _ in k2[:2]], ["ties"], READOUT)[0]["merges"]["ties"]
    assert fewer["seeds"] == [0, 1] and fewer["mean"] == pytest.approx(sum(per_seed[:2]) / 2) and fewer["verdict"] == "no verdict"
    # one grouping only: nothing to compare
    assert subset_comparisons([u for u, _ in k4], ["ties"], READOUT) == []


def test_the_summary_has_a_more_subsets_section_only_where_a_set_is_split_two_ways(tmp_path):
    from frontiers_readout import render, write_outputs

    facts = tmp_path / "facts.jsonl"
    facts.write_text("".join(json.dumps({"domain": d, "part": "train"}) + "\n" for d in "aabcdd"), encoding="utf-8")
    settings = frontiers.Settings(seeds=[0, 1, 2], merges=["ties"], lambdas=[1.0, 2.0], baseline_lambdas=[1.0, 2.0])
    plan = {"readout": READOUT, "merges": {"ties": {"method": "ties"}}, "fallback_facts": None}
    units = [_unit(s, g)[0] for g in (False, True) for s in (0, 1, 2)]
    for unit in units:
        unit["facts"] = str(facts)
    summary = write_outputs({("knowledge", "rmu", "tiny"): units}, plan, settings, tmp_path / "out", plan_markdown="# Frontier plan",
                            seconds=1.0, quick=False)
    row = summary["rows"][0]
    # each grouping is its own forget set against its own baseline, with its own plot; no cos(A, B) for 4 domains
    assert list(row["sets"]) == ["a+b+c+d", "a+b+c+d-k2"]
    assert (tmp_path / "out" / "frontier-knowledge-rmu-tiny-a--b--c--d-k2.png").is_file()
    assert row["sets"]["a+b+c+d"]["predictors"]["edits"] is None
    text = (tmp_path / "out" / "summary.md").read_text(encoding="utf-8")
    assert text == render(summary) and "## More subsets" in text
    m = row["more_subsets"][0]["merges"]["ties"]
    line = next(x for x in text.splitlines() if x.startswith("| rmu | tiny | a+b+c+d | a+b+c+d (4) | a+b+c+d-k2 (2) | ties |"))
    assert f"| {m['mean']:+.1f} [{m['low']:+.1f}, {m['high']:+.1f}] | **helps** | 3 |" in line
    one = write_outputs({("knowledge", "rmu", "tiny"): units[:3]}, plan, settings, tmp_path / "one", plan_markdown="# Frontier plan",
                        seconds=1.0, quick=False)
    assert "## More subsets" not in render(one)


def test_the_more_subsets_plan_runs_rmu_on_four_domains_as_k4_and_k2(tmp_path):
    plan = frontiers.load_plan(REPO / "bench" / "plans" / "more-subsets-rmu-smollm2.yaml")
    assert plan["runs"] == (REPO / "runs" / "more-subsets").resolve()
    assert plan["results"] == (REPO / "bench" / "results" / "more-subsets" / "rmu").resolve()
    plan["runs"] = tmp_path  # the derived file goes here, not into the repository's runs folder
    (k4, k2), settings = frontiers.select(plan, quick=False, only={})
    assert (k4.k, k2.k, k4.pair, k2.subsets) == (4, 2, tuple(FOUR), tuple(map(tuple, PAIRS)))
    assert settings.seeds == [0, 1, 2] and settings.for_method("rmu").merges == ["ties"]
    assert plan["refine"] == {"extra_points": 2}  # adaptive λ: the sweeps were calibrated on pairs
    kept = {r["domain"] for _, r in _rows(FACTS)} - set(FOUR)
    assert kept == {"continents", "opposites"}
