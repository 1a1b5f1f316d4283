"""lm-eval task YAMLs for a facts file of `make_facts.py`: the WMDP form through the real harness.

One `multiple_choice` task per domain (the domain's `heldout` facts; the prompt as the question,
the file's 4 `options` as the choices, `label` as the target, metric acc) and one group per
model that averages them weighted by size. Run `python bench/knowledge/make_tasks.py
bench/knowledge/facts-smollm2-135m.jsonl` to write `bench/knowledge/tasks/smollm2-135m/`
(then `spunge eval harness --include-path bench/knowledge/tasks/smollm2-135m --tasks
spunge_knowledge_smollm2_135m ...`).

The task directory holds plain files only: per domain a YAML and the jsonl of its heldout facts
(`dataset_path: json`, `data_files` = that jsonl by absolute path, since the json loader resolves
a relative path against the working directory, not the YAML). No Python loader: Python would
write a `__pycache__` into the directory on first use, and `spunge eval harness` fingerprints
every file under `--include-path`. Because the paths are absolute the directories are generated
where they are used (not committed); the same facts file always gives the same files.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TASKS_ROOT = HERE / "tasks"
TASK_PREFIX = "spunge_knowledge"
DOC_COLUMNS = ("prompt", "answer", "options", "label")

TASK_YAML = """# Written by bench/knowledge/make_tasks.py from {facts_name} (sha256 {sha256}); regenerate, do not edit.
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{prompt}}}}"
doc_to_choice: "{{{{options}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

GROUP_YAML = """# Written by bench/knowledge/make_tasks.py from {facts_name} (sha256 {sha256}); regenerate, do not edit.
group: {group}
task:
{tasks}
aggregate_metric_list:
  - metric: acc
    aggregation: mean
    weight_by_size: true
metadata:
  version: 1.0
"""


def model_of(facts: Path) -> str:
    """`smollm2-135m` for `facts-smollm2-135m.jsonl`."""
    match = re.fullmatch(r"facts-(.+)\.jsonl", facts.name)
    if not match:
        raise ValueError(f"{facts}: expected a file named facts-<model>.jsonl")
    return match.group(1)


def names(model: str) -> tuple[str, str]:
    """(the group's name, the prefix of its task names) for a model alias."""
    group = f"{TASK_PREFIX}_{re.sub(r'[^0-9a-zA-Z]+', '_', model)}"
    return group, group + "_"


def write_tasks(facts: str | Path, root: str | Path = TASKS_ROOT) -> dict[str, object]:
    """Write `root/<model>/` (per domain with heldout facts: `<domain>.yaml` and `<domain>.jsonl`; and
    `_group.yaml`), replacing what was there; returns {"include_path", "group", "tasks" (domain -> task name)}."""
    import hashlib

    from spunge_merge.fsutil import atomic_write_text

    facts = Path(facts).resolve()
    model = model_of(facts)
    group, prefix = names(model)
    data = facts.read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    rows = [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]
    heldout = [r for r in rows if r["part"] == "heldout"]
    domains = list(dict.fromkeys(r["domain"] for r in heldout))
    if not domains:
        raise ValueError(f"{facts}: no heldout facts")
    folder = Path(root).resolve() / model
    folder.mkdir(parents=True, exist_ok=True)
    for stale in [*folder.glob("*.yaml"), *folder.glob("*.jsonl")]:
        stale.unlink()
    tasks = {}
    for domain in domains:
        tasks[domain] = prefix + domain
        docs = [{k: r[k] for k in DOC_COLUMNS} for r in heldout if r["domain"] == domain]
        atomic_write_text(folder / f"{domain}.jsonl", "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs))
        atomic_write_text(folder / f"{domain}.yaml", TASK_YAML.format(
            facts_name=facts.name, sha256=sha256, task=tasks[domain], data=json.dumps(str(folder / f"{domain}.jsonl"))))
    atomic_write_text(folder / "_group.yaml", GROUP_YAML.format(
        facts_name=facts.name, sha256=sha256, group=group, tasks="\n".join(f"  - {t}" for t in tasks.values())))
    return {"include_path": str(folder), "group": group, "tasks": tasks}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("facts", nargs="+", type=Path, help="facts-<model>.jsonl files written by make_facts.py")
    parser.add_argument("--root", type=Path, default=TASKS_ROOT, help="folder that receives <model>/ task directories")
    args = parser.parse_args(argv)
    for facts in args.facts:
        written = write_tasks(facts, args.root)
        print(f"{facts}: group {written['group']}, {len(written['tasks'])} tasks in {written['include_path']}")


if __name__ == "__main__":
    sys.exit(main())
