"""Eq. 9-13 against values worked out by hand (printed and m2f forms), gradient signs, semi-hard mining.

That every term of the default form acts on typical batches is tested in
tests/pipeline/encoders/test_encoder_losses_act.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.encoders.losses import (
    LossConfig,
    adaptive_margin,
    covariance_term,
    extractor_loss,
    mine_semihard,
    rescaled_adaptive_margin,
    triplet_from_distances,
    variance_term,
)


def t(*v):
    return torch.tensor(v, dtype=torch.float64)


def test_adaptive_margin_matches_eq11():
    # D_ap = 0.5, D_an = 1: m_sim = 1 + 2 e^-2, m_dissim = 1 + 2 e^0 = 3
    m = adaptive_margin(t(0.5), t(1.0))
    assert m.item() == pytest.approx(1 + 2 * math.exp(-2) + 3, abs=1e-12)


def test_printed_eq11_triplet_on_unit_vectors_by_hand():
    # a = (1,0), p = (0,1), n = (-1,0): D_ap = sqrt2, D_an = 2, D_pn = sqrt2 (inputs scaled by 3: the
    # triplet term compares unit vectors)
    a, p, n = 3 * t(1.0, 0.0)[None], 3 * t(0.0, 1.0)[None], 3 * t(-1.0, 0.0)[None]
    cfg = LossConfig(margin="eq11", use_var=False, use_cov=False)
    parts = extractor_loss(a, p, n, cfg)
    r2 = math.sqrt(2)
    margin = (1 + 2 / math.exp(4 * r2)) + (1 + 2 / math.exp(-4 * 2 + 4))
    expected = r2 - (2 + r2) / 2 + margin
    assert parts.triplet.item() == pytest.approx(expected, rel=1e-6)
    assert parts.total.item() == pytest.approx(20 * expected, rel=1e-6)
    assert parts.margin.item() == pytest.approx(margin, rel=1e-6) and parts.active.item() == 1.0


def test_rescaled_adaptive_margin_by_hand():
    # Eq. 11 at distances / 2, mapped from [2 + 4 e^-4, 6] onto [0, margin_max]
    low, high = 2 + 4 * math.exp(-4), 6.0
    d_ap, d_an = 0.3, 0.5
    eq11 = 1 + 2 * math.exp(-4 * d_ap / 2) + 1 + 2 * math.exp(4 * d_an / 2 - 4)
    expected = (eq11 - low) / (high - low)
    assert rescaled_adaptive_margin(t(d_ap), t(d_an)).item() == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.286, abs=1e-3)
    assert rescaled_adaptive_margin(t(d_ap), t(d_an), margin_max=0.5).item() == pytest.approx(expected / 2)
    assert rescaled_adaptive_margin(t(2.0), t(0.0)).item() == pytest.approx(0.0, abs=1e-12)  # its range
    assert rescaled_adaptive_margin(t(0.0), t(2.0)).item() == pytest.approx(1.0, abs=1e-12)
    # the default triplet term uses it, hinged: a = (1,0), p = (0.8, 0.6), n = (0, 1)
    a, p, n = t(1.0, 0.0)[None], t(0.8, 0.6)[None], t(0.0, 1.0)[None]
    dap, dan, dpn = math.sqrt(0.04 + 0.36), math.sqrt(2), math.sqrt(0.64 + 0.16)
    m = rescaled_adaptive_margin(t(dap), t(dan)).item()
    parts = extractor_loss(a, p, n, LossConfig(use_var=False, use_cov=False))
    assert parts.triplet.item() == pytest.approx(max(0.0, dap - (dan + dpn) / 2 + m), abs=1e-9)


def test_fixed_margin_and_hinge_by_hand():
    d_ap, d_an, d_pn = t(0.5, 0.1), t(1.0, 1.5), t(0.8, 1.5)
    cfg = LossConfig(margin="fixed", fixed_margin=0.2)
    # triplet 1: 0.5 - 0.9 + 0.2 = -0.2 -> 0 ; triplet 2: 0.1 - 1.5 + 0.2 = -1.2 -> 0
    assert triplet_from_distances(d_ap, d_an, d_pn, cfg).item() == pytest.approx(0.0)
    no_hinge = LossConfig(margin="fixed", fixed_margin=0.2, hinge=False)
    assert triplet_from_distances(d_ap, d_an, d_pn, no_hinge).item() == pytest.approx((-0.2 - 1.2) / 2)
    hard = LossConfig(margin="fixed", fixed_margin=1.0)
    # 0.5 - 0.9 + 1 = 0.6 ; 0.1 - 1.5 + 1 = -0.4 -> 0
    assert triplet_from_distances(d_ap, d_an, d_pn, hard).item() == pytest.approx(0.3)


def test_hinge_zeroes_gradient_of_easy_triplets():
    d_ap, d_an, d_pn = (x.requires_grad_() for x in (t(0.1), t(1.5), t(1.5)))
    triplet_from_distances(d_ap, d_an, d_pn, LossConfig(margin="fixed")).backward()
    assert d_ap.grad.item() == 0 and d_an.grad.item() == 0 and d_pn.grad.item() == 0
    d_ap2 = t(0.1).requires_grad_()
    triplet_from_distances(d_ap2, t(1.5), t(1.5), LossConfig(margin="fixed", hinge=False)).backward()
    assert d_ap2.grad.item() == pytest.approx(1.0)


def test_detached_margin_gets_no_gradient_and_literal_form_pushes_positives_apart():
    # close positive (D_ap = 0.1), far-ish negative (D_an = 1); Eq. 11 as printed keeps the hinge on
    d_ap, d_an, d_pn = (x.requires_grad_() for x in (t(0.1), t(1.0), t(1.0)))
    triplet_from_distances(d_ap, d_an, d_pn, LossConfig(margin="eq11")).backward()
    assert d_ap.grad.item() == pytest.approx(1.0)  # only the D_ap term: pull positives together
    assert d_an.grad.item() == pytest.approx(-0.5)
    d_ap, d_an, d_pn = (x.requires_grad_() for x in (t(0.1), t(1.0), t(1.0)))
    triplet_from_distances(d_ap, d_an, d_pn, LossConfig.literal()).backward()
    assert d_ap.grad.item() == pytest.approx(1 - 8 * math.exp(-0.4))  # < 0: pushes apart
    assert d_ap.grad.item() < 0
    assert d_an.grad.item() == pytest.approx(-0.5 + 8 * math.exp(0.0))  # > 0: pulls negative closer


def test_printed_eq11_margin_never_lets_the_hinge_switch_off_on_unit_vectors():
    # why the default rescales Eq. 11: as printed, every bracket is >= ~1.74 on unit vectors
    torch.manual_seed(0)
    z = torch.randn(3, 2000, 3, dtype=torch.float64)
    printed = LossConfig(margin="eq11", use_var=False, use_cov=False)
    parts = extractor_loss(z[0], z[1], z[2], printed)
    lit = extractor_loss(
        z[0], z[1], z[2], LossConfig(margin="eq11", use_var=False, use_cov=False, hinge=False)
    )
    assert parts.triplet.item() == pytest.approx(lit.triplet.item())
    assert parts.triplet.item() > 1.7 and parts.active.item() == 1.0
    rescaled = extractor_loss(z[0], z[1], z[2], LossConfig(use_var=False, use_cov=False))
    assert 0.0 < rescaled.active.item() < 1.0


def test_variance_term_by_hand_with_and_without_hinge():
    z = t(0.0, 0.0, 2.0, 0.0).view(2, 2)  # unbiased var: col0 = 2, col1 = 0
    eps = 1e-4
    hinged = variance_term(z, eps, hinge=True)
    assert hinged.item() == pytest.approx((0 + (1 - math.sqrt(eps))) / 2)
    literal = variance_term(z, eps, hinge=False)
    assert literal.item() == pytest.approx(((1 - math.sqrt(2 + eps)) + (1 - math.sqrt(eps))) / 2)


def test_variance_hinge_zeroes_gradient_of_spread_dimensions():
    z = t(0.0, 0.0, 2.0, 0.1).view(2, 2).requires_grad_()
    variance_term(z, hinge=True).backward()
    assert torch.all(z.grad[:, 0] == 0)  # std sqrt2 > 1: nothing to do
    assert z.grad[1, 1] < 0 < z.grad[0, 1]  # std < 1: push the two rows apart


def test_covariance_term_by_hand():
    z = t(1.0, 1.0, -1.0, -1.0).view(2, 2)  # cov = [[2, 2], [2, 2]]: off-diagonal 2^2 + 2^2 = 8, / d=2
    assert covariance_term(z).item() == pytest.approx(4.0)
    diag_only = t(1.0, 0.0, -1.0, 0.0, 0.0, 1.0, 0.0, -1.0).view(4, 2)  # uncorrelated columns
    assert covariance_term(diag_only).item() == pytest.approx(0.0)


def test_total_is_eq9_weighted_sum_and_switches_drop_terms():
    torch.manual_seed(1)
    z = 0.5 * torch.randn(3, 6, 4, dtype=torch.float64)  # projector outputs, not unit vectors
    parts = extractor_loss(z[0], z[1], z[2])
    var = sum(variance_term(z[k]) for k in range(3))  # Eq. 12-13 see the projector output
    cov = sum(covariance_term(z[k]) for k in range(3))
    assert parts.var.item() == pytest.approx(var.item())
    assert parts.cov.item() == pytest.approx(cov.item())
    assert parts.total.item() == pytest.approx(20 * parts.triplet.item() + 5 * cov.item() + var.item())
    unit = torch.nn.functional.normalize(z, dim=-1)  # the triplet term sees unit vectors
    assert extractor_loss(unit[0], unit[1], unit[2]).triplet.item() == pytest.approx(parts.triplet.item())
    on_unit = extractor_loss(z[0], z[1], z[2], LossConfig(regularize="unit"))
    assert on_unit.var.item() == pytest.approx(sum(variance_term(unit[k]) for k in range(3)).item())
    only_t = extractor_loss(z[0], z[1], z[2], LossConfig(use_var=False, use_cov=False))
    assert only_t.total.item() == pytest.approx(20 * parts.triplet.item())
    assert only_t.var.item() == 0 and only_t.cov.item() == 0


def test_fixed_margin_rejects_unknown_kind():
    with pytest.raises(ValueError, match="adaptive"):
        LossConfig(margin="soft")
    with pytest.raises(ValueError, match="projector"):
        LossConfig(regularize="sphere")
    lit = LossConfig.literal()
    assert (lit.margin, lit.hinge, lit.detach_margin) == ("eq11", False, False)


def test_mine_semihard_picks_closest_farther_negative_else_farthest():
    # 1-D points; labels 0 0 1 1 1
    emb = torch.tensor([[0.0], [1.0], [1.5], [3.0], [0.5]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    a, p, n = mine_semihard(emb, labels)
    chosen = {(int(x), int(y)): int(z) for x, y, z in zip(a, p, n, strict=True)}
    # anchor 0, positive 1 (d=1): negatives at 1.5 (idx2), 3 (idx3), 0.5 (idx4); farther than 1: 1.5 -> idx2
    assert chosen[(0, 1)] == 2
    # anchor 1, positive 0 (d=1): negatives at d 0.5 (2), 2 (3), 0.5 (4); farther than 1: only idx3
    assert chosen[(1, 0)] == 3
    # anchor 3, positive 2 (d=1.5): negatives at d 3 (0), 2 (1): closest farther -> idx1
    assert chosen[(3, 2)] == 1
    # anchor 4, positive 3 (d=2.5): negatives at d 0.5, 0.5: none farther -> the farthest (tie: first)
    assert chosen[(4, 3)] == 0
    assert len(a) == 2 + 6  # ordered positive pairs: 2 of class 0, 6 of class 1


def test_mine_semihard_without_negatives_is_empty():
    a, p, n = mine_semihard(torch.randn(3, 2), torch.tensor([0, 0, 0]))
    assert len(a) == len(p) == len(n) == 0
