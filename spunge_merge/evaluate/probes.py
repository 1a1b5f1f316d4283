"""Probes without training: is an unlearned fact still there when asked another way?

A probe is a variant of a measuring evaluation that scores a model in memory (its record's `score_loaded`:
knowledge): `choice` asks the same facts in the measure's 4-option form, `paraphrase` rewords each prompt by its
domain's template (`paraphrases.yaml`), `fewshot` puts facts of kept domains (prompt and answer) before each prompt.
One definition for `spunge eval relearn --probes` and the frontier driver's `--probes` hook (`bench/frontiers_probes.py`),
so both read the same prompts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from spunge_merge.config import FrozenConfig
from spunge_merge.errors import SpungeError
from spunge_merge.fsutil import sha256_file

PROBES = ("choice", "paraphrase", "fewshot")
PARAPHRASES = Path(__file__).with_name("paraphrases.yaml")
Rewrite = Callable[[dict, list[dict]], str]  # (a fact, every measured fact) -> the prompt the probe asks instead
Probe = tuple[FrozenConfig, Rewrite | None, dict[str, Any]]  # (the measure's settings for it, its rewrite, what to record)


def build_probes(names: Sequence[str], settings: FrozenConfig, *, measure: str = "knowledge", paraphrases: str | Path | None = None,
                 fewshot_domains: Sequence[str] | None = None, fewshot_k: int = 3, seed: int = 0) -> dict[str, Probe]:
    """name -> (the measure's settings for the probe, its prompt rewrite or None, what a result records of it).
    The few-shot context of a fact is drawn from the measured facts of `fewshot_domains` by a generator seeded with
    (`seed`, the fact's prompt): the same context for every model scored with the same settings."""
    found: dict[str, Probe] = {}
    for name in dict.fromkeys(names):
        if name == "choice":
            if "form" not in type(settings).model_fields:
                raise SpungeError(f"--probes choice: the measure {measure} has no `form` setting")
            found[name] = (settings.model_copy(update={"form": "choice"}), None, {"form": "choice"})
        elif name == "paraphrase":
            file = Path(paraphrases) if paraphrases else PARAPHRASES
            found[name] = (settings, _paraphraser(file), {"templates": str(file), "sha256": sha256_file(file)})
        elif name == "fewshot":
            if not fewshot_domains:
                raise SpungeError("--probes fewshot: give --fewshot-domains (kept domains whose facts make the context)")
            kept = sorted(set(fewshot_domains))
            found[name] = (settings, _fewshot(kept, fewshot_k, seed), {"domains": kept, "k": fewshot_k})
        else:
            raise SpungeError(f"--probes {name}: not a probe (probes: {', '.join(PROBES)})")
    return found


def score_probes(measured, probes: dict[str, Probe], lm, tokenizer, device) -> dict[str, dict[str, Any]]:
    """name -> the measure's `score_loaded` result under the probe (per domain n, correct, accuracy, verdicts)."""
    return {name: measured.score_loaded(variant, lm, tokenizer, device, rewrite=rewrite) for name, (variant, rewrite, _) in probes.items()}


def _paraphraser(file: Path) -> Rewrite:
    """A rewrite by the file's per-domain `pattern` (capturing the subject) and `template`; a fact it cannot reword is refused."""
    import re

    from spunge_merge.config import load_yaml

    templates = load_yaml(file)
    if not isinstance(templates, dict) or not all(isinstance(t, dict) and {"pattern", "template"} <= set(t) for t in templates.values()):
        raise SpungeError(f"{file}: expected per domain a mapping with `pattern` and `template`")

    def paraphrase(fact: dict, facts: list[dict]) -> str:
        entry = templates.get(fact["domain"])
        if entry is None:
            raise SpungeError(f"{file}: no template for domain '{fact['domain']}'")
        match = re.match(entry["pattern"], fact["prompt"])
        if match is None:
            raise SpungeError(f"{file}: {fact['domain']}: '{fact['prompt']}' does not match {entry['pattern']!r}")
        return entry["template"].format(**match.groupdict())

    return paraphrase


def _fewshot(kept: list[str], k: int, seed: int) -> Rewrite:
    """A rewrite putting `k` measured facts of the `kept` domains (never the fact itself) before each prompt."""
    import random

    def fewshot(fact: dict, facts: list[dict]) -> str:
        pool = [f for f in facts if f["domain"] in kept and f["prompt"] != fact["prompt"]]
        if len(pool) < k:
            raise SpungeError(f"--fewshot-k {k}: the measured facts hold {len(pool)} facts of {', '.join(kept)} for the context")
        shots = random.Random(f"{seed}/fewshot/{fact['prompt']}").sample(pool, k)
        return "".join(f"{s['prompt']} {s['answer']}.\n" for s in shots) + fact["prompt"]

    return fewshot
