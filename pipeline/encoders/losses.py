r"""Losses of the utterance-level extractors (M2FNet Sec. 3.3, Eq. 9-13) and FaceNet semi-hard mining.

Notation: a batch of triplets gives three embedding matrices ``Z_a, Z_p, Z_n`` of shape ``(T, d)``
(anchor, positive of the anchor's emotion, negative of another emotion); ``D_xy`` is the Euclidean
distance between matching rows.

Eq. 9 (total)::

    L_FE = l1 * L_AMT + l2 * L_Cov + l3 * L_Var,        l1 = 20, l2 = 5, l3 = 1

Eq. 10 (adaptive-margin triplet, averaged over the T triplets)::

    L_AMT = D_ap - (D_an + D_pn) / 2 + m_AM             (printed form: no hinge)
    L_AMT = max(0, D_ap - (D_an + D_pn) / 2 + m_AM)     (m2f default: hinge)

Eq. 11 (the adaptive margin)::

    m_AM = m_sim + m_dissim,  m_sim = 1 + 2 / exp(4 D_ap),  m_dissim = 1 + 2 / exp(-4 D_an + 4)

Eq. 12 (VICReg variance, per matrix, summed over k in {a, p, n}; Var is the unbiased column variance)::

    L_Var = sum_k (1/d) sum_j [1 - sqrt(Var(Z_k[:, j]) + eps)]          (printed)
    L_Var = sum_k (1/d) sum_j max(0, 1 - sqrt(Var(Z_k[:, j]) + eps))    (m2f default, as VICReg)

Eq. 13 (VICReg covariance, C(Z) = (Z - mean)^T (Z - mean) / (T - 1))::

    L_Cov = sum_k (1/d) sum_{i != j} C(Z_k)[i, j]^2

Decisions (docs/DESIGN.md section 2.5): embeddings L2-normalised before any distance (so D lies in [0, 2]);
the margin is computed from *detached* distances; hinges on Eq. 10 and on each variance term;
``eps = 1e-4``. :meth:`LossConfig.literal` gives the printed form (no hinge, margin not detached);
``margin="fixed"`` replaces ``m_AM`` by a constant (the ablation the paper lacks); ``use_var`` /
``use_cov`` drop Eq. 12 / 13.

Two facts worth knowing, both checked in ``tests/test_encoders_losses.py``:

* Why detach: differentiating the printed Eq. 10-11 through the margin gives
  ``dL/dD_ap = 1 - 8 exp(-4 D_ap)``, negative for ``D_ap < ln(8)/4 ~ 0.52`` (the loss pushes close
  positives *apart*), and ``dL/dD_an = -1/2 + 8 exp(4 D_an - 4)``, positive for ``D_an > 0.31`` (it pulls
  negatives *closer*). With the margin detached the gradients are +1 and -1/2, as a triplet loss wants.
* On unit vectors the adaptive margin is large: ``D_ap + 2 exp(-4 D_ap) >= 0.77``,
  ``-D_an/2 + 2 exp(4 D_an - 4) >= -0.03`` and ``-D_pn / 2 >= -1``, so the bracket of Eq. 10 is at least
  ~1.74 and the hinge never zeroes an adaptive-margin triplet; every triplet keeps contributing. The
  hinge matters for the fixed margin and for the variance terms.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

_DIST_FLOOR = 1e-12  # keeps sqrt differentiable at zero distance


@dataclass(frozen=True)
class LossConfig:
    """Form and weights of :func:`extractor_loss`.

    Parameters
    ----------
    margin : {"adaptive", "fixed"}
        Eq. 11's adaptive margin, or the constant ``fixed_margin``.
    fixed_margin : float
        Margin of the fixed-margin triplet loss.
    hinge : bool
        ``max(0, .)`` on Eq. 10 and on each variance term (m2f default). False = printed form.
    detach_margin : bool
        Compute ``m_AM`` from detached distances (m2f default). False = printed form.
    use_var, use_cov : bool
        Keep Eq. 12 / Eq. 13.
    w_triplet, w_cov, w_var : float
        l1, l2, l3 of Eq. 9 (20, 5, 1).
    eps : float
        Added to the variance under the square root.
    normalize : bool
        L2-normalise embeddings first (the encoders already output unit vectors; this is idempotent).
    """

    margin: str = "adaptive"
    fixed_margin: float = 0.2
    hinge: bool = True
    detach_margin: bool = True
    use_var: bool = True
    use_cov: bool = True
    w_triplet: float = 20.0
    w_cov: float = 5.0
    w_var: float = 1.0
    eps: float = 1e-4
    normalize: bool = True

    def __post_init__(self) -> None:
        if self.margin not in ("adaptive", "fixed"):
            raise ValueError(f"margin must be 'adaptive' or 'fixed', got {self.margin!r}")

    @classmethod
    def literal(cls, **overrides) -> LossConfig:
        """The equations exactly as printed: no hinge, margin differentiated."""
        return cls(**{"hinge": False, "detach_margin": False, **overrides})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class LossParts:
    """The total of Eq. 9 and its weighted-free parts (for logging)."""

    total: torch.Tensor
    triplet: torch.Tensor
    var: torch.Tensor
    cov: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        return {k: float(getattr(self, k).detach()) for k in ("total", "triplet", "var", "cov")}


def euclidean(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Row-wise Euclidean distance ``||x_i - y_i||`` with a finite gradient at zero."""
    return torch.sqrt(((x - y) ** 2).sum(dim=-1) + _DIST_FLOOR)


def adaptive_margin(d_ap: torch.Tensor, d_an: torch.Tensor) -> torch.Tensor:
    """Eq. 11: ``m_sim + m_dissim = 1 + 2 exp(-4 D_ap) + 1 + 2 exp(4 D_an - 4)``."""
    return 1.0 + 2.0 * torch.exp(-4.0 * d_ap) + 1.0 + 2.0 * torch.exp(4.0 * d_an - 4.0)


def triplet_from_distances(d_ap: torch.Tensor, d_an: torch.Tensor, d_pn: torch.Tensor,
                           config: LossConfig = LossConfig()) -> torch.Tensor:
    """Eq. 10 averaged over triplets, from the three distance vectors ``(T,)``.

    Parameters
    ----------
    d_ap, d_an, d_pn : torch.Tensor
        Anchor-positive, anchor-negative and positive-negative distances.
    config : LossConfig
        Margin kind, hinge and detach switches.

    Returns
    -------
    torch.Tensor
        Scalar loss.
    """
    if config.margin == "adaptive":
        if config.detach_margin:
            margin = adaptive_margin(d_ap.detach(), d_an.detach())
        else:
            margin = adaptive_margin(d_ap, d_an)
    else:
        margin = torch.full_like(d_ap, config.fixed_margin)
    per_triplet = d_ap - (d_an + d_pn) / 2.0 + margin
    if config.hinge:
        per_triplet = F.relu(per_triplet)
    return per_triplet.mean()


def variance_term(z: torch.Tensor, eps: float = 1e-4, hinge: bool = True) -> torch.Tensor:
    """Eq. 12 for one matrix ``(T, d)``: ``(1/d) sum_j [1 - sqrt(Var(z[:, j]) + eps)]`` (hinged)."""
    std = torch.sqrt(z.var(dim=0) + eps)
    gap = 1.0 - std
    if hinge:
        gap = F.relu(gap)
    return gap.mean()


def covariance_term(z: torch.Tensor) -> torch.Tensor:
    """Eq. 13 for one matrix ``(T, d)``: ``(1/d) sum_{i != j} C[i, j]^2``, C the unbiased covariance."""
    n, d = z.shape
    zc = z - z.mean(dim=0)
    cov = zc.T @ zc / max(n - 1, 1)
    off = cov - torch.diag(torch.diagonal(cov))
    return (off ** 2).sum() / d


def extractor_loss(z_a: torch.Tensor, z_p: torch.Tensor, z_n: torch.Tensor,
                   config: LossConfig = LossConfig()) -> LossParts:
    """Eq. 9: ``w_triplet * L_AMT + w_cov * L_Cov + w_var * L_Var`` over anchor/positive/negative rows.

    Parameters
    ----------
    z_a, z_p, z_n : torch.Tensor
        ``(T, d)`` embeddings of the anchors, positives and negatives (row i is one triplet).
    config : LossConfig
        Form and weights.

    Returns
    -------
    LossParts
        ``total`` (to backpropagate) and the unweighted ``triplet``, ``var`` and ``cov`` parts.

    Examples
    --------
    >>> z = torch.nn.functional.normalize(torch.randn(3, 8, 4), dim=-1)
    >>> parts = extractor_loss(z[0], z[1], z[2])
    >>> parts.total.shape
    torch.Size([])
    """
    zs = [z.float() for z in (z_a, z_p, z_n)]
    if config.normalize:
        zs = [F.normalize(z, dim=-1) for z in zs]
    a, p, n = zs
    triplet = triplet_from_distances(euclidean(a, p), euclidean(a, n), euclidean(p, n), config)
    zero = triplet.new_zeros(())
    var = sum((variance_term(z, config.eps, config.hinge) for z in zs), zero) if config.use_var else zero
    cov = sum((covariance_term(z) for z in zs), zero) if config.use_cov else zero
    total = config.w_triplet * triplet + config.w_cov * cov + config.w_var * var
    return LossParts(total=total, triplet=triplet, var=var, cov=cov)


@torch.no_grad()
def mine_semihard(embeddings: torch.Tensor, labels: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Online semi-hard triplets inside a batch (FaceNet; the rule of TF-Addons' semi-hard loss).

    Every ordered pair (anchor, positive) of equal label is used; its negative is the closest one
    *farther* from the anchor than the positive (semi-hard); when no negative is farther, the farthest
    negative is taken. Distances are computed without gradient.

    Parameters
    ----------
    embeddings : torch.Tensor
        ``(B, d)`` batch embeddings.
    labels : torch.Tensor
        ``(B,)`` integer labels.

    Returns
    -------
    anchor, positive, negative : torch.Tensor
        Index vectors ``(T,)`` into the batch; empty when the batch has no usable triplet.
    """
    emb = embeddings.detach().float()
    dist = torch.cdist(emb, emb)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    anchor, positive = torch.nonzero(same & ~eye, as_tuple=True)
    if len(anchor) == 0:
        empty = labels.new_zeros(0, dtype=torch.long)
        return empty, empty, empty
    d_an = dist[anchor]                                   # (T, B)
    is_neg = ~same[anchor]                                # (T, B)
    has_neg = is_neg.any(dim=1)
    d_ap = dist[anchor, positive][:, None]
    semi = is_neg & (d_an > d_ap)
    inf = torch.tensor(math.inf, device=emb.device)
    closest_semi = torch.where(semi, d_an, inf).argmin(dim=1)
    farthest = torch.where(is_neg, d_an, -inf).argmax(dim=1)
    negative = torch.where(semi.any(dim=1), closest_semi, farthest)
    return anchor[has_neg], positive[has_neg], negative[has_neg]
