"""`--where` filters: simple comparisons parsed by a small grammar, never `eval`-ed.

Grammar: `COLUMN OP VALUE`, OP one of `>= <= > < == = != in not-in` (`not in` too).
`in` takes a comma-separated list. A column name with spaces or symbols may be written in
backticks. Values compare as numbers when the column is numeric, else as strings.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from typing import Any

from spunge_merge.errors import SpungeError

_PATTERN = re.compile(
    r"""^\s*(?:`(?P<quoted>[^`]+)`|(?P<name>[^\s<>=!`]+))\s*
        (?P<op>>=|<=|==|!=|=|>|<|\bnot\s+in\b|\bin\b)
        \s*(?P<value>.*?)\s*$""",
    re.VERBOSE,
)
_ORDERING = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _as_number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return None if math.isnan(value) else value


@dataclass(frozen=True)
class Condition:
    """One parsed comparison."""

    column: str
    op: str  # one of >= <= > < == != in notin
    values: tuple[str, ...]
    source: str

    def to_json(self) -> dict[str, Any]:
        return {"column": self.column, "op": self.op, "values": list(self.values), "expr": self.source}

    def predicate(self, column_is_numeric: bool):
        """A function row_value -> bool for this condition, given the column's type."""
        if self.op in _ORDERING:
            if not column_is_numeric:
                raise SpungeError(f"filter '{self.source}': column '{self.column}' is not numeric")
            bound = _as_number(self.values[0])
            if bound is None:
                raise SpungeError(f"filter '{self.source}': '{self.values[0]}' is not a number")
            compare = _ORDERING[self.op]
            return lambda value: value is not None and compare(value, bound)
        if column_is_numeric:
            numbers = [_as_number(v) for v in self.values]
            if any(n is None for n in numbers):
                raise SpungeError(f"filter '{self.source}': column '{self.column}' is numeric, values must be numbers")
            wanted: set[Any] = set(numbers)
        else:
            wanted = set(self.values)
        keep_if_member = self.op in ("==", "in")
        return lambda value: (value in wanted) == keep_if_member and value is not None


def parse_condition(expr: str) -> Condition:
    """Parse one `--where` expression; a clear error for anything else."""
    match = _PATTERN.match(expr)
    if not match or not match.group("value"):
        raise SpungeError(
            f"cannot parse filter '{expr}': expected COLUMN OP VALUE with OP one of >= <= > < == != in, "
            "e.g. 'toxicity_human >= 3' or 'lang in en,fr'"
        )
    column = match.group("quoted") or match.group("name")
    extra = re.match(r"[=<>!]+", match.group("value"))
    if extra:  # `a === b`, `a => b`: the regex took a valid prefix of the operator; the rest is not a value
        raise SpungeError(f"filter '{expr.strip()}': '{match.group('op')}{extra.group(0)}' is not an operator "
                          "(use one of >= <= > < == != in, not in; quote a value that starts with one of = < > !)")
    op = re.sub(r"\s+", "", match.group("op"))
    op = {"=": "==", "notin": "notin"}.get(op, op)
    raw = match.group("value")
    if op in ("in", "notin"):
        values = tuple(_unquote(part.strip()) for part in raw.split(",") if part.strip())
        if not values:
            raise SpungeError(f"filter '{expr}': empty value list")
    else:
        values = (_unquote(raw),)
    return Condition(column=column, op=op, values=values, source=expr.strip())
