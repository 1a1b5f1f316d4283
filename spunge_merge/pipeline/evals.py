"""The evaluation of one model, as the pipeline runs it: every chosen evaluation into one folder.

Which evaluations exist, what a pipeline file may set for each (its config class), which settings
are local paths and in what order they run all come from the evaluation registry
(`spunge_merge.evaluate.registry`); the pipeline supplies the model, the output folder, the
device and `force`. The names below are live views of the registry, kept for the eval stage.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from spunge_merge.evaluate import registry
from spunge_merge.pipeline.jobs import resolved_model

ORDER = registry.NamesView()  # run order: an evaluation after those whose files it reads


class _PathSettings(Mapping):
    """name -> settings that name local files or directories (made absolute against the pipeline file's folder)."""

    def __getitem__(self, name: str) -> tuple[str, ...]:
        if name not in registry.names():
            raise KeyError(name)
        return registry.get(name).path_settings

    def __iter__(self) -> Iterator[str]:
        return iter(registry.names())

    def __len__(self) -> int:
        return len(registry.names())


PATH_ARGUMENTS = _PathSettings()


def accepted_keywords(section: str) -> set[str]:
    """Keys a pipeline file may give in `eval.<section>` (the config class's fields the pipeline does not supply)."""
    return registry.get(section).settable()


def required_keywords(section: str) -> set[str]:
    """Keys without a default that the pipeline does not supply (e.g. toxicity's `prompts`)."""
    return registry.get(section).required()


def evaluate_model(*, model_ref: str, model_path: str, out: str, evaluations: dict[str, dict[str, Any]],
                   force: dict[str, bool]) -> dict[str, Any]:
    """Run the chosen evaluations of one model into `out` (a job: see `jobs.run_job`)."""
    model = resolved_model(model_ref, model_path)
    out_dir = Path(out)
    summary: dict[str, Any] = {}
    for name in registry.names():
        if name not in evaluations:
            continue
        evaluation = registry.get(name)
        result = registry.run_evaluation(evaluation, model, out_dir, evaluations[name], force=force.get(name, False),
                                         progress=False)
        summary[name] = evaluation.headline(result)
    return {"summary": summary}


def headline(section: str, result: dict[str, Any]) -> Any:
    """The one figure of a result that the progress view and the report show."""
    return registry.get(section).headline(result) if section in registry.names() else None
