"""RMU, Representation Misdirection for Unlearning (Li et al. 2024, the WMDP paper), made cheap.

The loss only reads the output h(x) of one decoder layer ℓ:

    L = mse(h_θ(x_forget), c·u) + α · mse(h_θ(x_retain), h_θ0(x_retain))

with u a fixed random unit vector, θ the `mlp.down_proj.weight` of layers 5, 6, 7 (by default)
and θ0 their values before training. The WMDP reference (`rmu/unlearn.py`) keeps two full models
and runs three full forward passes (every layer and the LM head) per step. Here:

- only embeddings and layers 0..ℓ are loaded (`partial_model`), never the layers above ℓ nor the LM head;
- there is one model; θ0 is kept as a copy of the updated tensors only, and the frozen activations
  come from `torch.func.functional_call` with θ0 swapped in;
- the frozen prefix (layers below the first updated layer) runs once per batch, without autograd,
  and feeds both the updated and the frozen pass; optionally it is cached across epochs;
- layer ℓ's output is taken from the layer itself, never from `hidden_states[-1]` (transformers 5
  applies the final norm there).

Everything else follows the reference: batches of `batch_size` texts, left padding with
pad = eos, right truncation (512 tokens), one control vector per forget corpus drawn with
`torch.rand` from the run's seed, corpora alternating one batch each, AdamW with the defaults of
the `transformers.AdamW` it used (betas 0.9/0.999, eps 1e-6, no weight decay).

Data order (`data_order`, see docs/data-handling.md): the reference reads both corpora in file
order and pairs forget batch i with retain batch i, so an epoch only ever sees the top of the
retain file. By default (`shuffled`) the forget rows are reshuffled every epoch with the run's
seed and the retain batches are drawn from a seeded permutation of the whole retain set that
continues across steps and epochs (a fresh permutation when it runs out), so every retain row
is used once the run has fed as many retain rows as the set holds. `reference` keeps the
script's order exactly (faithfulness tests).

The package, one module per concept: `settings` (RMUConfig), `selection` (which tensors train),
`decoder` (the truncated, split decoder), `trainer` (loss, step, control vectors), `data`
(corpora, batches, the step plan), `session` (one run on a loaded model), `runs` (`train_rmu`),
`outputs` (the run's files, `materialize`), `budget` (step counts). Importing it registers the
method; every public name stays importable from `spunge_merge.unlearn.rmu`.
"""

from __future__ import annotations

from spunge_merge.runs import RunOutcome
from spunge_merge.unlearn import registry
from spunge_merge.unlearn.outputs import delta_to_model
from spunge_merge.unlearn.registry import TrainRequest, UnlearningMethod
from spunge_merge.unlearn.rmu.budget import match_baseline, planned_steps
from spunge_merge.unlearn.rmu.data import Corpus, Plan, PlannedStep, make_plan, prepare_tokenizer
from spunge_merge.unlearn.rmu.decoder import PrefixOutput, SplitDecoder
from spunge_merge.unlearn.rmu.outputs import DELTA_FILE, RUN_KIND, materialize
from spunge_merge.unlearn.rmu.runs import train_rmu
from spunge_merge.unlearn.rmu.selection import Selection, select_tensors
from spunge_merge.unlearn.rmu.session import AUTO_STEERING_BATCHES
from spunge_merge.unlearn.rmu.settings import RMUConfig, parse_steering
from spunge_merge.unlearn.rmu.trainer import (
    ADAM_BETAS,
    ADAM_EPS,
    Batch,
    NonFiniteLoss,
    RMUTrainer,
    StepRecord,
    activation_cosine,
    activation_mse,
    activation_norm,
    control_vectors,
)

__all__ = [
    "ADAM_BETAS", "ADAM_EPS", "AUTO_STEERING_BATCHES", "DELTA_FILE", "RUN_KIND", "Batch", "Corpus", "NonFiniteLoss", "Plan",
    "PlannedStep", "PrefixOutput", "RMUConfig", "RMUTrainer", "Selection", "SplitDecoder", "StepRecord", "activation_cosine",
    "activation_mse", "activation_norm", "control_vectors", "make_plan", "match_baseline", "materialize", "parse_steering",
    "planned_steps", "prepare_tokenizer", "select_tensors", "train_rmu",
]


# ----------------------------------------------------------------------------------------------
# The method's record: what the CLI, the pipeline, the baseline and the model card know of RMU.


def _train_request(request: TrainRequest) -> list[RunOutcome]:
    forget = request.forget[0] if len(request.forget) == 1 else list(request.forget)
    return train_rmu(request.model, forget, list(request.retain), request.out, request.config, text_column=request.text_column,
                     retain_text_column=request.retain_text_column, retain_where=tuple(request.retain_where), force=request.force,
                     progress=request.progress)


registry.register(UnlearningMethod(
    name="rmu",
    summary="Representation misdirection: steer a layer's activations on forget text to a random vector, keep retain text's.",
    description=(
        "**Representation misdirection for unlearning (RMU)**: the MLP weights of a few layers are updated so that "
        "the hidden states on the subset's text are pushed towards a fixed random direction (scaled by a steering "
        "coefficient), while a retain loss keeps the hidden states on benign text close to the base model's "
        "(Li et al., 2024, WMDP)."
    ),
    config_class=RMUConfig,
    retain="required",
    output_kind=lambda config: "tensor-delta",
    train=_train_request,
    planned_steps=planned_steps,
    match_baseline=match_baseline,
    to_model=delta_to_model,
    baseline_corpora=("alternating", "union"),
))
