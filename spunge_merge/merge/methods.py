"""Merge methods made for unlearning, declared once each in mergekit's own method registry.

mergekit's methods are weights-only and treat every entry alike. These are registered beside them
(`register_methods`, idempotent; `spunge merge`, `merge_recipe` and `python -m spunge_merge.merge.mergekit_yaml`
call it), so a recipe naming them stays plain mergekit YAML:

- `anchored_ls`: retain-anchored least squares (RegMean-style, Jin et al. 2023, arXiv 2212.09849, with a
  retain term). Per linear weight W (out × in; a layer computes x Wᵀ) it solves
  min_Δ Σ_i ‖X_i (Δ − Δ_i)ᵀ‖² + ρ‖X_r Δᵀ‖² + ε‖Δ‖², i.e. (Σ_i G_i + ρ G_r + ε I) Δᵀ = Σ_i G_i Δ_iᵀ with
  G = XᵀX from the statistics pass (`gram.py`), Δ_i = W_i − W_0, ε = ridge × the mean diagonal of
  Σ_i G_i + ρ G_r. Solving for the edit, not for W, makes the ridge pull toward the base. W = W_0 + λΔ.
  Tensors without statistics (norms, embeddings) get the mean edit, what the solve gives for equal Grams.
- `tsv_m`: Task Singular Vectors merge (Gargiulo et al., CVPR 2025, arXiv 2412.00081).
- `iso_cts`: isotropic merging in common and task-specific subspaces (Marczak et al., ICML 2025, arXiv 2502.04959).
- `knots_ties`: KnOTS (Stoica et al., ICLR 2025, arXiv 2410.19735): LoRA edits aligned in one shared basis by an SVD
  of the edits side by side, then TIES on their aligned coordinates. Made for low-rank (LoRA) runs; on full-rank
  edits the alignment is an exact change of basis.

Each method keeps the base where no run changed a tensor (`keeps_unchanged_base`), so the streaming merge
copies those tensors instead of computing them, as it does for TIES.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Annotated

from pydantic import Field

from spunge_merge.errors import SpungeError

if TYPE_CHECKING:
    import torch

ANCHORED = "anchored_ls"
TSV_M = "tsv_m"
ISO_CTS = "iso_cts"
KNOTS_TIES = "knots_ties"
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


# --------------------------------------------------------------------------- the formulas


def anchored_edit(edits: list[torch.Tensor], grams: list[torch.Tensor], retain: torch.Tensor | None, *, rho: float,
                  ridge: float) -> torch.Tensor:
    """Δ solving (Σ G_i + ρ G_r + ε I) Δᵀ = Σ G_i Δ_iᵀ, ε = ridge × mean diag of the left matrix (float64)."""
    import torch

    left = sum(g.double() for g in grams)
    if retain is not None and rho > 0:
        left = left + rho * retain.double()
    right = sum(g.double() @ d.double().T for g, d in zip(grams, edits, strict=True))
    scale = float(left.diagonal().mean())
    if ridge > 0:
        left = left + ridge * (scale if scale > 0 else 1.0) * torch.eye(left.shape[0], dtype=left.dtype)
    solution = torch.linalg.lstsq(left, right).solution if ridge == 0 else torch.linalg.solve(left, right)
    return solution.T


def _svd(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U, S, Vᵀ), thin. LAPACK's divide-and-conquer SVD can fail to converge where many singular values coincide, as
    in the stacks of orthonormal blocks TSV-M and Iso-CTS orthogonalise (met on NPO's LoRA edits of smollm2-135m,
    one thread: `gate_proj` of layer 0), and whether it does depends on the thread count. The same factors are then
    taken from the SVD of the transpose, else from numpy's LAPACK."""
    import numpy as np
    import torch

    try:
        return torch.linalg.svd(matrix, full_matrices=False)
    except torch.linalg.LinAlgError:
        pass
    try:
        a, s, bt = torch.linalg.svd(matrix.T, full_matrices=False)  # Mᵀ = A S Bᵀ, so M = B S Aᵀ
        return bt.T, s, a.T
    except torch.linalg.LinAlgError:
        u, s, vt = np.linalg.svd(matrix.detach().cpu().numpy(), full_matrices=False)
        return tuple(torch.from_numpy(x).to(matrix.device) for x in (u, s, vt))


def _polar(matrix: torch.Tensor) -> torch.Tensor:
    """The orthonormal factor P Qᵀ of matrix = P S Qᵀ: the closest matrix with orthonormal columns."""
    p, _, qt = _svd(matrix)
    return p @ qt


def tsv_merge(edits: list[torch.Tensor]) -> torch.Tensor:
    """TSV-M for one matrix: each edit's top min(m, n)/T singular triplets, U and V of all tasks concatenated
    and orthogonalised (polar factor), Σ kept: Δ = U⊥ diag(σ) V⊥ᵀ."""
    import torch

    count = len(edits)
    keep = max(1, int(min(edits[0].shape) / count))
    us, ss, vs = [], [], []
    for edit in edits:
        u, s, vt = _svd(edit.double())
        us.append(u[:, :keep])
        ss.append(s[:keep])
        vs.append(vt[:keep].T)
    u_all, v_all = _polar(torch.cat(us, dim=1)), _polar(torch.cat(vs, dim=1))
    return u_all @ torch.diag(torch.cat(ss)) @ v_all.T


def iso_cts_merge(edits: list[torch.Tensor], common_fraction: float) -> torch.Tensor:
    """Iso-CTS for one matrix: the top k directions of the summed edit (the common subspace) plus each edit's top
    directions outside it (the rest of the rank split equally between the tasks), orthogonalised, with every
    singular value set to the mean of the kept ones."""
    import torch

    count = len(edits)
    total = sum(e.double() for e in edits)
    rank = min(total.shape)
    common = int(rank * common_fraction)
    per_task = round((rank - common) / count)
    common = rank - per_task * count
    u, s, vt = _svd(total)
    us, ss, vs = [u[:, :common]], [s[:common]], [vt[:common].T]
    if per_task > 0:
        projector = u[:, :common] @ u[:, :common].T
        for edit in edits:
            specific = edit.double() - projector @ edit.double()
            ut, st, vtt = _svd(specific)
            us.append(ut[:, :per_task])
            ss.append(st[:per_task])
            vs.append(vtt[:per_task].T)
    sigma = torch.cat(ss).mean()
    return sigma * _polar(torch.cat(us, dim=1)) @ _polar(torch.cat(vs, dim=1)).T


def knots_ties_merge(edits: list[torch.Tensor], densities: list[float], eps: float = 1e-6) -> torch.Tensor:
    """KnOTS alignment then TIES: [Δ_1 … Δ_T] = U S [V_1ᵀ … V_Tᵀ] (one SVD of the edits side by side, directions
    with singular value ≤ eps × the largest dropped), so every edit is U S V_iᵀ in one shared basis; TIES merges the
    V_iᵀ (each one's top `densities[i]` magnitudes, sign of their sum, mean of the agreeing entries); Δ = U S V_mergedᵀ."""
    import torch

    inputs = edits[0].shape[1]
    u, s, vt = _svd(torch.cat([e.double() for e in edits], dim=1))
    kept = s > eps * s[0] if len(s) and s[0] > 0 else torch.zeros_like(s, dtype=torch.bool)
    u, s, vt = u[:, kept], s[kept], vt[kept]
    blocks = torch.stack(torch.split(vt, inputs, dim=1))  # T × r × in
    flat = blocks.reshape(len(edits), -1)
    rows = []
    for row, density in zip(flat, densities, strict=True):
        threshold = row.abs().topk(max(1, int(density * row.numel()))).values[-1]
        rows.append(torch.where(row.abs() >= threshold, row, torch.zeros_like(row)))
    trimmed = torch.stack(rows)
    sign = torch.where(trimmed.sum(dim=0) >= 0, 1.0, -1.0).to(trimmed.dtype)
    agree = (torch.sign(trimmed) == sign) & (trimmed != 0)
    merged = (trimmed * agree).sum(dim=0) / agree.sum(dim=0).clamp(min=1)
    return u @ torch.diag(s) @ merged.reshape(blocks.shape[1:])


# --------------------------------------------------------------------------- mergekit's side


def _edits(group) -> tuple[torch.Tensor, list[torch.Tensor]]:
    base = group.base.tensor
    return base, [entry.tensor - base for entry in group.non_base]


def _unchanged(base: torch.Tensor, edits: list[torch.Tensor]) -> bool:
    return all(not bool(edit.any()) for edit in edits)


def _mean(edits: list[torch.Tensor]) -> torch.Tensor:
    return sum(edits) / len(edits)


@lru_cache(maxsize=64)
def _gram_file(path: str):
    """(safe_open handle, token count) of a statistics file; SpungeError naming it when unreadable."""
    from pathlib import Path

    from safetensors import safe_open

    if not Path(path).is_file():
        raise SpungeError(f"{path}: no such statistics file (anchored_ls reads Gram matrices from it; "
                          "`spunge merge --method anchored_ls` computes them)")
    try:
        handle = safe_open(path, framework="pt")
    except Exception as exc:  # safetensors raises its own error types
        raise SpungeError(f"{path}: not a readable safetensors statistics file ({exc})") from exc
    metadata = handle.metadata() or {}
    return handle, max(1, int(metadata.get("tokens", "1")))


def read_gram(path: str, name: str, *, normalize: bool) -> torch.Tensor | None:
    """The Gram matrix of `name`'s inputs from a statistics file (None when it holds none), / tokens if `normalize`."""
    handle, tokens = _gram_file(path)
    if name not in handle.keys():
        return None
    gram = handle.get_tensor(name).double()
    return gram / tokens if normalize else gram


def _anchored_kernel(group, *, gram, retain_gram: str, rho: float, ridge: float, gram_normalize: bool,
                     **parameters) -> torch.Tensor:
    base, edits = _edits(group)
    if _unchanged(base, edits):
        return base
    lam = parameters["lambda"]
    name = group.metadata.name
    grams = [read_gram(gram[entry.id], name, normalize=gram_normalize) for entry in group.non_base] if base.ndim == 2 else []
    if not grams or any(g is None for g in grams):
        return base + lam * _mean(edits).to(base.dtype)
    retain = read_gram(retain_gram, name, normalize=gram_normalize) if retain_gram and rho > 0 else None
    if rho > 0 and retain is None:
        raise SpungeError(f"{retain_gram or 'retain_gram'}: no retain statistics for tensor {name} (rho {rho} needs them)")
    if grams[0].shape[0] != base.shape[1]:
        raise SpungeError(f"{gram[group.non_base[0].id]}: the Gram matrix of {name} is {list(grams[0].shape)}, "
                          f"the weight takes {base.shape[1]} inputs")
    return base + lam * anchored_edit(edits, grams, retain, rho=rho, ridge=ridge).to(base.dtype)


def _svd_kernel(group, merge_matrix, **parameters) -> torch.Tensor:
    base, edits = _edits(group)
    if _unchanged(base, edits):
        return base
    merged = merge_matrix(edits) if base.ndim == 2 else _mean(edits)
    return base + parameters["lambda"] * merged.to(base.dtype)


@lru_cache(maxsize=1)
def _methods() -> tuple:
    from mergekit.merge_methods.base import (
        BasePolicy,
        GroupMergeMethod,
        InputContract,
        MergeMethodSpec,
        ParameterScope,
        ParameterSpec,
    )

    shared = ParameterScope.SHARED
    lam = ParameterSpec("lambda", NonNegative, shared, default=1.0, description="Scale of the merged edit.")

    class SpungeMethod(GroupMergeMethod):
        keeps_unchanged_base = True  # a tensor no run changed merges to the base tensor itself

        def __init__(self, spec, kernel):
            self.spec, self.kernel = spec, kernel

        def merge_group(self, group, /, **parameters):
            return self.kernel(group, **parameters)

    def spec(name: str, pretty: str, url: str, *parameters) -> MergeMethodSpec:
        return MergeMethodSpec(name=name, pretty_name=pretty, reference_url=url, parameters=(lam, *parameters),
                               contract=InputContract(base=BasePolicy.REQUIRED, min_non_base=1))

    anchored = SpungeMethod(spec(
        ANCHORED, "Retain-anchored least squares", "https://arxiv.org/abs/2212.09849",
        ParameterSpec("gram", str, ParameterScope.NON_BASE, description="Statistics file of this run's forget inputs."),
        ParameterSpec("retain_gram", str, shared, default="", description="Statistics file of the retain inputs."),
        ParameterSpec("rho", NonNegative, shared, default=1.0, description="Weight of the retain anchor."),
        ParameterSpec("ridge", NonNegative, shared, default=1e-3, description="Ridge toward the base, × mean diagonal."),
        ParameterSpec("gram_normalize", bool, shared, default=True, description="Divide each Gram by its token count."),
    ), _anchored_kernel)
    tsv = SpungeMethod(spec(TSV_M, "Task Singular Vectors (TSV-M)", "https://arxiv.org/abs/2412.00081"),
                       lambda group, **p: _svd_kernel(group, tsv_merge, **p))
    iso = SpungeMethod(spec(
        ISO_CTS, "Iso-CTS", "https://arxiv.org/abs/2502.04959",
        ParameterSpec("common_fraction", Fraction, shared, default=0.8, description="Share of the rank for the common subspace."),
    ), lambda group, common_fraction, **p: _svd_kernel(group, lambda edits: iso_cts_merge(edits, common_fraction), **p))
    knots = SpungeMethod(spec(
        KNOTS_TIES, "KnOTS-TIES", "https://arxiv.org/abs/2410.19735",
        ParameterSpec("density", Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)], ParameterScope.NON_BASE, default=1.0,
                      description="Fraction of this run's aligned edit kept by TIES' trimming."),
    ), lambda group, density, **p: _svd_kernel(
        group, lambda edits: knots_ties_merge(edits, [density[e.id] for e in group.non_base]), **p))
    return anchored, tsv, iso, knots


def register_methods() -> None:
    """Add spunge's methods to mergekit's registry (once per process)."""
    from mergekit import merge_methods

    known = {method.spec.name for method in merge_methods.registered_methods()}
    for method in _methods():
        if method.spec.name not in known:
            merge_methods.register(method)


def takes_statistics(method_name: str) -> bool:
    """Whether a method reads per-run statistics files (its recipe needs them written first)."""
    return method_name == ANCHORED


def check_statistics(config, source: str) -> None:
    """Every statistics file an `anchored_ls` recipe names exists and reads, before any tensor is merged."""
    if config.merge_method != ANCHORED:
        return
    named = [("parameters.retain_gram", (config.parameters or {}).get("retain_gram"))]
    named += [(f"models[{i}].parameters.gram", (entry.parameters or {}).get("gram")) for i, entry in enumerate(config.models or [])]
    for where, value in named:
        if isinstance(value, str) and value:
            try:
                _gram_file(value)
            except SpungeError as exc:
                raise SpungeError(f"{source}: {where}: {exc}") from exc
    rho = (config.parameters or {}).get("rho", 1.0)
    if isinstance(rho, int | float) and rho > 0 and not (config.parameters or {}).get("retain_gram"):
        raise SpungeError(f"{source}: parameters.rho is {rho} but no retain_gram names the retain statistics "
                          "(set retain_gram, or rho: 0)")
