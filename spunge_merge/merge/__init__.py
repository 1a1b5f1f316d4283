"""`spunge merge`: merge per-attribute unlearned models with mergekit (TIES by default).

- `inputs`: which runs to merge, their kind and base model.
- `views`: each TVN adapter / RMU delta as a model directory sized by what it changed.
- `recipe`: the mergekit YAML recipe, written and checked.
- `runner`: running a recipe, copying what no run changed and streaming the output.
- `shards`, `tensorfiles`: safetensors written tensor by tensor, and read by byte range.
- `api`: `merge_runs` and `merge_recipe`, the stage's public functions.
"""

from spunge_merge.merge.api import DEFAULT_SHARD_SIZE, merge_recipe, merge_runs

__all__ = ["DEFAULT_SHARD_SIZE", "merge_recipe", "merge_runs"]
