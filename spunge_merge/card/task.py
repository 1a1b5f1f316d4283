"""What was unlearned (toxicity, knowledge, or something else), and the warning and usage example that fit it.

A card written for toxicity (an offensive-content warning, a prompt about "your neighbours") misleads on a
model that forgot facts, and the reverse. The task is given by the caller when it knows (`spunge push
--task`), else read from what the directory holds: the evaluations that were run on it, then the names
of the forget data. Each task's sentences live here, once, so the template only picks them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class CardTask:
    """One kind of unlearning a card can describe: its warning (`{topics}` names the subsets) and usage prompts."""

    name: str
    warning: str


# Declared one by one: a task shares its name with the evaluation that measures it (toxicity, knowledge), and
# evaluation names are listed by the evaluation registry only.
TOXICITY = CardTask("toxicity", "**Content warning.** Data used to unlearn toxicity (e.g. hate speech) is offensive, and the model "
                    "may still produce such text. This model is meant for research on unlearning and safety; unlearning reduces "
                    "the unlearned behaviour but does not guarantee its absence.")
KNOWLEDGE = CardTask("knowledge", "**Unlearned knowledge.** This model was trained to stop giving the facts of its forget set{topics}. "
                     "Unlearning hides knowledge from ordinary prompts; it is not proven erased: rephrased questions, other languages, "
                     "few-shot prompts or a little fine-tuning may bring it back. Do not rely on it to keep information secret.")
OTHER = CardTask("other", "**Unlearning is measured, not guaranteed.** This model was trained to stop producing its forget "
                 "data{topics}. The evaluations below measure how far that worked on their own prompts; other prompts may still "
                 "bring it out.")
CARD_TASKS = {task.name: task for task in (TOXICITY, KNOWLEDGE, OTHER)}
TASKS: tuple[str, ...] = tuple(CARD_TASKS)
Task = Literal[TASKS]  # the pipeline's `push.task` and `spunge push --task` take these
_TOXIC_NAMES = re.compile(r"toxi|hate|offens|realtoxic|slur", re.IGNORECASE)
_KNOWLEDGE_NAMES = re.compile(r"fact|wmdp|knowledge|tofu|muse|bio|cyber|qa\b", re.IGNORECASE)


def infer_task(evaluation_kinds: Iterable[str], data_names: Iterable[str]) -> str:
    """`knowledge` or `toxicity` by the evaluations run (a knowledge probe, a toxicity scorer), else by the
    forget data's names (toxigen, facts, wmdp...), else `other`."""
    kinds = set(evaluation_kinds)
    if KNOWLEDGE.name in kinds and TOXICITY.name not in kinds:
        return KNOWLEDGE.name
    if TOXICITY.name in kinds and KNOWLEDGE.name not in kinds:
        return TOXICITY.name
    text = " ".join(data_names)
    if _TOXIC_NAMES.search(text):
        return TOXICITY.name
    if _KNOWLEDGE_NAMES.search(text):
        return KNOWLEDGE.name
    return OTHER.name


def warning(task: str, topics: list[str]) -> str:
    """The card's warning for `task`, naming the unlearned subsets (`topics`) where there are any."""
    named = f" ({', '.join(f'`{t}`' for t in topics[:8])}{', ...' if len(topics) > 8 else ''})" if topics else ""
    return CARD_TASKS[task].warning.format(topics=named)


def usage_prompt(task: str, topics: list[str]) -> dict[str, str]:
    """A chat message and a plain-text prefix that try the model on what it unlearned."""
    topic = str(topics[0]) if topics else None
    if task == TOXICITY.name:
        return {"chat": "Write one sentence about your neighbours.", "plain": "My neighbours are"}
    if task == KNOWLEDGE.name:
        about = f"about {topic}" if topic else "on the topics this model unlearned"
        return {"chat": f"Answer in one sentence: what do you know {about}?",
                "plain": f"Here is what I know {about}:"}
    about = topic or "the subject this model unlearned"
    return {"chat": f"Write one sentence about {about}.", "plain": f"Something about {about}:"}
