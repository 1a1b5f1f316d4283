"""Placeholder until this stage's commands land."""


def register(app, groups) -> None:
    return None
