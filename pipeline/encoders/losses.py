r"""Losses of the utterance-level extractors (M2FNet Sec. 3.3, Eq. 9-13) and FaceNet semi-hard mining.

Notation: a batch of mined triplets gives three matrices ``Z_a, Z_p, Z_n`` of shape ``(T, d)``: the
encoder's **projector output** (before L2 normalisation) for the anchor, a positive of the anchor's
emotion and a negative of another emotion. ``z = Z / ||Z||`` are the unit vectors the encoder outputs
(what extraction writes); ``D_xy = ||z_x - z_y||`` lies in [0, 2].

Eq. 9 (total)::

    L_FE = l1 * L_AMT + l2 * L_Cov + l3 * L_Var,        l1 = 20, l2 = 5, l3 = 1

Eq. 10 (triplet, averaged over the T triplets), with a hinge (m2f) or without (printed)::

    L_AMT = max(0, D_ap - (D_an + D_pn) / 2 + m)

Eq. 11 (the paper's adaptive margin, printed form)::

    m_AM(D_ap, D_an) = m_sim + m_dissim,  m_sim = 1 + 2 exp(-4 D_ap),  m_dissim = 1 + 2 exp(4 D_an - 4)

Eq. 12-13 (VICReg variance and covariance of each matrix, summed over k in {a, p, n}; Var and C are the
unbiased column variance and covariance)::

    L_Var = sum_k (1/d) sum_j max(0, 1 - sqrt(Var(Z_k[:, j]) + eps))
    L_Cov = sum_k (1/d) sum_{i != j} C(Z_k)[i, j]^2

The m2f default form, and why (each point is measured in
``tests/pipeline/encoders/test_encoder_losses_act.py``
and ``docs/LOSSES.md``):

* **Var and Cov on the projector output, before normalisation**, as VICReg does (``main_vicreg.py``
  regularises the projector output; the std hinge at 1 is the target scale of that output). On unit
  vectors in d = 300 the per-dimension std is at most ``1/sqrt(d) ~ 0.058``, so the hinge at 1 is active
  for every dimension whatever the spread (0.94 spread vs 0.99 collapsed): the term was a constant.
  On the projector output it is ~0 for spread embeddings (std >= 1) and ~1 for collapsed ones, and Cov
  grows when dimensions are correlated. The triplet term only sees directions, so it is not touched
  by the scale Var and Cov settle.
* **Triplet distances between the unit vectors** (the space extraction writes and the probe reads).
* **The adaptive margin on the scale of those distances**: Eq. 11 is evaluated on distances measured
  in diameters of the unit sphere (``D / 2``, in [0, 1]) and its range ``[2 + 4 exp(-4), 6]`` is mapped
  linearly onto ``[0, margin_max]`` (default 1)::

      m = margin_max * (m_AM(D_ap / 2, D_an / 2) - (2 + 4 exp(-4))) / (4 - 4 exp(-4))

  It keeps Eq. 11's shape (larger for a close positive and for a far negative) but lives on the scale
  of the distances it is added to (typically 0.1-0.3), so the hinge is active for the hard triplets of
  a batch and off for the separated ones. With Eq. 11 as printed the bracket of Eq. 10
  is at least ~1.74 on unit vectors (``D_ap + 2 exp(-4 D_ap) >= 0.77``, ``-D_an / 2 + 2 exp(4 D_an - 4)
  >= -0.03``, ``-D_pn / 2 >= -1``): the hinge never switches off.
* **The margin is detached** (a target, not a quantity to optimise): it shapes training through the
  hinge, i.e. which triplets push. Differentiating the printed Eq. 10-11 gives
  ``dL/dD_ap = 1 - 8 exp(-4 D_ap)`` (< 0 for D_ap < 0.52: close positives are pushed *apart*) and
  ``dL/dD_an = -1/2 + 8 exp(4 D_an - 4)`` (> 0 for D_an > 0.31: negatives are pulled *closer*); its
  fixed point is D_ap = 0.52 > D_an = 0.31, the wrong order.

Options (the ablation the paper lacks, ``bench/loss_ablation.py``): ``margin="fixed"`` (a constant
``fixed_margin``), ``margin="eq11"`` (Eq. 11 as printed, on the unit-vector distances),
:meth:`LossConfig.literal` (the printed form: Eq. 11 as printed and differentiated, no hinge on Eq. 10
or Eq. 12), ``use_var`` / ``use_cov`` to drop Eq. 12 / 13, ``regularize="unit"`` to put Var and Cov on
the unit vectors (the earlier, inert choice).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

_DIST_FLOOR = 1e-12  # keeps sqrt differentiable at zero distance
MARGINS = ("adaptive", "eq11", "fixed")
REGULARIZED = ("projector", "unit")
#: Range of Eq. 11 for distances in [0, 1]: min at (D_ap, D_an) = (1, 0), max at (0, 1).
EQ11_LOW = 2.0 + 4.0 * math.exp(-4.0)
EQ11_HIGH = 6.0
#: Diameter of the unit sphere: the largest distance between two unit vectors.
UNIT_DIAMETER = 2.0


@dataclass(frozen=True)
class LossConfig:
    """Form and weights of :func:`extractor_loss`.

    Parameters
    ----------
    margin : {"adaptive", "eq11", "fixed"}
        Eq. 11 rescaled to the unit-sphere distances (default), Eq. 11 as printed, or the constant
        ``fixed_margin``.
    margin_max : float
        Largest value of the rescaled adaptive margin (it spans ``[0, margin_max]``).
    fixed_margin : float
        Margin of the fixed-margin triplet loss (FaceNet's 0.2).
    hinge : bool
        ``max(0, .)`` on Eq. 10 and on each variance term (default). False = printed form.
    detach_margin : bool
        Compute the margin from detached distances (default). False = differentiate through it.
    use_var, use_cov : bool
        Keep Eq. 12 / Eq. 13.
    regularize : {"projector", "unit"}
        What Eq. 12-13 see: the projector output before normalisation (default, as VICReg) or the
        unit vectors (inert: the per-dimension std of 300-d unit vectors is ~0.058).
    w_triplet, w_cov, w_var : float
        l1, l2, l3 of Eq. 9 (20, 5, 1).
    eps : float
        Added to the variance under the square root (VICReg's 1e-4).
    """

    margin: str = "adaptive"
    margin_max: float = 1.0
    fixed_margin: float = 0.2
    hinge: bool = True
    detach_margin: bool = True
    use_var: bool = True
    use_cov: bool = True
    regularize: str = "projector"
    w_triplet: float = 20.0
    w_cov: float = 5.0
    w_var: float = 1.0
    eps: float = 1e-4

    def __post_init__(self) -> None:
        if self.margin not in MARGINS:
            raise ValueError(f"margin must be one of {MARGINS}, got {self.margin!r}")
        if self.regularize not in REGULARIZED:
            raise ValueError(f"regularize must be one of {REGULARIZED}, got {self.regularize!r}")

    @classmethod
    def literal(cls, **overrides) -> LossConfig:
        """The equations as printed: Eq. 11 unscaled and differentiated, no hinge on Eq. 10 and Eq. 12."""
        return cls(**{"margin": "eq11", "hinge": False, "detach_margin": False, **overrides})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class LossParts:
    """The total of Eq. 9, its unweighted parts, and two diagnostics of the triplet term.

    ``active`` is the fraction of triplets whose Eq. 10 bracket is positive (those that push when the
    hinge is on); ``margin`` the mean margin added.
    """

    total: torch.Tensor
    triplet: torch.Tensor
    var: torch.Tensor
    cov: torch.Tensor
    active: torch.Tensor
    margin: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        return {
            k: float(getattr(self, k).detach())
            for k in ("total", "triplet", "var", "cov", "active", "margin")
        }


def euclidean(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Row-wise Euclidean distance ``||x_i - y_i||`` with a finite gradient at zero."""
    return torch.sqrt(((x - y) ** 2).sum(dim=-1) + _DIST_FLOOR)


def adaptive_margin(d_ap: torch.Tensor, d_an: torch.Tensor) -> torch.Tensor:
    """Eq. 11 as printed: ``m_sim + m_dissim = 1 + 2 exp(-4 D_ap) + 1 + 2 exp(4 D_an - 4)``."""
    return 1.0 + 2.0 * torch.exp(-4.0 * d_ap) + 1.0 + 2.0 * torch.exp(4.0 * d_an - 4.0)


def rescaled_adaptive_margin(d_ap: torch.Tensor, d_an: torch.Tensor, margin_max: float = 1.0) -> torch.Tensor:
    """Eq. 11 on distances in unit-sphere diameters, its range mapped onto ``[0, margin_max]``.

    Examples
    --------
    >>> rescaled_adaptive_margin(torch.tensor(0.0), torch.tensor(2.0)).item()   # the largest margin
    1.0
    """
    raw = adaptive_margin(d_ap / UNIT_DIAMETER, d_an / UNIT_DIAMETER)
    return margin_max * (raw - EQ11_LOW) / (EQ11_HIGH - EQ11_LOW)


def triplet_margin(d_ap: torch.Tensor, d_an: torch.Tensor, config: LossConfig) -> torch.Tensor:
    """The margin of each triplet ``(T,)`` per ``config`` (detached unless ``detach_margin`` is False)."""
    if config.margin == "fixed":
        return torch.full_like(d_ap, config.fixed_margin)
    if config.detach_margin:
        d_ap, d_an = d_ap.detach(), d_an.detach()
    if config.margin == "eq11":
        return adaptive_margin(d_ap, d_an)
    return rescaled_adaptive_margin(d_ap, d_an, config.margin_max)


def triplet_brackets(
    d_ap: torch.Tensor, d_an: torch.Tensor, d_pn: torch.Tensor, config: LossConfig = LossConfig()
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 10's bracket ``D_ap - (D_an + D_pn) / 2 + m`` per triplet, and the margins ``m``."""
    margin = triplet_margin(d_ap, d_an, config)
    return d_ap - (d_an + d_pn) / 2.0 + margin, margin


def triplet_from_distances(
    d_ap: torch.Tensor, d_an: torch.Tensor, d_pn: torch.Tensor, config: LossConfig = LossConfig()
) -> torch.Tensor:
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
    bracket, _ = triplet_brackets(d_ap, d_an, d_pn, config)
    return (F.relu(bracket) if config.hinge else bracket).mean()


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
    return (off**2).sum() / d


def extractor_loss(
    z_a: torch.Tensor, z_p: torch.Tensor, z_n: torch.Tensor, config: LossConfig = LossConfig()
) -> LossParts:
    """Eq. 9: ``w_triplet * L_AMT + w_cov * L_Cov + w_var * L_Var`` over anchor/positive/negative rows.

    Parameters
    ----------
    z_a, z_p, z_n : torch.Tensor
        ``(T, d)`` projector outputs (before L2 normalisation) of the anchors, positives and negatives
        (row i is one triplet). Eq. 10 compares their unit vectors; Eq. 12-13 see them as they are
        (or their unit vectors with ``regularize="unit"``).
    config : LossConfig
        Form and weights.

    Returns
    -------
    LossParts
        ``total`` (to backpropagate), the unweighted ``triplet``, ``var`` and ``cov`` parts, the fraction
        of ``active`` triplets and the mean ``margin``.

    Examples
    --------
    >>> z = torch.randn(3, 8, 4)
    >>> parts = extractor_loss(z[0], z[1], z[2])
    >>> parts.total.shape
    torch.Size([])
    """
    raw = [z.float() for z in (z_a, z_p, z_n)]
    unit = [F.normalize(z, dim=-1) for z in raw]
    a, p, n = unit
    bracket, margin = triplet_brackets(euclidean(a, p), euclidean(a, n), euclidean(p, n), config)
    triplet = (F.relu(bracket) if config.hinge else bracket).mean()
    regularized = raw if config.regularize == "projector" else unit
    zero = triplet.new_zeros(())
    var = (
        sum((variance_term(z, config.eps, config.hinge) for z in regularized), zero)
        if config.use_var
        else zero
    )
    cov = sum((covariance_term(z) for z in regularized), zero) if config.use_cov else zero
    total = config.w_triplet * triplet + config.w_cov * cov + config.w_var * var
    return LossParts(
        total=total,
        triplet=triplet,
        var=var,
        cov=cov,
        active=(bracket.detach() > 0).float().mean(),
        margin=margin.detach().mean(),
    )


@torch.no_grad()
def mine_semihard(
    embeddings: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Online semi-hard triplets inside a batch (FaceNet; the rule of TF-Addons' semi-hard loss).

    Every ordered pair (anchor, positive) of equal label is used; its negative is the closest one
    *farther* from the anchor than the positive (semi-hard); when no negative is farther, the farthest
    negative is taken. Distances are computed without gradient, between the rows as given (pass the
    unit vectors the triplet term compares).

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
    d_an = dist[anchor]  # (T, B)
    is_neg = ~same[anchor]  # (T, B)
    has_neg = is_neg.any(dim=1)
    d_ap = dist[anchor, positive][:, None]
    semi = is_neg & (d_an > d_ap)
    inf = torch.tensor(math.inf, device=emb.device)
    closest_semi = torch.where(semi, d_an, inf).argmin(dim=1)
    farthest = torch.where(is_neg, d_an, -inf).argmax(dim=1)
    negative = torch.where(semi.any(dim=1), closest_semi, farthest)
    return anchor[has_neg], positive[has_neg], negative[has_neg]
