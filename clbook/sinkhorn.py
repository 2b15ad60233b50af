"""Sinkhorn-Knopp: soft assignments with an equal share for every prototype (SwAV's codes, notebook 09).

:func:`sinkhorn_knopp` turns scores of samples against prototypes into soft assignments under an
equal-partition constraint. It also runs inside training, so it takes and returns torch tensors
(and NumPy arrays, in float64, for notebooks and tests).
"""

from __future__ import annotations

import math

import torch

from clbook.checks import as_number, check_array, check_int, check_real

__all__ = ["sinkhorn_knopp"]


def sinkhorn_knopp(scores, epsilon: float = 0.05, n_iter: int = 3):
    r"""Soft assignment of B samples to K prototypes in which every prototype gets B / K of the mass.

    Starting from :math:`\exp(S / \varepsilon)`, each iteration rescales the columns so that
    every prototype carries B / K of the total mass, then the rows so that every sample's
    assignment sums to one (Cuturi, 2013; Caron et al., 2020, who use 3 iterations). At the
    fixed point Q solves the entropy-regularised transport problem

    .. math:: \max_{Q} \; \operatorname{tr}(Q^\top S) + \varepsilon H(Q)
              \quad\text{s.t.}\quad Q \mathbf 1_K = \mathbf 1_B,\;
              Q^\top \mathbf 1_B = \tfrac{B}{K} \mathbf 1_K .

    Everything is done on :math:`\log Q` with log-sum-exp, so :math:`\exp(S / \varepsilon)` is
    never formed: with cosine scores and ``epsilon = 0.01`` it would reach :math:`e^{100}`,
    beyond float32's range.

    Parameters
    ----------
    scores : Tensor or array-like, shape [B, K]
        Scores of B samples against K prototypes (in SwAV, cosine similarities). A floating-point
        torch tensor gives a tensor of the same dtype and device (float16 and bfloat16 are
        computed in float32); anything else is computed and returned as a NumPy float64 array.
    epsilon : float, default 0.05
        Entropy weight, acting as a temperature: large values give flat assignments, small
        values nearly hard ones. Must be positive and finite.
    n_iter : int, default 3
        Number of (column, row) normalisation pairs. ``n_iter = 0`` returns the plain row softmax
        of ``scores / epsilon``, with no constraint on the columns.

    Returns
    -------
    Q : Tensor or ndarray, shape [B, K]
        Rows are distributions (they sum to one, exactly up to rounding, because every
        iteration ends with the rows); column sums approach B / K as ``n_iter`` grows.
        Autograd flows through a tensor input; SwAV's codes are used without gradient.
    """
    if isinstance(scores, torch.Tensor):
        if not scores.is_floating_point():
            raise ValueError(f"scores must be a floating-point tensor, got dtype {scores.dtype}")
        if scores.dim() != 2 or scores.shape[0] == 0 or scores.shape[1] == 0:
            raise ValueError(f"scores must have shape [B, K] with B, K >= 1, got shape {list(scores.shape)}")
        if not torch.isfinite(scores).all():
            raise ValueError("scores contain NaN or infinite values")
        S, out_dtype = scores, scores.dtype
    else:
        S, out_dtype = torch.from_numpy(check_array(scores, "scores")), None
    epsilon = check_real("epsilon", as_number(epsilon))
    n_iter = check_int("n_iter", as_number(n_iter), 0)

    if S.dtype in (torch.float16, torch.bfloat16):  # too coarse for log-sum-exp over a batch
        S = S.float()
    B, K = S.shape
    log_q = S / float(epsilon)
    log_mass = math.log(B / K)
    for _ in range(int(n_iter)):
        # Columns: prototype k gets B / K in total. Rows: sample i gets one unit, split over k.
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) + log_mass
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True)
    if n_iter == 0:
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True)
    Q = log_q.exp()
    return Q.numpy() if out_dtype is None else Q.to(out_dtype)
