"""Subsets from row position (`--by block:N`): the source's rows in consecutive blocks of N, in its own order.

For data whose attribute is implicit in the row order: TOFU's forget sets hold 20 questions per
fictitious author, one author after another. Rows are numbered before any `--where` filter, in the
order the source gives them, so a row's block is the same whichever filters follow (an author keeps
its number when some of its rows are filtered out, and blocks never merge across authors). Names are
zero-padded (`block-00`, `block-01`, ...) so that their sorted order is their order in the source.
"""

from __future__ import annotations

from typing import Any

from spunge_merge.data.discovery.spec import BLOCK_PREFIX, BlockBy
from spunge_merge.errors import SpungeError


def block_labels(rows: int, size: int) -> list[str]:
    """`block-NN` of each of `rows` rows in blocks of `size`; at least two digits, as many as the last block needs."""
    blocks = -(-rows // size)
    width = max(2, len(str(blocks - 1)))
    return [f"{BLOCK_PREFIX}{i // size:0{width}d}" for i in range(rows)]


def number_blocks(table, by: BlockBy, source: str) -> tuple[Any, dict[str, Any]]:
    """`table` with the block label column added (before filtering), and the manifest's record of how."""
    spec = by.block
    rows = len(table)
    if spec.column in table.column_names:
        raise SpungeError(f"{source}: the data already has a column '{spec.column}'; choose another name with --label-column")
    if rows < spec.size:
        raise SpungeError(f"{source}: {rows} row(s), fewer than one block of {spec.size} (block:{spec.size}); "
                          f"give N <= {rows}")
    blocks = -(-rows // spec.size)
    record = {"method": "block", "size": spec.size, "column": spec.column, "rows_numbered": rows, "blocks": blocks,
              "last_block_rows": rows - (blocks - 1) * spec.size, "numbered": "in the source's order, before the filters"}
    return table.add_column(spec.column, block_labels(rows, spec.size)), record
