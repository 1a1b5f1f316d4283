"""The pipeline file: one YAML describing split → unlearn → merge → eval (+ baseline, push).

Validated by pydantic models that are frozen and reject unknown keys, so a typo is an error
that names its key (`unlearn.config.lr: ...`), never a silently ignored setting. The method's
hyperparameters are validated once, here, into the method's own settings object (its registry
record's `config_class`, found by `unlearn.method`: the registry is open to plug-ins, so this is a
validator rather than a static union): `unlearn.config` is that object, each
`unlearn.overrides.<subset>` is it with the subset's changes applied, and `baseline.config` with
the un-split run's. Later stages and the jobs carry these objects as they are.

Relative paths in the file are relative to the file's own directory (so a recipe runs from any
working directory); a value that is not an existing path relative to it (a Hub id, a model alias)
is kept as written.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    SerializeAsAny,
    StrictInt,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from spunge_merge.card.task import Task
from spunge_merge.config import FrozenConfig, format_validation_error, load_pipeline_yaml, reattribute
from spunge_merge.data.discovery.spec import BlockBy, ClassifierBy, ClusterBy, build_by, by_forms_text
from spunge_merge.errors import SpungeError
from spunge_merge.evaluate import registry as eval_registry
from spunge_merge.evaluate.screen import ScreenConfig
from spunge_merge.merge.settings import Lambda, MergeOptions
from spunge_merge.unlearn import registry

STAGES = ("split", "unlearn", "baseline", "merge", "eval", "push")
MODEL_ROLES = ("base", "baseline", "spunge")


# A method's settings object: the registered method's `config_class`, dumped with all of its fields.
MethodConfig = SerializeAsAny[FrozenConfig]


def apply_changes(config: FrozenConfig, changes: Mapping[str, Any]) -> FrozenConfig:
    """`config` with `changes`, validated again by its own class; the keys given stay the ones set (fingerprints)."""
    return type(config).model_validate({**config.model_dump(exclude_unset=True), **changes})


def _changed(config: FrozenConfig, by_name: Mapping[str, Any]) -> dict[str, FrozenConfig]:
    """`config` with each name's changes, validated in one go so that an error is located at `NAME.KEY`."""
    values = {name: {**config.model_dump(exclude_unset=True), **changes} if isinstance(changes, Mapping) else changes
              for name, changes in by_name.items()}
    return TypeAdapter(dict[str, type(config)]).validate_python(values)


def _as_list(value: Any) -> Any:
    """Accept a scalar where a list is expected (`lambda: 1.0` → `[1.0]`)."""
    if value is None or isinstance(value, list | tuple):
        return value
    return [value]


class DataRef(FrozenConfig):
    """A table of texts: a local file (jsonl/json/csv/parquet/txt), a saved `datasets` dir, or a Hub id.

    `where` filters rows (same grammar as `spunge split --where`); `limit` keeps the first rows
    after filtering (for quick runs).
    """

    path: str = Field(..., description="File, directory or Hub dataset id.")
    config: str | None = Field(None, description="Hub dataset configuration name (e.g. cyber-forget-corpus).")
    hub_split: str = Field("train", description="Split to read from a Hub dataset or a DatasetDict.")
    where: list[str] = Field(default_factory=list, description="Row filters COLUMN OP VALUE, all must hold.")
    text_column: str = Field("text", description="Column holding the text.")
    limit: int | None = Field(None, ge=1, description="Keep at most this many rows (after filtering).")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value

    @field_validator("where", mode="before")
    @classmethod
    def _where_list(cls, value: Any) -> Any:
        return _as_list(value)


class SplitSection(FrozenConfig):
    """Either split one table by a column (`data` + `by`), or give one data source per subset (`subsets`).

    `by` may also derive the attribute: `block:20` / `{block: {size: 20}}` (row position, numbered
    before `data.where`: TOFU's authors), `cluster` / `{cluster: {k: 5}}` (k-means over sentence
    embeddings) or `{classifier: {model: DIR, labels: [...], threshold: 0.5}}` (see docs/discovery.md).
    """

    data: DataRef | None = Field(None, description="The unlearning data to split.")
    by: str | BlockBy | ClusterBy | ClassifierBy | None = Field(
        None, description=f"What defines the subsets: {by_forms_text()}; or the mapping forms "
                          "{block: {...}}, {cluster: {...}}, {classifier: {...}}.")
    values: list[str] | None = Field(None, description="Values to keep, in this order (default: all).")
    subsets: dict[str, DataRef] | None = Field(None, description="Pre-split data: subset name → data source.")
    attribute: str = Field("subset", description="Name recorded as the attribute when `subsets` is used.")

    @field_validator("by", mode="before")
    @classmethod
    def _by_form(cls, value: Any) -> Any:
        if value is None or isinstance(value, BlockBy | ClusterBy | ClassifierBy):
            return value
        try:
            return build_by(value, source="split.by")
        except SpungeError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("values", mode="before")
    @classmethod
    def _values_list(cls, value: Any) -> Any:
        value = _as_list(value)
        return [str(v) for v in value] if value is not None else None

    @model_validator(mode="after")
    def _one_form(self):
        if self.subsets is not None:
            if self.data is not None or self.by is not None:
                raise ValueError("give either `subsets`, or `data` with `by`, not both")
            if len(self.subsets) < 1:
                raise ValueError("`subsets` is empty")
        elif self.data is None or self.by is None:
            raise ValueError("give `data` and `by` (the column to split on), or `subsets`")
        elif isinstance(self.by, BlockBy) and self.data.limit is not None:
            raise ValueError("data.limit does not go with by block:N (blocks are numbered in the source's own order); "
                             "keep some blocks with `values` instead")
        return self


class Resources(FrozenConfig):
    """What one unlearning job needs: Ray schedules each job with these (the local executor ignores them)."""

    cpus: float = Field(1.0, gt=0, description="CPU cores per job (also its torch thread count under Ray).")
    gpus: float = Field(0.0, ge=0, description="GPUs per job (1 on a multi-GPU box: one subset per GPU).")


class UnlearnSection(FrozenConfig):
    method: str = Field(..., description="Unlearning method: a registered name (`spunge unlearn --help` lists them).")
    config: MethodConfig = Field(default_factory=dict, validate_default=True,
                                 description="Method hyperparameters (keys of the method's settings class).")
    overrides: dict[str, MethodConfig] = Field(default_factory=dict,
                                               description="Per-subset changes to `config`, keyed by subset name or value "
                                                           "(validated: each subset's whole settings).")
    retain: list[DataRef] | None = Field(None, description="Retain data, for methods that use it: one source for every run.")
    resources: Resources = Field(default_factory=Resources)

    @field_validator("method")
    @classmethod
    def _registered(cls, value: str) -> str:
        if value not in registry.method_names():
            raise ValueError(f"unknown unlearning method '{value}' (available: {', '.join(registry.method_names())})")
        return value

    @field_validator("config", mode="before")
    @classmethod
    def _method_config(cls, value: Any, info: ValidationInfo) -> Any:
        """The registered method's settings object (its errors are located at `unlearn.config.KEY`)."""
        if "method" not in info.data:
            return FrozenConfig()  # the method's own error is reported; its settings cannot be checked
        if isinstance(value, FrozenConfig):
            return value
        return registry.get_method(info.data["method"]).config_class.model_validate(value)

    @field_validator("overrides", mode="before")
    @classmethod
    def _subset_configs(cls, value: Any, info: ValidationInfo) -> Any:
        """Each subset's settings: `config` with the subset's changes (errors at `unlearn.overrides.NAME.KEY`)."""
        config = info.data.get("config")
        if config is None or type(config) is FrozenConfig:
            return {}  # the method's or the config's own error is reported
        return _changed(config, value) if isinstance(value, Mapping) else value

    @field_validator("retain", mode="before")
    @classmethod
    def _retain_list(cls, value: Any) -> Any:
        return _as_list(value)

    @model_validator(mode="before")
    @classmethod
    def _retain_as_the_method_always_needs(cls, value: Any) -> Any:
        """A method that always (or never) takes retain data is checked first: that error stands alone."""
        method = value.get("method") if isinstance(value, Mapping) else None
        if isinstance(method, str) and method in registry.method_names():
            record = registry.get_method(method)
            if record.retain != "optional" or record.uses_retain is None:
                _check_retain(method, record.retain, value.get("retain"), "")
        return value

    @model_validator(mode="after")
    def _retain_as_the_method_needs(self):
        method = registry.get_method(self.method)
        if method.retain == "optional" and method.uses_retain is not None:
            need = "required" if method.uses_retain(self.config) else "none"
            _check_retain(self.method, need, self.retain, " with these settings (see its retain weight)")
        return self


def _check_retain(method: str, need: str, retain: Any, with_these: str) -> None:
    if need == "required" and not retain:
        raise ValueError(f"method '{method}' needs `retain` data{with_these} (e.g. wikitext)")
    if need == "none" and retain:
        raise ValueError(f"method '{method}' uses no retain data{with_these}; remove `retain`")


class MergeSection(MergeOptions):
    """The merge settings of `spunge merge` (`MergeOptions`: one definition of each range), with a list of λ."""

    lambdas: list[Lambda] = Field([1.0], alias="lambda", min_length=1,
                                  description="Scale λ >= 0 of the merged task vector; a list builds one model per λ without retraining.")
    cuda: bool | None = Field(None, description="Merge on the GPU (default: when one is available).")

    @field_validator("lambdas", mode="before")
    @classmethod
    def _lambda_list(cls, value: Any) -> Any:
        return _as_list(value)


class BaselineSection(FrozenConfig):
    """The same method on the un-split union of the subsets, evaluated the same way (the paper's comparison)."""

    enabled: bool = Field(True, description="Train and evaluate the baseline.")
    config: MethodConfig = Field(default_factory=FrozenConfig,
                                 description="Changes to `unlearn.config` for the un-split run (paper TVN: lr 2e-5); validated: "
                                             "the un-split run's whole settings.")
    budget: Literal["matched", "config"] = Field(
        "matched", description="matched: as many optimizer steps as all split runs together; config: the settings as given.")
    lambdas: list[float] | None = Field(
        None, alias="lambda", description="Scales λ, one baseline model each, no retraining: TVN = the negation scale (default: the "
                                          "config's lam); RMU = base + λ·(run − base) (default: the run itself).")
    rmu_corpora: Literal["alternating", "union"] | None = Field(
        None, description="How the un-split run takes the subsets, where the method offers a choice (RMU: alternating = the "
                          "reference's multi-corpus run, one control vector per subset, a batch of each in turn; union = one "
                          "corpus of all subsets' texts). Default: the method's first (RMU alternating, others union).")

    @field_validator("lambdas", mode="before")
    @classmethod
    def _lambda_list(cls, value: Any) -> Any:
        return _as_list(value)


class EvalSection(FrozenConfig):
    """Which evaluations run on which models. Every registered evaluation (`spunge_merge.evaluate.registry`:
    knowledge, perplexity, toxicity, fluency, harness, and any registered since) is a key whose mapping
    is checked against the evaluation's config class when the file loads; `compare` holds the
    comparison's settings (`CompareConfig`). A setting the evaluation may take as a data source
    (`perplexity.data`) may also be a mapping with filters (path, where, ...)."""

    models: list[Literal["base", "baseline", "spunge"]] = Field(list(MODEL_ROLES), description="Models to evaluate.")
    device: str = Field("auto", description="cpu, cuda, cuda:N or auto.")
    chosen: dict[str, dict[str, Any]] = Field(default_factory=dict, exclude=True,
                                              description="The evaluations given, by name (gathered from the section's keys).")
    compare: dict[str, Any] = Field(default_factory=dict, description="compare_results keyword arguments (CompareConfig).")
    screen: ScreenConfig | None = Field(None, description="Two-stage sweep (`evaluate/screen.py`): the utility metric on every "
                                                          "model, the other evaluations only where the matched-utility read-out looks.")

    @model_validator(mode="before")
    @classmethod
    def _gather(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        if "chosen" in value:
            raise ValueError("`chosen` is not a setting: give each evaluation as its own key (knowledge: {...})")
        known = set(eval_registry.names())
        rest = {key: item for key, item in value.items() if key not in known}
        chosen = {key: item for key, item in value.items() if key in known and item is not None}
        for key, item in chosen.items():
            if not isinstance(item, dict):
                raise ValueError(f"{key}: expected a mapping of settings (e.g. {key}: {{...}})")
        return {**rest, "chosen": chosen}

    def __getattr__(self, name: str) -> Any:
        """`section.knowledge` is the `knowledge` mapping as given (None when not chosen)."""
        chosen = self.__dict__.get("chosen")
        if chosen is not None and not name.startswith("_") and name in eval_registry.names():
            return chosen.get(name)
        return super().__getattr__(name)

    @model_validator(mode="after")
    def _something(self):
        if not self.chosen:
            raise ValueError(f"no evaluation chosen: give at least one of {', '.join(eval_registry.names())}")
        for name in self.chosen:
            for earlier in eval_registry.get(name).after:
                if earlier not in self.chosen:
                    raise ValueError(f"{name} reads the output of {earlier} in the same folder: add a `{earlier}` section")
        if self.screen is not None:
            screened = self.screen.evaluation()
            if screened not in self.chosen:
                raise ValueError(f"screen: its metric {self.screen.metric} comes from {screened}: add a `{screened}` section")
            if "base" not in self.models:
                raise ValueError("screen: its targets are multiples of the base model's figure: evaluate base too (models)")
        return self


class PushSection(FrozenConfig):
    repo_id: str = Field(..., description="Hub repository for the merged model (user/name).")
    lam: float | None = Field(None, alias="lambda", description="Which merged model (its λ) to push (default: the first).")
    private: bool = True
    revision: str | None = None
    create_pr: bool = False
    commit_message: str | None = None
    dry_run: bool = Field(False, description="Check everything and list the files, upload nothing.")
    datasets: list[str] | None = Field(None, description="Hub dataset ids for the model card's metadata.")
    exclude: list[str] | None = Field(None, description="Globs of files to leave out of the upload.")
    runs: bool = Field(False, description="Also push every per-subset run, each to `REPO-<subset>` (adapters as they are, "
                                          "tensor-delta runs materialized on the base).")
    task: Task | None = Field(
        None, description="What was unlearned, for the cards' warning and usage example (default: inferred).")


class RaySection(FrozenConfig):
    address: str | None = Field(None, description="Ray cluster address (`auto`, `ray://host:10001`); none = start a local Ray.")
    runtime_env: dict[str, Any] | None = Field(None, description="Ray runtime_env passed to ray.init.")


class RuntimeSection(FrozenConfig):
    """Where and in what precision the whole pipeline runs: one setting read by unlearn, baseline,
    merge (its `cuda` flag and dtype) and eval (see pipeline/runtime.py). A stage's own setting wins
    (`unlearn.config.dtype`, `merge.dtype`, `merge.cuda`, `eval.device`)."""

    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$",
                        description="cpu, cuda, cuda:N or auto (CUDA when available) for every stage.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Model dtype for every stage: auto (bf16 on CUDA, fp32 on CPU; merge: the base's), float32, bfloat16, float16.")


class Pipeline(FrozenConfig):
    """A whole Spunge experiment (see module docstring)."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Run name; the default run dir is runs/<name>.")
    description: str | None = None
    model: str = Field(..., description="Base model: alias (smollm2-135m), local directory, or Hub id.")
    run_dir: str | None = Field(None, description="Where everything is written (default: runs/<name> under the current directory).")
    executor: Literal["local", "ray"] = "local"
    ray: RaySection = Field(default_factory=RaySection)
    split: SplitSection
    unlearn: UnlearnSection
    merge: MergeSection = Field(default_factory=MergeSection)
    baseline: BaselineSection = Field(default_factory=dict, validate_default=True)
    eval: EvalSection
    push: PushSection | None = None
    seeds: list[Annotated[StrictInt, Field(ge=0)]] | None = Field(
        None, description="Run every arm once per seed (unlearning seeds set to each) into run_dir/seeds/<seed>/, and "
                          "report means, spreads and Spunge − baseline intervals over seeds and prompts (see docs/seeds.md).")

    @field_validator("baseline", mode="before")
    @classmethod
    def _baseline_config(cls, value: Any, info: ValidationInfo) -> Any:
        """`baseline.config`: `unlearn.config` with the un-split run's changes (errors at `baseline.config.KEY`)."""
        unlearn = info.data.get("unlearn")
        if not isinstance(value, Mapping) or isinstance(value.get("config"), FrozenConfig):
            return value
        if unlearn is None or type(unlearn.config) is FrozenConfig:
            return {**value, "config": FrozenConfig()}  # unlearn's own error is reported
        return {**value, "config": _changed(unlearn.config, {"config": value.get("config") or {}})["config"]}

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and not value:
            raise ValueError("give at least one seed, or leave `seeds` out for a single run")
        if value is not None and len(set(value)) != len(value):
            raise ValueError(f"seed {next(s for s in value if value.count(s) > 1)} is listed twice")
        return value
    runtime: RuntimeSection = Field(default_factory=RuntimeSection)

    @model_validator(mode="after")
    def _consistent(self):
        offered = registry.get_method(self.unlearn.method).baseline_corpora
        if self.baseline.rmu_corpora is not None and self.baseline.rmu_corpora not in offered:
            raise ValueError(f"baseline.rmu_corpora: method '{self.unlearn.method}' runs the baseline on the subsets "
                             f"as {' or '.join(offered)} only")
        if self.push is not None and self.push.lam is not None and self.push.lam not in self.merge.lambdas:
            raise ValueError(f"push.lambda {self.push.lam} is not one of merge.lambda {self.merge.lambdas}")
        return self


# ------------------------------------------------------------------------------------------------
# Loading


def baseline_corpora(pipeline: Pipeline) -> str:
    """How the un-split run takes the subsets: as given, else the method's default."""
    return pipeline.baseline.rmu_corpora or registry.get_method(pipeline.unlearn.method).baseline_corpora[0]


def _prefixed(exc: ValidationError, prefix: str, source: str) -> str:
    problems = []
    for error in exc.errors():
        location = ".".join([prefix, *(str(part) for part in error["loc"])])
        problems.append(f"{location}: {error['msg']}")
    return f"{source}: " + "; ".join(problems)


def check_override_names(pipeline: Pipeline, source: str) -> None:
    """Each `unlearn.overrides` key names a subset, where the file lists them (`split.values` or `split.subsets`)."""
    if pipeline.split.values is not None:
        names = set(pipeline.split.values)
        unknown = sorted(set(pipeline.unlearn.overrides) - names)
        if unknown:
            listed = ", ".join(pipeline.split.values)
            raise SpungeError(f"{source}: unlearn.overrides.{unknown[0]}: no such subset (split.values: {listed})")
    if pipeline.split.subsets is not None:
        unknown = sorted(set(pipeline.unlearn.overrides) - set(pipeline.split.subsets))
        if unknown:
            listed = ", ".join(pipeline.split.subsets)
            raise SpungeError(f"{source}: unlearn.overrides.{unknown[0]}: no such subset (split.subsets: {listed})")


def _check_eval_kwargs(pipeline: Pipeline, source: str) -> None:
    """Each eval section may only use its evaluation's settings, must give the required ones, and is validated
    by the evaluation's config class (a data-source setting given as a mapping is checked as a `DataRef`)."""
    from spunge_merge.evaluate.compare import CompareConfig

    for name, given in pipeline.eval.chosen.items():
        evaluation = eval_registry.get(name)
        allowed = evaluation.settable()
        unknown = sorted(set(given) - allowed)
        if unknown:
            raise SpungeError(f"{source}: eval.{name}.{unknown[0]}: unknown setting (allowed: {', '.join(sorted(allowed))})")
        missing = sorted(evaluation.required() - set(given))
        if missing:
            raise SpungeError(f"{source}: eval.{name}.{missing[0]}: required")
        values = dict(given)
        for key in evaluation.data_settings:
            if isinstance(values.get(key), dict):
                try:
                    values[key] = DataRef.model_validate(values[key]).path
                except ValidationError as exc:
                    raise SpungeError(_prefixed(exc, f"eval.{name}.{key}", source)) from exc
        _validated(evaluation.config_class, values, f"eval.{name}", source)
    _validated(CompareConfig, pipeline.eval.compare, "eval.compare", source)


def _validated(cls: type[FrozenConfig], values: dict[str, Any], prefix: str, source: str) -> None:
    try:
        cls.model_validate(values)
    except ValidationError as exc:
        raise SpungeError(format_validation_error(exc, source, prefix=tuple(prefix.split(".")))) from exc


def parse_pipeline(data: Any, source: str = "pipeline") -> Pipeline:
    """Validate an already-parsed mapping (errors name the key path)."""
    if not isinstance(data, dict):
        raise SpungeError(f"{source}: expected a mapping of sections at the top level (model, split, unlearn, ...)")
    try:
        pipeline = Pipeline.model_validate(data)
    except ValidationError as exc:
        raise SpungeError(format_validation_error(exc, source, data)) from exc
    try:
        check_override_names(pipeline, source)
        _check_eval_kwargs(pipeline, source)
    except SpungeError as exc:  # a value given by --set is blamed on the --set, not on the file
        raise SpungeError(reattribute(str(exc), source, data)) from exc
    return pipeline


def load_pipeline(path: str | Path) -> Pipeline:
    """Read and validate a pipeline YAML file."""
    path = Path(path)
    return parse_pipeline(load_pipeline_yaml(path), str(path))


def resolve_path(value: str, base_dir: Path) -> str:
    """A path written in the file, made absolute against the file's directory when it names a local path."""
    candidate = Path(value).expanduser()
    if candidate.is_absolute():
        return str(candidate)
    relative = base_dir / candidate
    if relative.exists() or value.startswith(("./", "../")):
        return str(relative.resolve())
    return value
