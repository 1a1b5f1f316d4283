"""The merge settings and their valid ranges, defined once.

`spunge merge` (its options), `merge_runs` (the library) and the pipeline file's `merge:` section
all validate through these classes, so a value is accepted or refused the same way everywhere:
density in (0, 1], λ >= 0, no NaN or infinity anywhere (`FrozenConfig`), and a dtype mergekit
can compute in.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from spunge_merge.config import FrozenConfig, Lambda

DEFAULT_METHOD = "ties"
# The dtypes mergekit computes in (mergekit.common.dtype_from_name, floating point only).
MERGE_DTYPES = ("float32", "bfloat16", "float16", "float64")

Density = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
Weight = Annotated[float, Field(allow_inf_nan=False)]
MergeDtype = Literal[MERGE_DTYPES]


_PIPELINE_ONLY = {"cli_flags": ["pipeline only"]}


class StatisticsSettings(FrozenConfig):
    """The statistics pass of data-dependent merges (`anchored_ls`): which inputs its Gram matrices are taken on."""

    retain_data: str | None = Field(None, description="Retain data file (text column `text`) for the anchor's Gram matrices "
                                                      "(default: the retain data the runs record).")
    inputs: Literal["base", "run"] = Field("base", json_schema_extra={"cli_flags": ["--gram-inputs"]},
                                           description="Whose activations: the base model's (default) or each run's.")
    rows: int = Field(256, ge=1, json_schema_extra=_PIPELINE_ONLY, description="Rows read from each data set (the first ones).")
    max_length: int = Field(128, ge=2, json_schema_extra=_PIPELINE_ONLY, description="Tokens per row (longer rows are cut).")
    batch_size: int = Field(8, ge=1, json_schema_extra=_PIPELINE_ONLY, description="Rows per forward pass.")
    stats_dir: str | None = Field(None, description="Where statistics files are kept (default $SPUNGE_CACHE/merge-stats); "
                                                    "reused while model and data are unchanged.")


class MergeOptions(FrozenConfig):
    """What every merge takes, whichever way it is started (None = not given: the method's default)."""

    method: str = Field(DEFAULT_METHOD, min_length=1, description="mergekit merge method (paper: ties).")
    density: Density | list[Density] | None = Field(
        None, description="Fraction of each task vector kept, in (0, 1]: once for all runs or once per run (default 0.2).")
    weight: Weight | list[Weight] | None = Field(
        None, description="Weight of each run's task vector: once for all runs or once per run (default 1.0).")
    normalize: bool | None = Field(None, description="TIES normalize (divide by the sum of the agreeing weights).")
    dtype: MergeDtype | None = Field(None, description=f"Merge dtype, one of {', '.join(MERGE_DTYPES)} "
                                                       "(default: the base weights' dtype).")
    parameters: dict[str, Any] | None = Field(None, description="Extra mergekit parameters, passed through.")
    statistics: StatisticsSettings | None = Field(None, description="Statistics pass of data-dependent merges (anchored_ls).")

    def at(self, lam: float | None, *, dtype: str | None = None) -> MergeSettings:
        """One merge's settings: these options (already validated, so not validated again) at scale `lam`,
        with `dtype` where these leave it unset (the pipeline's `merge:` section → one merged model)."""
        values = {name: getattr(self, name) for name in MergeOptions.model_fields}
        values["parameters"] = dict(values["parameters"] or {})
        values["dtype"] = values["dtype"] or dtype
        return MergeSettings.model_construct(**values, lam=lam)


class MergeSettings(MergeOptions):
    """What `spunge merge RUN...` and `merge_runs` turn into a recipe: one λ."""

    lam: Lambda | None = Field(None, description="λ >= 0 scaling the merged task vector (default 1.0); 0 gives the base model.")
    parameters: dict[str, Any] = Field(default_factory=dict, description="Extra mergekit parameters, passed through.")


OPTION_NAMES = {"lam": "--lambda", "method": "--method", "density": "--density", "weight": "--weight",
                "normalize": "--normalize", "dtype": "--dtype", "parameters": "--param",
                "statistics": "--retain-data"}


def merge_settings(**values: Any) -> MergeSettings:
    """`MergeSettings` from keyword values (None = not given); SpungeError naming the option otherwise."""
    from pydantic import ValidationError

    from spunge_merge.errors import SpungeError

    try:
        return MergeSettings.model_validate({key: value for key, value in values.items() if value is not None})
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            if error["type"] == "list_type" or (error["type"].startswith("float") and isinstance(error["input"], list)):
                continue  # the other member of a `float | list[float]` union did not match either
            field = str(error["loc"][0]) if error["loc"] else ""
            option = OPTION_NAMES.get(field, field)
            given = values.get(field)
            many = isinstance(given, list | tuple) and len(given) > 1
            where = "".join(f"[{part}]" for part in error["loc"][1:] if isinstance(part, int) and many)
            problems.append(f"{option}{where} {error['input']!r}: {error['msg']}")
        raise SpungeError("; ".join(dict.fromkeys(problems)) or str(exc).splitlines()[0]) from exc


_RECIPE_RANGES = {"density": Density, "weight": Weight, "lambda": Lambda}


def check_recipe_ranges(config, source: str) -> None:
    """A hand-written recipe's density, weight and lambda obey the same ranges as the options."""
    from pydantic import TypeAdapter, ValidationError

    from spunge_merge.errors import SpungeError
    from spunge_merge.merge.recipe import _leaves, _parameter_scopes

    for where, parameters, _ in _parameter_scopes(config):
        for name, kind in _RECIPE_RANGES.items():
            for leaf in _leaves((parameters or {}).get(name)):
                if leaf is None or isinstance(leaf, str | bool):
                    continue
                try:
                    TypeAdapter(kind).validate_python(leaf)
                except ValidationError as exc:
                    raise SpungeError(f"{source}: {where}.{name}: {exc.errors()[0]['msg']} (got {leaf!r})") from exc
