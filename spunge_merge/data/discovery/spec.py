"""What `--by` (CLI) and `split.by` (pipeline) may say: a column, or how to derive the attribute.

`target_group` splits on a column; `block:N` numbers the rows in consecutive blocks of N (the
attribute implicit in the row order: TOFU's authors); `cluster` / `cluster:K` clusters sentence
embeddings; `classifier:MODEL` labels each row with a text-classification model (zero-shot with
candidate labels). `BY_FORMS` lists the forms once, for the CLI help, the pipeline schema and the
docs. The settings are frozen pydantic models: their field constraints are the one definition of
the valid ranges, and their descriptions are the help text. The words `block`, `cluster` and
`classifier` are reserved; `column:NAME` splits on a column that happens to be called so.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, StrictInt, ValidationError, field_validator, model_validator

from spunge_merge.config import FrozenConfig, format_validation_error
from spunge_merge.errors import SpungeError

EMBEDDING_ALIAS = "all-minilm-l6-v2"
UNSURE = "unsure"
BLOCK_PREFIX = "block-"

# The forms of `--by` / `split.by`, declared once: the CLI help and the pipeline schema join them, and
# tests/test_docs.py checks that docs/split.md names each.
BY_FORMS: tuple[tuple[str, str], ...] = (
    ("NAME", "a column whose values define the subsets (e.g. target_group)"),
    ("block:N", f"consecutive blocks of N rows in the source's own order, numbered before any filter, named "
                f"{BLOCK_PREFIX}00, {BLOCK_PREFIX}01, ... (TOFU's forget sets: block:20, one author each)"),
    ("cluster", "k-means over sentence embeddings, K by silhouette; cluster:K fixes K"),
    ("classifier:MODEL", "a local text-classification model's labels (zero-shot with --labels)"),
    ("column:NAME", "splits on a column literally named block, cluster or classifier"),
)


def by_forms_text() -> str:
    """`BY_FORMS` as one sentence (help text, schema description)."""
    return "; ".join(f"`{form}`: {meaning}" for form, meaning in BY_FORMS)


class ClusterSpec(FrozenConfig):
    """k-means on L2-normalised sentence embeddings; K fixed, or chosen by silhouette over `k_range`."""

    k: int | None = Field(None, ge=2, description="Number of clusters (default: chosen by silhouette over k_range).")
    k_range: tuple[int, int] = Field((2, 8), description="Smallest and largest K tried when k is not given.")
    seed: int = Field(0, ge=0, description="Seed of k-means (same seed, same split).")
    model: str = Field(EMBEDDING_ALIAS, description="Sentence-embedding model (alias, local directory or Hub id).")
    batch_size: int = Field(32, ge=1, description="Texts per embedding batch.")
    column: str = Field("cluster", min_length=1, description="Name of the column that receives the cluster label.")
    truth: str | None = Field(None, description="A column holding true labels: the report gives ARI and purity against it.")

    @field_validator("k_range", mode="before")
    @classmethod
    def _parse_range(cls, value: Any) -> Any:
        if isinstance(value, str):  # "2-8" or "2,8"
            parts = value.replace(",", "-").split("-")
            if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
                raise ValueError(f"expected LOW-HIGH (e.g. 2-8), got '{value}'")
            return (int(parts[0]), int(parts[1]))
        return value

    @model_validator(mode="after")
    def _range_order(self):
        low, high = self.k_range
        if low < 2 or high < low:
            raise ValueError(f"k_range {low}-{high}: need 2 <= LOW <= HIGH")
        return self


class ClassifierSpec(FrozenConfig):
    """Labels from a local text-classification model, or zero-shot (NLI model + candidate labels)."""

    model: str = Field(..., min_length=1, description="Text-classification model (local directory or Hub id).")
    labels: list[str] | None = Field(None, description="Candidate labels: zero-shot classification with an NLI model.")
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="Labels with a lower confidence are unsure.")
    unsure: Literal["keep", "drop"] = Field("keep", description=f"keep: unsure rows form the subset '{UNSURE}'; drop: leave them out.")
    hypothesis: str = Field("This example is {}.", description="Zero-shot hypothesis template ({} is the candidate label).")
    batch_size: int = Field(32, ge=1, description="Texts per batch.")
    column: str = Field("predicted_label", min_length=1, description="Name of the column that receives the label.")
    truth: str | None = Field(None, description="A column holding true labels: the report gives ARI and purity against it.")

    @field_validator("labels", mode="before")
    @classmethod
    def _labels_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        return value

    @model_validator(mode="after")
    def _labels_valid(self):
        if self.labels is not None:
            if len(set(self.labels)) < 2:
                raise ValueError("zero-shot needs at least two distinct candidate labels")
            if "{}" not in self.hypothesis:
                raise ValueError("hypothesis must contain {} where the label goes")
        return self


class BlockSpec(FrozenConfig):
    """Subsets from row position: the source's rows in consecutive blocks of `size`, numbered in its own order
    before any filter, so a row's block (TOFU: its author) is the same whatever filters follow."""

    size: StrictInt = Field(..., ge=1, description="Rows per block (TOFU's forget sets: 20 questions per author); the last "
                                                   "block holds the rows left over.", json_schema_extra={"cli_flags": ["block:N"]})
    column: str = Field("block", min_length=1, description=f"Name of the column that receives the block label "
                                                           f"({BLOCK_PREFIX}00, {BLOCK_PREFIX}01, ...).",
                        json_schema_extra={"cli_flags": ["--label-column"]})


class BlockBy(FrozenConfig):
    """`split.by: {block: {size: 20}}` (or `block:20`)."""

    block: BlockSpec


class ClusterBy(FrozenConfig):
    """`split.by: {cluster: {k: 5}}`."""

    cluster: ClusterSpec = Field(default_factory=ClusterSpec)

    @field_validator("cluster", mode="before")
    @classmethod
    def _empty(cls, value: Any) -> Any:
        return {} if value is None else value


class ClassifierBy(FrozenConfig):
    """`split.by: {classifier: {model: DIR, labels: [...], threshold: 0.5}}`."""

    classifier: ClassifierSpec


DiscoverBy = ClusterBy | ClassifierBy
By = str | BlockBy | ClusterBy | ClassifierBy
_KINDS = {"block": (BlockBy, BlockSpec), "cluster": (ClusterBy, ClusterSpec), "classifier": (ClassifierBy, ClassifierSpec)}


def parse_by_text(text: str, source: str = "--by") -> str | dict[str, Any]:
    """`block:N`, `cluster`, `cluster:K`, `classifier:MODEL`, `column:NAME` or a column name (as typed on the CLI)."""
    head, sep, rest = text.partition(":")
    if head == "column" and sep:
        return rest
    if head == "block":
        if not rest.strip():
            raise SpungeError(f"{source} {text}: give the rows per block (block:N, e.g. block:20); "
                              f"{source} column:block splits on a column named block")
        if not rest.strip().lstrip("-").isdigit():
            raise SpungeError(f"{source} {text}: N must be a whole number of rows (e.g. block:20)")
        return {"block": {"size": int(rest)}}
    if head == "cluster":
        if not sep:
            return {"cluster": {}}
        if not rest.strip().lstrip("-").isdigit():
            raise SpungeError(f"{source} {text}: K must be a whole number (e.g. cluster:5)")
        return {"cluster": {"k": int(rest)}}
    if head == "classifier":
        if not rest.strip():
            raise SpungeError(f"{source} {text}: name the model (classifier:MODEL)")
        return {"classifier": {"model": rest}}
    return text


def build_by(by: Any, options: dict[str, Any] | None = None, *, source: str = "--by") -> By:
    """Validate a `by` value (CLI text or pipeline mapping), adding the given discovery options.

    `options` are the discovery settings given separately (CLI flags); a flag that does not
    apply to the chosen form is an error, never silently ignored.
    """
    options = {k: v for k, v in (options or {}).items() if v is not None}
    value = parse_by_text(by, source) if isinstance(by, str) else by
    if isinstance(value, str):
        if options:
            raise SpungeError(f"{', '.join(_flag(k) for k in options)} only apply to --by cluster, classifier:MODEL or block:N")
        return value
    if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in _KINDS:
        raise SpungeError(f"{source}: expected a column name, {{block: {{size: N}}}}, {{cluster: {{...}}}} or {{classifier: {{...}}}}")
    kind = next(iter(value))
    settings = value[kind]
    if kind == "block" and not isinstance(settings, dict):
        settings = {"size": settings}  # `block: 20`
    if not isinstance(settings, dict | None):
        raise SpungeError(f"{source}: {kind}: expected a mapping of its settings, got {settings!r}")
    settings = dict(settings or {})
    by_cls, spec_cls = _KINDS[kind]
    if kind == "cluster" and "embedding_model" in options:
        options["model"] = options.pop("embedding_model")
    wrong = [k for k in options if k not in spec_cls.model_fields]
    if wrong:
        raise SpungeError(f"{', '.join(_flag(k) for k in wrong)} do(es) not apply to --by {kind}")
    settings.update(options)
    try:
        return by_cls.model_validate({kind: settings})
    except ValidationError as exc:
        raise SpungeError(format_validation_error(exc, f"{source} {kind}")) from None


def _flag(key: str) -> str:
    return {"threshold": "--min-confidence", "labels": "--labels", "k_range": "--k-range", "seed": "--seed",
            "unsure": "--unsure", "batch_size": "--batch-size", "truth": "--truth", "embedding_model": "--embedding-model",
            "column": "--label-column", "hypothesis": "--hypothesis"}.get(key, key)
