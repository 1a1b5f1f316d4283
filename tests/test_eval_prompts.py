"""ToxiGen prompt files: parsing of the real files (every quirk in the data README) and sampling."""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import pytest

from spunge_merge.errors import SpungeError
from spunge_merge.evaluate.prompts import (
    build_prompt,
    canonical_group,
    load_prompts,
    parse_prompt_line,
    read_prompt_file,
    sample_prompts,
)

# "statements per line (count of lines)" column of ../shared/data/toxigen/README.md: an independent count.
README_STATEMENTS = {
    "hate_asian": {6: 1000}, "hate_bisexual": {4: 141, 5: 859}, "hate_black": {6: 1000}, "hate_chinese": {6: 1000},
    "hate_immigrant": {4: 218, 5: 782}, "hate_jewish": {6: 1000}, "hate_latino": {6: 1000}, "hate_lgbtq": {6: 1000},
    "hate_mental_disability": {6: 1000}, "hate_mexican": {6: 1000}, "hate_middle_east": {6: 1000},
    "hate_muslim": {6: 1000}, "hate_native_american": {5: 1000}, "hate_physical_disability": {6: 1000},
    "hate_trans": {6: 1000}, "hate_women": {6: 1000}, "neutral_asian": {6: 1000}, "neutral_bisexual": {4: 225, 5: 775},
    "neutral_black": {6: 1000}, "neutral_chinese": {6: 1000}, "neutral_immigrant": {5: 1000}, "neutral_jewish": {6: 1000},
    "neutral_latino": {5: 1000}, "neutral_lgbtq": {6: 1000}, "neutral_mental_disability": {6: 1000},
    "neutral_mexican": {6: 1000}, "neutral_middle_east": {6: 1000}, "neutral_muslim": {6: 1000},
    "neutral_native_american": {6: 1000}, "neutral_physical_disability": {6: 1000}, "neutral_women": {6: 1000},
}
SEP = "\\n"  # the two characters backslash + n that separate statements in the files


@pytest.fixture(scope="module")
def prompt_dir(shared_data):
    return shared_data / "toxigen" / "prompts"


@pytest.fixture(scope="module")
def all_prompts(prompt_dir):
    return load_prompts(prompt_dir)


def _raw_lines(prompt_dir, stem):
    return (prompt_dir / f"{stem}_1k.txt").read_text(encoding="utf-8").splitlines()


def test_statement_counts_match_readme_table(prompt_dir):
    assert len(README_STATEMENTS) == 31
    for stem, expected in README_STATEMENTS.items():
        prompts = read_prompt_file(prompt_dir / f"{stem}_1k.txt")
        assert len(prompts) == 1000, stem
        assert dict(Counter(len(p.statements) for p in prompts)) == expected, stem


def test_statements_equal_the_independently_built_jsonl(shared_data, all_prompts):
    """toxigen_prompts.jsonl was built by the data README's own procedure: same statements per (group, label)."""
    expected = defaultdict(set)
    records = [json.loads(line) for line in (shared_data / "toxigen" / "toxigen_prompts.jsonl").open(encoding="utf-8")]
    assert len(records) == 722
    for record in records:
        expected[(record["target_group"], record["label"])].add(record["text"])
    parsed = defaultdict(set)
    for prompt in all_prompts:
        parsed[(prompt.group, prompt.label)].update(prompt.statements)
    assert parsed.keys() == expected.keys()
    for key in expected:
        assert parsed[key] == expected[key], key
    assert sum(len(v) for v in parsed.values()) == 722


def test_glued_final_dash(prompt_dir):
    for stem, open_item_lines in (("hate_bisexual", 974), ("hate_immigrant", 937), ("neutral_bisexual", 930)):
        raw = _raw_lines(prompt_dir, stem)
        assert sum(line.endswith(SEP + "-") for line in raw) == open_item_lines, stem
        glued = [line for line in raw if not line.endswith(SEP + "-")]
        assert glued and all(line.rstrip().endswith("-") for line in glued)
        for line in glued:
            statements = parse_prompt_line(line)
            last_raw = line.split(SEP)[-1].rstrip()
            assert statements[-1] == " ".join(last_raw[:-1].removeprefix("-").split()), line[-80:]
            assert not statements[-1].endswith("-")
    glued_example = "- first one\\n- the worst gay guys!-"
    assert parse_prompt_line(glued_example) == ["first one", "the worst gay guys!"]


def test_stray_escaped_backslash(prompt_dir):
    raw = _raw_lines(prompt_dir, "hate_black")
    quirky = [line for line in raw if "staple\\\\\\n" in line]  # staple + 3 backslashes + n
    assert quirky
    for line in quirky:
        statements = parse_prompt_line(line)
        assert len(statements) == 6
        assert any(s.endswith("staple") for s in statements)
        assert not any("\\" in s for s in statements)


def test_doubled_separator(prompt_dir):
    raw = _raw_lines(prompt_dir, "hate_lgbtq")
    quirky = [line for line in raw if "families\\\\n\\n-" in line]
    assert len(quirky) == 54
    for line in quirky:
        statements = parse_prompt_line(line)
        assert len(statements) == 6 and all(statements)
        assert any(s.endswith("families") for s in statements)
        assert not any("\\" in s for s in statements)


def test_trailing_spaces_and_whitespace(prompt_dir, all_prompts):
    raw = _raw_lines(prompt_dir, "neutral_mexican")
    assert sum(f" {SEP}" in line for line in raw) > 0
    for prompt in all_prompts:
        for statement in prompt.statements:
            assert statement == statement.strip() and "  " not in statement
            assert "\\" not in statement and not statement.startswith("-")


def test_non_ascii_and_case_preserved(all_prompts):
    statements = {s for p in all_prompts for s in p.statements}
    assert any("\u2019" in s for s in statements)  # ’
    assert any("\u2014" in s for s in statements)  # —
    bisexual = [s for p in all_prompts if p.group == "bisexual" for s in p.statements]
    assert sum(any(c.isupper() for c in s) for s in bisexual) > len(bisexual) // 2


def test_prompt_text_is_a_clean_open_list(all_prompts):
    for prompt in all_prompts[::97]:
        assert prompt.text.startswith("- ") and prompt.text.endswith("\n-")
        assert prompt.text.count("\n") == len(prompt.statements)
        assert SEP not in prompt.text
        assert prompt.text == build_prompt(list(prompt.statements))


def test_groups_and_aliases(all_prompts):
    groups = {p.group for p in all_prompts}
    assert len(groups) == 16 and "physical_disability" in groups and "physical_dis" not in groups
    assert canonical_group("physical_dis") == "physical_disability"
    assert canonical_group("Mental_Dis") == "mental_disability"
    assert {p.label for p in all_prompts if p.group == "trans"} == {"hate"}


def test_sampling_is_deterministic_and_per_group_and_label(all_prompts):
    groups = ["mexican", "women", "muslim", "lgbtq", "physical_dis"]
    first = sample_prompts(all_prompts, groups=groups, n_per_group=20, seed=0)
    again = sample_prompts(all_prompts, groups=groups, n_per_group=20, seed=0)
    other = sample_prompts(all_prompts, groups=groups, n_per_group=20, seed=1)
    assert [p.id for p in first.prompts] == [p.id for p in again.prompts]
    assert [p.id for p in first.prompts] != [p.id for p in other.prompts]
    counts = Counter((p.group, p.label) for p in first.prompts)
    expected_groups = ["mexican", "women", "muslim", "lgbtq", "physical_disability"]
    assert counts == {(g, label): 20 for g in expected_groups for label in ("hate", "neutral")}
    assert len({p.text for p in first.prompts}) == len(first.prompts)  # distinct prompts
    # A group's sample does not depend on which other groups are sampled.
    alone = sample_prompts(all_prompts, groups=["women"], n_per_group=20, seed=0)
    assert [p.id for p in alone.prompts] == [p.id for p in first.prompts if p.group == "women"]
    # The alias names the same group.
    alias = sample_prompts(all_prompts, groups=["physical_disability"], n_per_group=20, seed=0)
    assert [p.id for p in alias.prompts] == [p.id for p in first.prompts if p.group == "physical_disability"]


def test_sampling_caps_at_the_distinct_prompts(prompt_dir, all_prompts):
    distinct_lines = len(set(_raw_lines(prompt_dir, "hate_native_american")))
    assert distinct_lines == 120  # data README: only 120 distinct lines
    sample = sample_prompts(all_prompts, groups=["native_american"], n_per_group=500, seed=3)
    assert sample.available["native_american"]["hate"] == distinct_lines
    assert Counter(p.label for p in sample.prompts)["hate"] == distinct_lines


def test_unknown_group_is_an_error(all_prompts):
    with pytest.raises(SpungeError, match="unknown group 'martians'.*physical_disability"):
        sample_prompts(all_prompts, groups=["women", "martians"], n_per_group=2, seed=0)


def test_loading_only_some_groups(prompt_dir, all_prompts):
    some = load_prompts(prompt_dir, ["physical_dis", "women"])
    assert [p.id for p in some] == [p.id for p in all_prompts if p.group in ("physical_disability", "women")]
    with pytest.raises(SpungeError, match="unknown group 'martians'"):
        load_prompts(prompt_dir, ["women", "martians"])


def test_wrong_prompt_file_formats(tmp_path):
    plain = tmp_path / "hate_women_1k.txt"
    plain.write_text("women are people\nsecond line\n", encoding="utf-8")
    with pytest.raises(SpungeError, match=r"hate_women_1k.txt:1: not a ToxiGen prompt line"):
        load_prompts(plain)
    named = tmp_path / "prompts.txt"
    named.write_text("- a\\n- b\\n-\n", encoding="utf-8")
    with pytest.raises(SpungeError, match="cannot tell group and label from the file name"):
        load_prompts(named)
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text(json.dumps({"text": "x", "target_group": "women"}) + "\n", encoding="utf-8")
    with pytest.raises(SpungeError, match="no string column 'prompt'"):
        load_prompts(jsonl)
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(SpungeError, match="no ToxiGen prompt files"):
        load_prompts(empty_dir)


def test_jsonl_prompts(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [{"prompt": f"- s{i}\n-", "group": "physical_dis" if i % 2 else "women", "label": "hate"} for i in range(6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    prompts = load_prompts(path)
    assert Counter(p.group for p in prompts) == {"physical_disability": 3, "women": 3}
    sample = sample_prompts(prompts, groups=None, n_per_group=2, seed=0)
    assert Counter(p.group for p in sample.prompts) == {"physical_disability": 2, "women": 2}
