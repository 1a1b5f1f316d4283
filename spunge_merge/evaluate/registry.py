"""The evaluation contract: what an evaluation declares once, and the registry that is the only way in.

Every place that needs to know something about an evaluation (the pipeline's `eval` section and its
jobs, `spunge eval compare`, the model card, `spunge eval NAME`, the docs) asks the registry for the
evaluation's `Evaluation` record and reads the answer from it. Adding an evaluation is one module
that builds a record and passes it to `register`; the built-in ones are imported on first use (they
pull in torch). A third-party or test evaluation registers itself the same way.

Every evaluation runs through one skeleton, `run_evaluation` (see `results.py` for the files):
the record's `plan` reads the inputs and returns the fingerprint of this evaluation and a `compute`
step; a stored result with that fingerprint is returned as is, otherwise `compute` runs and its
files are staged and moved into the evaluation directory, the main JSON last, and listed in
`spunge.json`.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BeforeValidator

from spunge_merge.errors import SpungeError
from spunge_merge.fsutil import guard_output

if TYPE_CHECKING:
    from spunge_merge.config import FrozenConfig
    from spunge_merge.models import ResolvedModel

# Built-in evaluations: `spunge_merge/evaluate/<name>.py`, imported on first use.
BUILTIN_EVALUATIONS = ("knowledge", "perplexity", "toxicity", "fluency", "harness", "mia", "privleak", "extraction",
                       "truth_ratio", "relearn")


@dataclass(frozen=True)
class EvaluationRequest:
    """One call of an evaluation: the model (None only where the evaluation does not need it),
    its evaluation directory and the settings (validated by the record's config class)."""

    model: ResolvedModel | None
    out: Path
    config: Any
    progress: bool = True


@dataclass(frozen=True)
class Computed:
    """What `compute` produced: the main JSON (it carries `fingerprint`) and its companion files,
    name -> a writer that fills the given path (the skeleton stages them, main JSON last); a name
    whose writer is None is listed in `spunge.json` but not written this time (compare's radar without groups)."""

    result: dict[str, Any]
    files: dict[str, Callable[[Path], None] | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Planned:
    """The fingerprint of what was asked, and the work that produces it (run only when no stored result matches)."""

    fingerprint: str
    compute: Callable[[], Computed]


@dataclass(frozen=True)
class Column:
    """One column of `spunge eval compare`'s table, read from the evaluation's own result.

    `rank` orders the columns across evaluations (lower first); `digits` is how many decimals the table shows;
    `utility`: a measure of what the model can still do, which `spunge eval compare --arm` may put on the
    frontier's x axis (`--metric KEY`).
    """

    key: str
    header: str
    read: Callable[[dict[str, Any]], float | None]
    rank: int
    lower_is_better: bool = True
    digits: int = 2
    utility: bool = True


@dataclass(frozen=True)
class Evaluation:
    """Everything the rest of spunge may know about an evaluation.

    - `name`: what `spunge eval NAME` and a pipeline's `eval.NAME` call it; its result's `kind`.
    - `summary`: one line, shown by `spunge eval --help`.
    - `config_class`: frozen pydantic settings, every key a pipeline's `eval.NAME` may give (inputs such
      as `facts` or `prompts` included); each field's `description` is the help text and the docs table,
      its constraints the one definition of the valid range.
    - `plan(request)`: reads the inputs, returns `Planned` (fingerprint + compute); see `run_evaluation`.
    - `result_file`: the main JSON it writes into the evaluation directory (`<name>.json`).
    - `headline(result)`: the one figure the pipeline's progress view and report show.
    - `columns`: what `spunge eval compare` shows of it (none: it is listed but has no column).
    - `after`: evaluations whose files in the same directory it reads (fluency: toxicity's generations);
      they run first and a pipeline that chooses it must choose them.
    - `supplied`: settings the pipeline fills itself (a pipeline file may not give them).
    - `path_settings`: settings that name local files or directories (made absolute against the
      pipeline file's folder); `outer.inner` names a key inside a mapping setting.
    - `data_settings`: settings a pipeline file may also give as a data source with filters
      (`{path, where, ...}`); the pipeline writes the rows to a file and passes its path: their texts
      (the source's `text_column` as `text`), or for those also in `row_settings` whole rows, every
      column kept (truth_ratio's facts: question, answers, the list of perturbed answers).
    - `score_loaded(config, lm, tokenizer, device, rewrite=None)`: the same measurement of a model already in
      memory, {"domains": {name: {"accuracy": ...}}}; what `relearn` scores between attack steps (None: it
      cannot); `rewrite(item, items)` -> another prompt for each item (relearn's probes).
    """

    name: str
    summary: str
    config_class: type[FrozenConfig]
    plan: Callable[[EvaluationRequest], Planned]
    result_file: str
    headline: Callable[[dict[str, Any]], Any]
    columns: tuple[Column, ...] = ()
    after: tuple[str, ...] = ()
    supplied: frozenset[str] = frozenset()
    path_settings: tuple[str, ...] = ()
    data_settings: tuple[str, ...] = ()
    row_settings: tuple[str, ...] = ()
    score_loaded: Callable[..., dict[str, Any]] | None = None

    def validate_config(self, values: Mapping[str, Any], source: str):
        """The evaluation's settings from a mapping, with errors naming `source` and the key."""
        from pydantic import ValidationError

        from spunge_merge.config import format_validation_error

        try:
            return self.config_class.model_validate(dict(values))
        except ValidationError as exc:
            raise SpungeError(format_validation_error(exc, source)) from exc

    def settable(self) -> set[str]:
        """Keys a pipeline file may give in `eval.<name>`."""
        return set(self.config_class.model_fields) - set(self.supplied)

    def required(self) -> set[str]:
        """Keys a pipeline file must give (no default, not supplied by the pipeline)."""
        return {key for key, info in self.config_class.model_fields.items() if info.is_required()} - set(self.supplied)


_REGISTRY: dict[str, Evaluation] = {}


def register(evaluation: Evaluation) -> Evaluation:
    """Make `evaluation` available by name (`spunge eval NAME`, `eval.NAME` in pipelines, compare, the card)."""
    _REGISTRY[evaluation.name] = evaluation
    return evaluation


def unregister(name: str) -> None:
    """Remove an evaluation (tests that register a toy evaluation clean up with this)."""
    _REGISTRY.pop(name, None)


def _builtin_names() -> list[str]:
    return [name for name in BUILTIN_EVALUATIONS if importlib.util.find_spec(f"spunge_merge.evaluate.{name}") is not None]


def get(name: str) -> Evaluation:
    """The registered evaluation; a built-in one is imported on first use."""
    if name not in _REGISTRY and name in _builtin_names():
        importlib.import_module(f"spunge_merge.evaluate.{name}")
    if name not in _REGISTRY:
        raise SpungeError(f"unknown evaluation '{name}' (available: {', '.join(names())})")
    return _REGISTRY[name]


def names() -> list[str]:
    """Every evaluation in run order: built-in ones first (as declared), then any registered since,
    each after the evaluations it reads (`after`)."""
    declared = list(dict.fromkeys([*_builtin_names(), *_REGISTRY]))
    ordered: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in ordered:
            return
        if name in path:
            raise SpungeError(f"evaluation '{name}' reads its own output through `after` ({' -> '.join((*path, name))})")
        for earlier in get(name).after:
            visit(earlier, (*path, name))
        ordered.append(name)

    for name in declared:
        visit(name, ())
    return ordered


def all_evaluations() -> list[Evaluation]:
    """Every evaluation's record, in run order."""
    return [get(name) for name in names()]


def descriptions() -> dict[str, str]:
    """Every evaluation's one-line summary by name."""
    return {evaluation.name: evaluation.summary for evaluation in all_evaluations()}


def result_files() -> dict[str, str]:
    """name -> main JSON file of every evaluation (what `spunge eval compare` and the card read)."""
    return {evaluation.name: evaluation.result_file for evaluation in all_evaluations()}


def columns() -> list[tuple[Evaluation, Column]]:
    """Every comparison column with its evaluation, in table order."""
    found = [(evaluation, column) for evaluation in all_evaluations() for column in evaluation.columns]
    return sorted(found, key=lambda pair: pair[1].rank)


def card_metrics(result: Mapping[str, Any]) -> list[tuple[str, str, float, bool | None]]:
    """A result's figures for the model card and its `model-index`: (key, header, value, lower is better).

    Read through the evaluation's `columns`; an evaluation without columns gives its `headline` (a number,
    or a mapping of numbers such as knowledge's accuracy per domain). Unknown kinds give nothing."""
    kind = result.get("kind")
    if not isinstance(kind, str) or kind not in names():
        return []
    evaluation = get(kind)
    found: list[tuple[str, str, float, bool | None]] = []
    for column in evaluation.columns:
        value = column.read(dict(result))
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
            found.append((column.key, column.header, float(value), column.lower_is_better))
    if evaluation.columns:
        return found
    headline = evaluation.headline(dict(result))
    items = headline.items() if isinstance(headline, Mapping) else [(None, headline)]
    for sub, value in items:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
            key = f"{kind}_{sub}" if sub is not None else kind
            found.append((key, f"{kind} {sub}" if sub is not None else kind, float(value), None))
    return found


# ------------------------------------------------------------------------------------------------
# Live views: module constants that older readers import, always answering from the registry.


class NamesView(Sequence):
    """`names()` as a sequence that follows later registrations."""

    def __getitem__(self, index):
        return names()[index]

    def __iter__(self) -> Iterator[str]:
        return iter(names())

    def __len__(self) -> int:
        return len(names())

    def __repr__(self) -> str:
        return repr(tuple(names()))


class ResultFilesView(Mapping):
    """`result_files()` as a mapping that follows later registrations."""

    def __getitem__(self, key: str) -> str:
        return result_files()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(result_files())

    def __len__(self) -> int:
        return len(result_files())

    def __repr__(self) -> str:
        return repr(result_files())


# ------------------------------------------------------------------------------------------------
# The skeleton


def run_evaluation(evaluation: Evaluation, model: str | Path | ResolvedModel | None, out: str | Path,
                   config: FrozenConfig | Mapping[str, Any], *, force: bool = False, progress: bool = True) -> dict[str, Any]:
    """One evaluation of `model` into its evaluation directory `out`: fingerprint → stored result → compute
    → staged files → `spunge.json`. `config` may be a mapping (validated by the record's config class)."""
    from spunge_merge.models import ResolvedModel, resolve_model

    if not isinstance(config, evaluation.config_class):
        config = evaluation.validate_config(config, f"eval.{evaluation.name}")
    resolved = model if model is None or isinstance(model, ResolvedModel) else resolve_model(model)
    read = [resolved.path if resolved is not None else None, *(getattr(config, key, None) for key in evaluation.path_settings)]
    request = EvaluationRequest(model=resolved, out=Path(out), config=config, progress=progress)
    return finish(request.out, evaluation.name, evaluation.result_file, evaluation.plan(request), force=force, inputs=read)


def finish(out: Path, name: str, result_file: str, planned: Planned, *, force: bool,
           inputs: Iterable[str | Path | None] = ()) -> dict[str, Any]:
    """The stored result when it has `planned`'s fingerprint, else `planned.compute()` written safely.

    `inputs`: what the result is computed from (the model, data, result folders); `out` may not be, hold or lie
    in one of them. `force` replaces this evaluation's own files only, never the folder, so any folder may hold it.
    """
    from spunge_merge.evaluate.results import existing_result, record_evaluation, staged_files
    from spunge_merge.fsutil import write_json

    out = Path(out)
    guard_output(out, inputs=inputs)
    if (stored := existing_result(out, result_file, planned.fingerprint, force=force)) is not None:
        return stored
    computed = planned.compute()
    with staged_files(out, name) as stage:
        for file_name, write in computed.files.items():
            if write is not None:
                write(stage / file_name)
        write_json(stage / result_file, computed.result)
    record_evaluation(out, name=name, result=computed.result, files=[result_file, *computed.files])
    return computed.result


def _path_text(value: Any) -> Any:
    import os

    return os.fspath(value) if isinstance(value, os.PathLike) else value


# A setting that names a file or directory: written as text in YAML, a `Path` from Python; kept as given.
PathText = Annotated[str, BeforeValidator(_path_text)]
