"""Settings added after runs were recorded leave a finished run's fingerprint as it was while at their old
meaning, so an upgrade resumes those runs instead of training them again; any other value is in it."""

from __future__ import annotations

import pytest

from spunge_merge.unlearn.npo import NPOConfig
from spunge_merge.unlearn.tvn import TVNConfig

# The settings each class had before these were added, and what the fingerprint never held.
ADDED = {"quantize", "prompt_column", "answer_column", "retain_loss"}
NEVER = {"lam", "device", "dtype", "eval_samples", "gradient_checkpointing"}


def _as_before(config) -> dict:
    return {k: v for k, v in config.model_dump(mode="json").items() if k not in ADDED | NEVER}


@pytest.mark.parametrize("config, part", [(NPOConfig(), "fingerprint_part"), (TVNConfig(), "training_fingerprint_part")])
def test_added_settings_at_their_old_meaning_leave_the_fingerprint_as_it_was(config, part):
    assert getattr(config, part)() == _as_before(config)


@pytest.mark.parametrize("changes", [{"quantize": "nf4"}, {"retain_loss": "kl"},
                                     {"prompt_column": "question", "answer_column": "answer"}])
def test_an_added_setting_that_changes_the_result_is_in_the_fingerprint(changes):
    config = NPOConfig(**changes)
    assert config.fingerprint_part() == {**_as_before(config), **changes}
    assert NPOConfig(gradient_checkpointing=True).fingerprint_part() == NPOConfig().fingerprint_part()
