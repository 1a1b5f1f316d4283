"""`python -m spunge_merge.merge.mergekit_yaml RECIPE OUT [mergekit-yaml options]`: mergekit's own CLI, with spunge's
merge methods (`anchored_ls`, `tsv_m`, `iso_cts`, `knots_ties`) in its registry.

mergekit has no plugin hook: its `mergekit-yaml` knows only the methods registered when it starts. This runs
exactly `mergekit-yaml` after `register_methods()`; recipes of mergekit's own methods run the same either way.
"""

from __future__ import annotations

import sys


def main() -> int | None:
    from mergekit.scripts.run_yaml import main as mergekit_yaml

    from spunge_merge.merge.methods import register_methods

    register_methods()
    sys.argv[0] = "mergekit-yaml"
    return mergekit_yaml()


if __name__ == "__main__":
    sys.exit(main())
