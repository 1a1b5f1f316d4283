"""The unlearning-method contract: what a method declares once, and the registry that is the only way in.

Every place that needs to know something about a method (the CLI's `spunge unlearn NAME`, the
pipeline schema, the jobs, the baseline's budget and model builder, the merge's view of a run, the
model card, the docs) asks the registry for the method's `UnlearningMethod` record and reads the
answer from it. No code outside a method's own module compares a method's name.

A method module builds one record and passes it to `register`; built-in methods are imported on
first use (they pull in torch). A third-party or test method registers itself the same way.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from spunge_merge.errors import SpungeError
from spunge_merge.fsutil import guard_output

if TYPE_CHECKING:
    from spunge_merge.config import FrozenConfig
    from spunge_merge.models import ResolvedModel

# What one run directory holds, which decides how merge and the baseline turn it into a model:
#   peft-adapter     adapter_config.json + adapter_model.safetensors; the adapter *is* the unlearned
#                    update (TVN stores its negation in it); λ scales the adapter's update.
#   tensor-delta     delta.safetensors with the new values of the tensors that changed (RMU, --full);
#                    λ scales (new − base).
#   full-checkpoint  a complete model directory (config.json + safetensors).
OutputKind = Literal["peft-adapter", "tensor-delta", "full-checkpoint"]
RetainNeed = Literal["required", "optional", "none"]

# Built-in methods: `spunge_merge/unlearn/<name>.py`, imported on first use. A name whose module is not
# in this installation is left out, so a method lands by adding its module (and its name here).
BUILTIN_METHODS = ("tvn", "rmu", "ga", "graddiff", "npo", "simnpo")


@dataclass(frozen=True)
class TrainRequest:
    """One call of a method's `train`: a single run, or one run per subset of a split directory.

    `forget` holds one data file or split directory, or several files (the reference's alternating
    multi-corpus RMU run takes one corpus per file). `retain` is empty for methods that need none.
    """

    model: ResolvedModel
    forget: Sequence[Path]
    out: Path
    config: FrozenConfig | Mapping[str, Any]  # a mapping is validated by the method's config_class
    retain: Sequence[Path] = ()
    text_column: str | None = None
    retain_text_column: str | None = None
    retain_where: Sequence[str] = ()  # row filters on the retain files (`--retain-where`, `spunge split --where` grammar)
    force: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        # Every method's runs go through a request: the one place to refuse an output over its inputs.
        guard_output(self.out, inputs=[self.model.path, *self.forget, *self.retain], force=self.force)


@dataclass(frozen=True)
class BaselineBudget:
    """The un-split run's settings, changed so that it takes as many optimizer steps as all split runs.

    `config` is a mapping of `config_class` keys: the baseline's settings as given, with the changes
    the budget needs (the pipeline validates it into the method's settings object for the job).
    """

    config: dict[str, Any]
    record: dict[str, Any]  # split_runs, split_total, baseline_planned, changed (shown in report.md)


@dataclass(frozen=True)
class UnlearningMethod:
    """Everything the rest of spunge may know about a method.

    - `name`: what `spunge unlearn NAME` and a pipeline's `unlearn.method` call it.
    - `summary`: one line, shown by `spunge unlearn --help`.
    - `description`: the model card's paragraph on the method (markdown, with its reference).
    - `config_class`: frozen pydantic settings; each field's `description` is the CLI help and the
      docs table, its constraints the one definition of the valid range. It has a `seed: int` field.
    - `retain`: whether a run needs retain data ("required"), may use it ("optional") or takes none.
    - `output_kind(config)`: the kind of run directory `train` writes with these settings.
    - `train(request)`: the runs, through `runs.execute_run`/`run_subsets` (resumable, atomic);
      returns their `RunOutcome`s. `request.config` may be a mapping: validate it with `config_class`.
    - `planned_steps(config, forget_texts, retain_texts)`: optimizer steps one run will take (texts,
      not counts: a method may drop some, e.g. RMU's `min_chars`).
    - `match_baseline(split_configs, split_texts, baseline, retain_texts, corpora)`: settings for the
      un-split run at the split runs' total step budget. `split_configs` and `split_texts` are keyed by
      subset name (settings as mappings); `baseline` is the un-split run's settings as given (a
      mapping); `corpora` is one of `baseline_corpora`.
    - `to_model(base, run, lam, out, scratch)`: a full model directory from one run at scale λ
      (None: the run's own); `scratch` is a private folder for intermediate files. `unlearn.outputs`
      has one for each output kind.
    - `default_lambda(config)`: the scale a run is applied at when none is given (None: the run's own).
    - `baseline_corpora`: how the un-split run may take the subsets: "union" (one corpus of all texts,
      one data file) or "alternating" (one corpus per subset, several data files in one `train`);
      the first is the default.
    - `uses_retain(config)`: for a method whose `retain` is "optional", whether these settings use retain
      data (NPO with a retain weight α > 0 does, with α = 0 it does not), so that a pipeline is refused
      before anything runs when it gives retain data the settings ignore, or none that they need.
    """

    name: str
    summary: str
    description: str
    config_class: type[FrozenConfig]
    retain: RetainNeed
    output_kind: Callable[[Any], OutputKind]
    train: Callable[[TrainRequest], list[Any]]
    planned_steps: Callable[[Any, Sequence[str], Sequence[str] | None], int]
    match_baseline: Callable[..., BaselineBudget]
    to_model: Callable[[ResolvedModel, Path, float | None, Path, Path], Path]
    default_lambda: Callable[[Any], float | None] = lambda config: None  # noqa: E731 - a default, not a definition
    baseline_corpora: tuple[str, ...] = ("union",)  # how the un-split run may take the subsets
    uses_retain: Callable[[Any], bool] | None = None

    def validate_config(self, values: dict[str, Any], source: str):
        """The method's settings from a mapping, with errors naming `source` and the key."""
        from pydantic import ValidationError

        from spunge_merge.config import format_validation_error

        try:
            return self.config_class.model_validate(values)
        except ValidationError as exc:
            raise SpungeError(format_validation_error(exc, source)) from exc


_REGISTRY: dict[str, UnlearningMethod] = {}


def register(method: UnlearningMethod) -> UnlearningMethod:
    """Make `method` available by name (`spunge unlearn NAME`, `unlearn.method: NAME` in pipelines)."""
    _REGISTRY[method.name] = method
    return method


def unregister(name: str) -> None:
    """Remove a method (tests that register a toy method clean up with this)."""
    _REGISTRY.pop(name, None)


def get_method(name: str) -> UnlearningMethod:
    """The registered method; a built-in one is imported on first use."""
    if name not in _REGISTRY and name in _builtin_names():
        importlib.import_module(f"spunge_merge.unlearn.{name}")
    if name not in _REGISTRY:
        raise SpungeError(f"unknown unlearning method '{name}' (available: {', '.join(method_names())})")
    return _REGISTRY[name]


def method_names() -> list[str]:
    """Every method spunge knows: the built-in ones and any registered since."""
    return sorted(set(_builtin_names()) | set(_REGISTRY))


def _builtin_names() -> list[str]:
    return [name for name in BUILTIN_METHODS if importlib.util.find_spec(f"spunge_merge.unlearn.{name}") is not None]


def all_methods() -> list[UnlearningMethod]:
    """Every method's record, built-in ones imported."""
    return [get_method(name) for name in method_names()]


def descriptions() -> dict[str, str]:
    """Every method's model-card paragraph by name (the card and the Hub push take this mapping)."""
    return {method.name: method.description for method in all_methods()}
