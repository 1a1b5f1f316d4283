"""Naming groups of texts by their most distinctive terms: class-based TF-IDF (as in BERTopic).

All texts of one group are treated as one document. A term's weight in group c is its
frequency within c (normalised by c's length) times log(1 + A / f_t), where A is the average
number of term occurrences per group and f_t the term's frequency over all groups: frequent in
this group, rare elsewhere.
"""

from __future__ import annotations

import re

import numpy as np

_NAME_TERM = re.compile(r"^[a-z0-9]+$")


def class_tfidf_terms(texts: list[str], groups: list[str], *, top: int = 10) -> dict[str, list[str]]:
    """The `top` most distinctive terms of every group (English stop words left out)."""
    from sklearn.feature_extraction.text import CountVectorizer

    names = sorted(set(groups))
    documents = [" ".join(t for t, g in zip(texts, groups, strict=True) if g == name) for name in names]
    try:
        vectorizer = CountVectorizer(stop_words="english", lowercase=True)
        counts = vectorizer.fit_transform(documents).toarray().astype(np.float64)
    except ValueError:  # nothing but stop words
        return {name: [] for name in names}
    vocabulary = vectorizer.get_feature_names_out()
    per_group = counts.sum(axis=1, keepdims=True)
    tf = counts / np.maximum(per_group, 1.0)
    average = counts.sum() / len(names)
    idf = np.log(1.0 + average / np.maximum(counts.sum(axis=0), 1.0))
    weights = tf * idf
    result = {}
    for row, name in enumerate(names):
        order = np.lexsort((vocabulary, -weights[row]))  # highest weight first, ties alphabetical
        result[name] = [str(vocabulary[i]) for i in order[:top] if weights[row, i] > 0]
    return result


def name_from_terms(index: int, terms: list[str], *, words: int = 3) -> str:
    """A readable, file-system-safe subset name: `c1-border-mexicans-wall`."""
    usable = [t for t in terms if _NAME_TERM.match(t)][:words]
    return "-".join([f"c{index}", *usable])
