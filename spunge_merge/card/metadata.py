"""The model card's front matter (`ModelCardData`): Hub tags, the base model's licence, the relation to it, model-index.

Kept apart from the card's body (`card/__init__.py`), which gathers what the output directory records.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from spunge_merge.card import SPUNGE_TAGS, _read_json

# Licences of base models whose local copy carries no card (the built-in alias is converted from
# a GGUF file, so the upstream README with its `license:` is not on disk).
KNOWN_LICENSES = {"HuggingFaceTB/SmolLM2-135M-Instruct": "apache-2.0"}


def card_metadata(model_dir: Path, *, subject: str, base: dict, merge_method: str | None, methods: list[str], task: str,
                  dataset_ids: list[str], eval_results: list, title: str) -> ModelCardData:
    """The card's metadata: tags for the output `subject` (merged, adapter, model), its methods and `task`; the base
    model and its licence; `eval_results` (model-index, under `title`) when the card has figures."""
    extra_tags = {"merged": ["mergekit", "merge", *([merge_method] if merge_method else [])], "adapter": ["peft", "lora"],
                  "model": []}[subject]
    tags = list(dict.fromkeys([*SPUNGE_TAGS[:2], *extra_tags, *methods, task if task != "other" else "unlearning",
                               "text-generation"]))
    return ModelCardData(
        base_model=base["hub_id"],
        library_name="peft" if subject == "adapter" else "transformers",
        license=base_license(base, model_dir),
        datasets=dataset_ids or None,
        tags=tags,
        pipeline_tag="text-generation",
        base_model_relation={"merged": "merge", "adapter": "adapter", "model": "finetune"}[subject] if base["hub_id"] else None,
        model_name=title if eval_results else None,
        eval_results=eval_results or None,
    )


def base_license(base: dict, model_dir: Path) -> str | None:
    """The base model's licence: its local card, its config, or a known Hub model."""
    for directory in (base.get("path"),):
        if not directory:
            continue
        readme = Path(directory) / "README.md"
        if readme.is_file():
            try:
                license_ = ModelCard.load(readme).data.license
            except Exception:  # a malformed third-party card must not stop the push
                license_ = None
            if license_:
                return str(license_)
        config = _read_json(Path(directory) / "config.json")
        if isinstance(config, dict) and isinstance(config.get("license"), str):
            return config["license"]
    config = _read_json(model_dir / "config.json")
    if isinstance(config, dict) and isinstance(config.get("license"), str):
        return config["license"]
    return KNOWN_LICENSES.get(base.get("hub_id") or "")
