"""`spunge split`: counts against an independent count, manifest, safe names, every refusal."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spunge_merge.cli import app
from spunge_merge.data.loading import load_subsets
from spunge_merge.data.split import safe_name
from spunge_merge.fsutil import sha256_file

runner = CliRunner()
PAPER_GROUPS = ["mexican", "women", "muslim", "lgbtq", "physical_dis"]


def spunge(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_paper_split_counts_match_independent_count(shared_data, tmp_path):
    source = shared_data / "toxigen" / "annotated" / "annotated_train.jsonl"
    out = tmp_path / "split"
    result = spunge("split", source, "--by", "target_group", "--where", "toxicity_human >= 3",
                    "--values", ",".join(PAPER_GROUPS), "--out", out)
    assert result.exit_code == 0, result.output

    # Independent count with pandas, straight from the file.
    import pandas as pd

    frame = pd.read_json(source, lines=True)
    expected = frame[frame.toxicity_human >= 3].target_group.value_counts()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["sha256"] == sha256_file(source)
    assert manifest["column"] == "target_group"
    assert manifest["values"] == PAPER_GROUPS
    assert manifest["filters"][0]["expr"] == "toxicity_human >= 3"
    assert manifest["text_column"] == "text"
    for entry in manifest["subsets"]:
        rows = read_jsonl(out / entry["file"])
        assert len(rows) == entry["rows"] == expected[entry["value"]]
        assert {r["target_group"] for r in rows} == {entry["value"]}
        assert min(r["toxicity_human"] for r in rows) >= 3
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{g}.jsonl" for g in PAPER_GROUPS] + ["manifest.json"])
    for group in PAPER_GROUPS:
        assert group in result.output


def test_all_values_csv_and_parquet(tiny_dataset, tmp_path):
    import pandas as pd

    csv = tmp_path / "data.csv"
    frame = pd.read_json(tiny_dataset, lines=True)
    frame.to_csv(csv, index=False)
    out = tmp_path / "split"
    result = spunge("split", csv, "--by", "group", "--where", "score < 3", "--format", "parquet", "--out", out)
    assert result.exit_code == 0, result.output
    expected = Counter(frame[frame.score < 3].group)
    for value, count in expected.items():
        assert len(pd.read_parquet(out / f"{value}.parquet")) == count
    subsets = load_subsets(out)
    assert {s.value: len(s.texts) for s in subsets} == dict(expected)


def test_saved_dataset_dir(tiny_dataset, tmp_path):
    import datasets

    saved = tmp_path / "saved"
    datasets.load_dataset("json", data_files=str(tiny_dataset), split="train").save_to_disk(str(saved))
    result = spunge("split", saved, "--by", "group", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").glob("*.jsonl")) == ["alpha.jsonl", "beta.jsonl", "gamma.jsonl"]


@pytest.mark.parametrize("value", ["../x", "a/b", "..", ".hidden", "/etc/passwd", "a b", "ä"])
def test_safe_name_stays_inside(value, tmp_path):
    name = safe_name(value)
    assert "/" not in name and not name.startswith(".")
    assert (tmp_path / name).resolve().parent == tmp_path.resolve()


def test_hostile_values_written_inside_out_dir(tmp_path):
    rows = [{"text": f"t{i}", "g": g} for i, g in enumerate(["../x", "a/b", "a_b", "a/b"])]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "nested" / "out"
    result = spunge("split", data, "--by", "g", "--out", out)
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in out.iterdir())
    assert len(written) == 4  # three distinct values + manifest, names kept distinct
    assert not (tmp_path / "nested" / "x.jsonl").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert {e["value"]: e["rows"] for e in manifest["subsets"]} == {"../x": 1, "a/b": 2, "a_b": 1}


def assert_refused(result, out: Path, *fragments: str):
    assert result.exit_code == 2, result.output
    message = result.output.strip().splitlines()
    assert len(message) == 1 and message[0].startswith("Error:"), result.output
    for fragment in fragments:
        assert fragment in message[0]
    assert not out.exists() or not any(out.iterdir())
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


def test_unknown_column_lists_columns(tiny_dataset, tmp_path):
    out = tmp_path / "out"
    assert_refused(spunge("split", tiny_dataset, "--by", "nope", "--out", out), out, "'nope'", "group", "score")


def test_filter_on_non_numeric_column(tiny_dataset, tmp_path):
    out = tmp_path / "out"
    assert_refused(spunge("split", tiny_dataset, "--by", "group", "--where", "text >= 3", "--out", out), out, "not numeric")


def test_filter_on_unknown_column(tiny_dataset, tmp_path):
    out = tmp_path / "out"
    assert_refused(spunge("split", tiny_dataset, "--by", "group", "--where", "nope >= 3", "--out", out), out, "'nope'")


def test_requested_value_missing(tiny_dataset, tmp_path):
    out = tmp_path / "out"
    assert_refused(spunge("split", tiny_dataset, "--by", "group", "--values", "alpha,delta", "--out", out),
                   out, "'delta'", "alpha, beta, gamma")


def test_empty_result(tiny_dataset, tmp_path):
    out = tmp_path / "out"
    assert_refused(spunge("split", tiny_dataset, "--by", "group", "--where", "score > 100", "--out", out),
                   out, "no rows left")


def test_non_utf8_file(tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_bytes(b'{"text": "caf\xe9", "g": "a"}\n')
    out = tmp_path / "out"
    assert_refused(spunge("split", data, "--by", "g", "--out", out), out, "bad.jsonl", "not UTF-8")


def test_unreadable_file(tmp_path):
    data = tmp_path / "broken.jsonl"
    data.write_text('{"text": "a", "g": \n')
    out = tmp_path / "out"
    assert_refused(spunge("split", data, "--by", "g", "--out", out), out, "broken.jsonl")


def test_missing_file(tmp_path):
    out = tmp_path / "out"
    assert_refused(spunge("split", tmp_path / "nope.jsonl", "--by", "g", "--out", out), out, "nope.jsonl")


def test_offline_hub_id_fails_cleanly(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    assert_refused(spunge("split", "someone/some-dataset", "--by", "g", "--out", out), out, "someone/some-dataset")


def test_non_empty_out_needs_force(tiny_dataset, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user file")
    result = spunge("split", tiny_dataset, "--by", "group", "--out", out)
    assert result.exit_code == 2 and "--force" in result.output
    assert (out / "keep.txt").read_text() == "user file"
    result = spunge("split", tiny_dataset, "--by", "group", "--out", out, "--force")  # a folder of the user's: never replaced
    assert result.exit_code == 2 and "holds files that spunge did not write" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    (out / "keep.txt").unlink()
    assert spunge("split", tiny_dataset, "--by", "group", "--out", out).exit_code == 0
    (out / "extra.txt").write_text("beside the split")
    result = spunge("split", tiny_dataset, "--by", "group", "--out", out, "--force")  # a split spunge wrote: replaced
    assert result.exit_code == 0, result.output
    assert not (out / "extra.txt").exists() and (out / "manifest.json").is_file()


# --------------------------------------------------------------------------------------- --by block:N


def test_blocks_are_numbered_in_the_source_order_before_the_filters(tmp_path):
    """TOFU's layout in miniature: 3 "authors" of 4 rows, one after another, plus 2 rows of a fourth; the filter
    drops rows afterwards, so every row keeps the block of its position in the file (counted independently here)."""
    rows = [{"question": f"q{i}", "answer": f"a{i}", "score": i % 3} for i in range(14)]
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "split"
    result = spunge("split", data, "--by", "block:4", "--where", "score != 1", "--text-column", "answer", "--out", out)
    assert result.exit_code == 0, result.output
    expected: dict[str, list[dict]] = {}
    for position, row in enumerate(rows):
        if row["score"] != 1:
            expected.setdefault(f"block-{position // 4:02d}", []).append({**row, "block": f"block-{position // 4:02d}"})
    manifest = json.loads((out / "manifest.json").read_text())
    assert [(s["value"], s["file"], s["rows"]) for s in manifest["subsets"]] == [
        (name, f"{name}.jsonl", len(kept)) for name, kept in sorted(expected.items())]
    assert [len(v) for _, v in sorted(expected.items())] == [3, 2, 3, 1]  # the filter thinned blocks, never shifted them
    for name, kept in expected.items():
        assert read_jsonl(out / f"{name}.jsonl") == kept  # every column kept, rows in file order
    assert manifest["column"] == "block" and manifest["text_column"] == "answer" and manifest["rows_in"] == 14
    assert manifest["discovery"] == {"method": "block", "size": 4, "column": "block", "rows_numbered": 14, "blocks": 4,
                                     "last_block_rows": 2, "numbered": "in the source's order, before the filters"}
    assert "14 rows numbered in the source's order before the filters: 4 blocks of 4; the last holds 2" in " ".join(result.output.split())
    assert {s.value: list(s.texts) for s in load_subsets(out)} == {n: [r["answer"] for r in kept] for n, kept in expected.items()}


def test_block_values_choose_authors_and_names_sort_in_file_order(tmp_path):
    from spunge_merge.data.discovery.blocks import block_labels

    labels = block_labels(1010, 10)  # 101 blocks: three digits, so that sorted names are the file's order
    assert labels[0] == "block-000" and labels[-1] == "block-100" and sorted(set(labels)) == list(dict.fromkeys(labels))
    assert block_labels(5, 5) == ["block-00"] * 5 and block_labels(3, 1) == ["block-00", "block-01", "block-02"]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": f"t{i}"}) + "\n" for i in range(6)), encoding="utf-8")
    out = tmp_path / "out"
    result = spunge("split", data, "--by", "block:2", "--values", "block-02,block-00", "--label-column", "author", "--out", out)
    assert result.exit_code == 0, result.output
    assert [read_jsonl(out / f"block-0{b}.jsonl") for b in (2, 0)] == [
        [{"text": "t4", "author": "block-02"}, {"text": "t5", "author": "block-02"}],
        [{"text": "t0", "author": "block-00"}, {"text": "t1", "author": "block-00"}]]
    assert not (out / "block-01.jsonl").exists()
    # `column:block` is a column named block, not blocks
    assert "no column 'block'" in spunge("split", data, "--by", "column:block", "--out", tmp_path / "none").output
