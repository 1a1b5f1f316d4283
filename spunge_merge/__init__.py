"""spunge: attribute-aware LLM unlearning (Split, Unlearn, Merge; Kadhe et al., 2024).

Split an unlearning dataset by an attribute, unlearn each subset separately from the same
base model, merge the unlearned models with TIES through mergekit.
"""

__version__ = "0.1.0"
