"""Each unlearning loss against an independent per-token computation written here, on a right-padded
batch of unequal lengths (padding must not count), and the shared loop's exact gradient accumulation."""

from __future__ import annotations

import math

import pytest
import torch

from spunge_merge.unlearn import losses

VOCAB = 11
LENGTHS = [7, 4, 2]  # real tokens per row; the rest is padding


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(3)
    width = max(LENGTHS)
    logits = torch.randn(len(LENGTHS), width, VOCAB, generator=generator, dtype=torch.float64) * 3
    input_ids = torch.randint(0, VOCAB, (len(LENGTHS), width), generator=generator)
    labels = input_ids.clone()
    for row, length in enumerate(LENGTHS):
        labels[row, length:] = -100
        # garbage in the padded logits: if padding leaked into a loss, the numbers would move
        logits[row, length:] = 1e3
    return logits, labels


def per_row_logprob(logits, labels) -> list[tuple[float, int]]:
    """(Σ_t log p(label_{t+1} | ≤t), predicted tokens) per row, one position at a time, in plain Python math."""
    rows = []
    for row in range(logits.shape[0]):
        total, count = 0.0, 0
        for t in range(logits.shape[1] - 1):
            target = int(labels[row, t + 1])
            if target == -100:
                continue
            scores = [float(x) for x in logits[row, t]]
            top = max(scores)
            log_norm = top + math.log(sum(math.exp(s - top) for s in scores))
            total += scores[target] - log_norm
            count += 1
        rows.append((total, count))
    return rows


def test_sequence_logprobs_ignore_padding(batch):
    logits, labels = batch
    lp = losses.sequence_logprobs(logits, labels)
    expected = per_row_logprob(logits, labels)
    assert lp.tokens.tolist() == [length - 1 for length in LENGTHS] == [c for _, c in expected]
    assert lp.total.tolist() == pytest.approx([t for t, _ in expected], rel=1e-6)


def test_ga_and_nll_are_token_means_over_the_batch(batch):
    logits, labels = batch
    rows = per_row_logprob(logits, labels)
    mean_nll = -sum(t for t, _ in rows) / sum(c for _, c in rows)
    assert float(losses.nll_loss(logits, labels)) == pytest.approx(mean_nll, rel=1e-6)
    assert float(losses.ga_loss(logits, labels)) == pytest.approx(-mean_nll, rel=1e-6)


def test_graddiff_weights_forget_and_retain(batch):
    logits, labels = batch
    retain_logits, retain_labels = logits.flip(0), labels.flip(0)
    forget_rows, retain_rows = per_row_logprob(logits, labels), per_row_logprob(retain_logits, retain_labels)
    forget_nll = -sum(t for t, _ in forget_rows) / sum(c for _, c in forget_rows)
    retain_nll = -sum(t for t, _ in retain_rows) / sum(c for _, c in retain_rows)
    got = losses.graddiff_loss(logits, labels, retain_logits, retain_labels, gamma=0.7, alpha=2.5)
    assert float(got) == pytest.approx(0.7 * -forget_nll + 2.5 * retain_nll, rel=1e-6)


@pytest.mark.parametrize("beta", [0.1, 1.0, 4.0])
def test_npo_loss(batch, beta):
    logits, labels = batch
    reference = torch.tensor([-20.0, -3.5, -1.0], dtype=torch.float64)
    rows = per_row_logprob(logits, labels)
    # −(2/β)·log σ(−β·(lp − ref)) = (2/β)·log(1 + exp(β·(lp − ref)))
    pairs = zip(rows, reference.tolist(), strict=True)
    expected = sum(2 / beta * math.log1p(math.exp(beta * (lp - ref))) for (lp, _), ref in pairs) / len(rows)
    assert float(losses.npo_loss(logits, labels, reference, beta=beta)) == pytest.approx(expected, rel=1e-6)


def test_npo_at_the_reference_is_two_log_two_over_beta(batch):
    logits, labels = batch
    reference = losses.sequence_logprobs(logits, labels).total.detach()
    assert float(losses.npo_loss(logits, labels, reference, beta=0.5)) == pytest.approx(2 / 0.5 * math.log(2), rel=1e-9)


@pytest.mark.parametrize(("beta", "delta"), [(4.5, 0.0), (1.0, 0.3), (2.0, -1.0)])
def test_simnpo_loss_is_length_normalised(batch, beta, delta):
    logits, labels = batch
    rows = per_row_logprob(logits, labels)
    # −(2/β)·log σ(β·(NLL/|y| − δ)) = (2/β)·log(1 + exp(−β·(NLL/|y| − δ)))
    expected = sum(2 / beta * math.log1p(math.exp(-beta * (-lp / count - delta))) for lp, count in rows) / len(rows)
    assert float(losses.simnpo_loss(logits, labels, beta=beta, delta=delta)) == pytest.approx(expected, rel=1e-6)


def test_losses_have_gradients_only_through_real_tokens(batch):
    logits, labels = batch
    logits = logits.clone().requires_grad_(True)
    losses.simnpo_loss(logits, labels, beta=1.0).backward()
    for row, length in enumerate(LENGTHS):
        assert torch.all(logits.grad[row, length - 1:] == 0)  # the last real token predicts nothing; padding neither
        assert torch.any(logits.grad[row, : length - 1] != 0)
