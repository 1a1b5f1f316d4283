"""The `--where` grammar: parsing, numeric vs string comparison, and refusals."""

import pytest

from spunge_merge.data.where import parse_condition
from spunge_merge.errors import SpungeError


@pytest.mark.parametrize(
    ("expr", "column", "op", "values"),
    [
        ("toxicity_human >= 3", "toxicity_human", ">=", ("3",)),
        ("prompt_label == hate", "prompt_label", "==", ("hate",)),
        ("prompt_label = 'hate'", "prompt_label", "==", ("hate",)),
        ("lang in en,fr", "lang", "in", ("en", "fr")),
        ("lang not in en, fr", "lang", "notin", ("en", "fr")),
        ("score<2.5", "score", "<", ("2.5",)),
        ("`factual?` != yes", "factual?", "!=", ("yes",)),
    ],
)
def test_parse(expr, column, op, values):
    condition = parse_condition(expr)
    assert (condition.column, condition.op, condition.values) == (column, op, values)


@pytest.mark.parametrize("expr", ["toxicity_human", ">= 3", "a >=", "import os", "a ~= 3"])
def test_parse_refuses(expr):
    with pytest.raises(SpungeError, match="cannot parse filter"):
        parse_condition(expr)


def test_numeric_predicates():
    rows = [1.0, 2.0, 3.0, 3.5, 4.0, None]
    assert [v for v in rows if parse_condition("x >= 3").predicate(True)(v)] == [3.0, 3.5, 4.0]
    assert [v for v in rows if parse_condition("x < 3").predicate(True)(v)] == [1.0, 2.0]
    assert [v for v in rows if parse_condition("x == 3").predicate(True)(v)] == [3.0]
    assert [v for v in rows if parse_condition("x in 1,4").predicate(True)(v)] == [1.0, 4.0]
    assert [v for v in rows if parse_condition("x != 3").predicate(True)(v)] == [1.0, 2.0, 3.5, 4.0]


def test_string_predicates():
    rows = ["en", "fr", "de", None]
    assert [v for v in rows if parse_condition("lang in en,fr").predicate(False)(v)] == ["en", "fr"]
    assert [v for v in rows if parse_condition("lang not in en,fr").predicate(False)(v)] == ["de"]


def test_ordering_on_string_column_is_refused():
    with pytest.raises(SpungeError, match="not numeric"):
        parse_condition("lang >= en").predicate(False)


def test_non_number_bound_is_refused():
    with pytest.raises(SpungeError, match="not a number"):
        parse_condition("x >= high").predicate(True)
