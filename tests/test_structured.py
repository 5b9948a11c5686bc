"""prune.method=structured: whole output units by the L1 norm of their alive weights, exact counts, ties to the
lower unit index, the output layer untouched; and what it does to the dead zone. Hand-built tensors."""

import pytest
import torch
from tests.test_strategies import C1, C2, close, tiny, train_by_hand

from phicenter.method import pruning
from phicenter.method.imp import IMP, IMPConfig
from phicenter.method.pruning import prune_masks, unit_scores
from phicenter.method.strategies import build

# 5 units of 2 weights; L1 per unit: 0.3, 1.0, 0.3, 0.1, 0.8 (units 0 and 2 tie exactly: the same |w| values)
A = torch.tensor([[0.1, -0.2], [0.5, 0.5], [-0.1, 0.2], [0.05, 0.05], [0.4, -0.4]])
OUT = torch.tensor([[1e-6, -1e-6, 0.0, 1e-6, 0.0]])  # tiny weights: magnitude pruning would take them


def ones(w):
    return {k: torch.ones_like(v) for k, v in w.items()}


def alive_units(mask):
    return mask.flatten(1).any(1).tolist()


def test_unit_scores_by_hand():
    m = torch.ones_like(A)
    assert unit_scores(A, m).tolist() == pytest.approx([0.3, 1.0, 0.3, 0.1, 0.8])
    m[1, 0] = 0  # a dead weight does not count; a dead unit scores +inf
    m[3] = 0
    s = unit_scores(A, m)
    assert s[1].item() == pytest.approx(0.5) and s[3].item() == float("inf")
    assert unit_scores(A, m, per_weight=True)[1].item() == pytest.approx(0.5)  # 0.5 over 1 alive weight
    assert unit_scores(A, torch.ones_like(A), per_weight=True)[0].item() == pytest.approx(0.15)


def test_exact_count_and_lower_index_first_on_a_tie():
    w = {"A": A, "out": OUT}
    # base 0.6 -> k = round(0.4 * 5) = 2: unit 3 (0.1), then of the tied 0.3s the lower index, unit 0
    new = prune_masks(w, ones(w), {"A": 0.6, "out": 0.6}, method="structured")
    assert alive_units(new["A"]) == [False, True, True, False, True]
    assert new["A"][0].tolist() == [0, 0] and new["A"][2].tolist() == [1, 1]  # whole units
    assert bool(new["out"].all())  # output layer untouched
    # base 0.4 -> k = 3: units 3, 0, 2
    new = prune_masks(w, ones(w), {"A": 0.4, "out": 0.4}, method="structured")
    assert alive_units(new["A"]) == [False, True, False, False, True] and bool(new["out"].all())
    # the magnitude rule on the same tensors prunes the output layer too
    assert not bool(prune_masks(w, ones(w), {"A": 0.6, "out": 0.6})["out"].all())


def test_counts_over_rounds_and_dead_units_stay_dead():
    # 10 units with distinct L1 norms 1..10 (scrambled); base 0.8: 10 -2-> 8 -round(1.6)=2-> 6 -round(1.2)=1-> 5
    # -1-> 4 -round(0.8)=1-> 3 -round(0.6)=1-> 2 -round(0.4)=0-> 2
    norms = torch.tensor([3.0, 7, 1, 10, 5, 2, 9, 4, 8, 6])
    w = {"A": norms[:, None] * torch.tensor([[0.25, -0.75]]), "out": torch.ones(2, 10)}
    m = ones(w)
    for expected in (8, 6, 5, 4, 3, 2, 2):
        m = prune_masks(w, m, {"A": 0.8, "out": 0.8}, method="structured")
        alive = torch.tensor(alive_units(m["A"]))
        assert int(alive.sum()) == expected
        assert torch.equal(alive, norms > 10 - expected)  # the largest norms survive
        assert bool(m["out"].all())
    # a dead unit is never counted or revived even when its (masked-out) weights are the largest
    w2 = {"A": torch.tensor([[9.0, 9.0], [0.1, 0.1], [0.2, 0.2], [0.3, 0.3]]), "out": torch.ones(1, 4)}
    m2 = {"A": torch.tensor([[0.0, 0.0], [1, 1], [1, 1], [1, 1]]), "out": torch.ones(1, 4)}
    new = prune_masks(w2, m2, {"A": 0.7, "out": 0.7}, method="structured")  # 3 alive -> k = round(0.9) = 1
    assert alive_units(new["A"]) == [False, False, True, True]


def test_conv_filters_are_the_units():
    conv = torch.ones(3, 2, 2, 2)
    conv[1] *= 0.1  # the filter with the smallest L1 norm
    w = {"conv": conv, "out": torch.ones(4, 3)}
    new = prune_masks(w, ones(w), {"conv": 0.7, "out": 0.7}, method="structured")  # k = round(0.9) = 1
    assert new["conv"][1].sum() == 0 and new["conv"][[0, 2]].all()
    assert new["conv"].shape == conv.shape and new["conv"].dtype == conv.dtype


def test_global_scope_ranks_units_by_mean_abs_weight():
    # A: fan-in 2, unit means 0.12 and 0.3 (L1 0.24, 0.6); B: fan-in 4, unit means 0.1 and 0.5 (L1 0.4, 2.0)
    w = {
        "A": torch.tensor([[0.12, -0.12], [0.3, 0.3]]),
        "B": torch.tensor([[0.1] * 4, [0.5] * 4]),
        "out": torch.ones(3, 2),
    }
    # pool A + B: 4 units, base 0.75 -> k = 1: B's first unit (mean 0.1), although A's first has the smaller L1
    glo = prune_masks(w, ones(w), {"A": 0.75, "B": 0.75, "out": 0.75}, "global", "structured")
    assert alive_units(glo["A"]) == [True, True] and alive_units(glo["B"]) == [False, True]
    lay = prune_masks(w, ones(w), {"A": 0.5, "B": 0.5, "out": 0.5}, "layer", "structured")
    assert alive_units(lay["A"]) == [False, True] and alive_units(lay["B"]) == [False, True]
    # ties across layers go to pool order: A before B
    tie = {"A": torch.ones(2, 2), "B": -torch.ones(2, 4), "out": torch.ones(1, 2)}
    glo = prune_masks(tie, ones(tie), {"A": 0.75, "B": 0.75, "out": 0.75}, "global", "structured")
    assert alive_units(glo["A"]) == [False, True] and alive_units(glo["B"]) == [True, True]


def test_bad_method():
    with pytest.raises(ValueError, match="prune.method must be one of magnitude, structured"):
        prune_masks({"A": A}, {"A": torch.ones_like(A)}, {"A": 0.8}, method="spectral")
    with pytest.raises(ValueError, match="prune.method"):
        IMP(tiny(), build("mask0"), IMPConfig(method="neuron"))
    with pytest.raises(ValueError, match="output_base has no effect"):
        IMP(tiny(), build("mask0"), IMPConfig(method="structured", output_base=0.5))


def test_imp_structured_mask0_fills_the_dead_zone():
    """Trained T1 unit L1 norms: 0.9 + 0.05 + 0.3 = 1.25, 0.02 + 0.12 + 0.8 = 0.94; base 0.5 -> k = 1: unit 1 goes,
    and with it its bias and the output layer's column that read it (T2 = [[-0.2, 0.05], [0.4, -0.01]]: 0.05 and
    -0.01 go). The output layer loses no unit; every survivor is re-signed."""
    net = tiny()
    imp = IMP(net, build("mask0"), IMPConfig(phi=0.15, base=0.5, method="structured"))
    train_by_hand(net)
    diag = imp.advance(1)
    assert pruning.mask_of(net[0]).mask.tolist() == [[True] * 3, [False] * 3]
    assert pruning.mask_of(net[2]).mask.tolist() == [[True, False], [True, False]]
    close(net[0].weight, [[C1, -C1, -C1], [0, 0, 0]])  # 0.9 +, 0.05 - (below phi), -0.3 -
    close(net[0].bias, [0.5, 0.0])  # the removed unit's bias is gone
    close(net[2].weight, [[-C2, 0], [C2, 0]])  # -0.2 -, 0.4 +; the column of unit 1 is gone
    # the kept small weight 0.05 of layer 0 lies in (0, 0.15) and is re-signed by phi; the output layer's 0.05
    # read the removed unit and left with it
    l0, l2 = diag["layers"]["0"], diag["layers"]["2"]
    assert (l0["survivors"], l0["dead_zone_count"], l0["flipped_by_phi_count"]) == (3, 1, 1)
    assert (l2["survivors"], l2["dead_zone_count"], l2["flipped_by_phi_count"]) == (2, 0, 0)
    assert l2["sparsity"] == pytest.approx(1 / 2)
    assert diag["dead_zone"] == pytest.approx(1 / 5)

    # magnitude pruning at the same base removes exactly those small weights: the dead zone is empty
    net = tiny()
    imp = IMP(net, build("mask0"), IMPConfig(phi=0.15, base=0.5))
    train_by_hand(net)
    assert imp.advance(1)["dead_zone_count"] == 0
