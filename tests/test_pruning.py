"""Exact-count magnitude pruning: counts, ties, dead weights, layer vs global scope, output_base, k rounds."""

import pytest
import torch
from torch import nn

from phicenter.method import pruning
from phicenter.method.imp import IMP, IMPConfig
from phicenter.method.pruning import n_to_prune, prune_masks
from phicenter.method.strategies import build


@pytest.mark.parametrize(
    "n, base, k",
    [
        (100, 0.8, 20),
        (80, 0.8, 16),
        (64, 0.8, 13),  # 12.8 -> 13
        (51, 0.8, 10),  # 10.2 -> 10
        (3, 0.8, 1),  # 0.6 -> 1
        (2, 0.8, 0),  # 0.4 -> 0
        (0, 0.8, 0),
        # exact halves round up, whatever the float form of 1 - base:
        (5, 0.9, 1),  # 0.5 (in floats (1-0.9)*5 = 0.4999999999999999)
        (15, 0.9, 2),  # 1.5
        (2, 0.75, 1),  # 0.5
        (3, 0.5, 2),  # 1.5
        (5, 0.7, 2),  # 1.5
        (1000, 0.9, 100),
        (729, 0.9, 73),  # 72.9 -> 73
    ],
)
def test_n_to_prune_hand_table(n, base, k):
    assert n_to_prune(n, base) == k


def one(name, w, m=None):
    w = torch.as_tensor(w, dtype=torch.float32)
    return {name: w}, {name: torch.ones_like(w) if m is None else torch.as_tensor(m, dtype=torch.float32)}


def test_all_equal_magnitudes_lose_exactly_k_lowest_index_first():
    # 10 entries, |w| = 1 everywhere (mixed signs); base 0.8 -> k = round(2.0) = 2: flat indices 0 and 1
    w, m = one("a", [1, -1, 1, -1, 1, -1, 1, -1, 1, -1])
    new = prune_masks(w, m, {"a": 0.8})["a"]
    assert new.tolist() == [0, 0, 1, 1, 1, 1, 1, 1, 1, 1]
    # a threshold rule (|w| > kth smallest) would have removed all 10
    # 2-D: shape (2, 3) all equal, base 0.5 -> k = 3 -> flat 0, 1, 2 = the whole first row
    w, m = one("b", torch.full((2, 3), -0.25))
    new = prune_masks(w, m, {"b": 0.5})["b"]
    assert new.tolist() == [[0, 0, 0], [1, 1, 1]]


def test_ties_among_the_smallest():
    # |w|: idx 1, 2, 5 hold 0.1 (the smallest); 0, 3, 4, 7, 8, 9 hold 0.5; 6 holds 0.9
    w, m = one("a", [0.5, -0.1, 0.1, 0.5, -0.5, 0.1, 0.9, 0.5, 0.5, 0.5])
    # base 0.7 -> k = round(3.0) = 3: exactly the three 0.1s
    assert prune_masks(w, m, {"a": 0.7})["a"].tolist() == [1, 0, 0, 1, 1, 0, 1, 1, 1, 1]
    # base 0.6 -> k = 4: the three 0.1s, then the first 0.5 in index order (idx 0)
    assert prune_masks(w, m, {"a": 0.6})["a"].tolist() == [0, 0, 0, 1, 1, 0, 1, 1, 1, 1]
    # base 0.4 -> k = 6: 0.1 x3, then 0.5 at idx 0, 3, 4
    assert prune_masks(w, m, {"a": 0.4})["a"].tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]


def test_dead_weights_stay_dead_and_do_not_count():
    # entries 0 and 5 are already dead: one has |w| = 0 (would be "smallest"), one has |w| = 9 (largest)
    w = torch.tensor([0.0, 0.3, 0.2, 0.4, 0.1, 9.0, 0.6, 0.5])
    m = torch.tensor([0.0, 1, 1, 1, 1, 0.0, 1, 1])
    # 6 alive, base 0.5 -> k = 3 of the ALIVE: 0.1 (idx 4), 0.2 (idx 2), 0.3 (idx 1)
    new = prune_masks({"a": w}, {"a": m}, {"a": 0.5})["a"]
    assert new.tolist() == [0, 0, 0, 1, 0, 0, 1, 1]
    assert int(m.sum()) == 6  # input mask not modified
    # base close to 1 -> k = round(0.06) = 0 -> unchanged, dead stay dead
    assert prune_masks({"a": w}, {"a": m}, {"a": 0.99})["a"].tolist() == m.tolist()


def test_bool_masks_keep_their_dtype():
    w = torch.tensor([0.3, 0.1, 0.2, 0.4])
    new = prune_masks({"a": w}, {"a": torch.ones(4, dtype=torch.bool)}, {"a": 0.5})["a"]
    assert new.dtype == torch.bool and new.tolist() == [True, False, False, True]


A = torch.tensor([0.1, -0.2, 0.3, -0.4])
B = torch.tensor([0.5, -0.6, 0.7, -0.8, 0.9, -1.0])
C = torch.tensor([0.01, -0.02, 0.03, -0.04])  # the "output layer": tiny weights, its own base


def test_layer_vs_global_scope():
    w = {"A": A, "B": B}
    m = {k: torch.ones_like(v) for k, v in w.items()}
    bases = {"A": 0.5, "B": 0.5}
    # layer: A loses round(2.0) = 2 (0.1, 0.2); B loses 3 (0.5, 0.6, 0.7)
    lay = prune_masks(w, m, bases, "layer")
    assert lay["A"].tolist() == [0, 0, 1, 1] and lay["B"].tolist() == [0, 0, 0, 1, 1, 1]
    # global: one pool of 10, k = 5: all four of A (all smaller than B) and B's 0.5
    glo = prune_masks(w, m, bases, "global")
    assert glo["A"].tolist() == [0, 0, 0, 0] and glo["B"].tolist() == [0, 1, 1, 1, 1, 1]


def test_global_scope_prunes_the_output_layer_apart():
    w = {"A": A, "B": B, "C": C}
    m = {k: torch.ones_like(v) for k, v in w.items()}
    bases = {"A": 0.5, "B": 0.5, "C": 0.75}
    glo = prune_masks(w, m, bases, "global")
    # A+B pool as above; C alone: k = round(0.25 * 4) = 1 -> only 0.01 goes,
    # although all of C is smaller than everything in A and B
    assert glo["A"].tolist() == [0, 0, 0, 0] and glo["B"].tolist() == [0, 1, 1, 1, 1, 1]
    assert glo["C"].tolist() == [0, 1, 1, 1]
    # same base for C: then it is pooled. Pool of 14 at base 0.5 -> k = 7: all of C (4), then A's 0.1, 0.2, 0.3
    pooled = prune_masks(w, m, {"A": 0.5, "B": 0.5, "C": 0.5}, "global")
    assert pooled["C"].tolist() == [0, 0, 0, 0] and pooled["A"].tolist() == [0, 0, 0, 1]
    assert pooled["B"].tolist() == [1, 1, 1, 1, 1, 1]
    # output base 1 (their code for sign_transfer: the classifier left out): C is never pruned, A+B as above
    kept = prune_masks(w, m, {"A": 0.5, "B": 0.5, "C": 1.0}, "global")
    assert kept["C"].tolist() == [1, 1, 1, 1] and kept["A"].tolist() == [0, 0, 0, 0]
    assert kept["B"].tolist() == [0, 1, 1, 1, 1, 1]


def test_global_ties_across_layers_break_by_pool_order():
    w = {"A": torch.ones(4), "B": -torch.ones(6)}
    m = {k: torch.ones_like(v) for k, v in w.items()}
    # pool of 10, base 0.7 -> k = 3: concatenation order A then B -> A[0], A[1], A[2]
    glo = prune_masks(w, m, {"A": 0.7, "B": 0.7}, "global")
    assert glo["A"].tolist() == [0, 0, 0, 1] and glo["B"].tolist() == [1] * 6


def test_bad_scope():
    with pytest.raises(ValueError, match="scope"):
        prune_masks({"A": A}, {"A": torch.ones(4)}, {"A": 0.8}, "neuron")


def test_layer_scope_k_rounds_100_weights():
    # distinct magnitudes 0.01 .. 1.00 in a scrambled order with mixed signs
    g = torch.Generator().manual_seed(0)
    mags = (torch.randperm(100, generator=g) + 1).float() / 100
    w = {"a": torch.where(torch.arange(100) % 3 == 0, -mags, mags)}
    m = {"a": torch.ones(100)}
    # by hand: 100 -0.2*100=20-> 80 -16-> 64 -round(12.8)=13-> 51 -round(10.2)=10-> 41 -round(8.2)=8-> 33
    #          -round(6.6)=7-> 26 -round(5.2)=5-> 21 -round(4.2)=4-> 17 -round(3.4)=3-> 14 -round(2.8)=3-> 11
    alive = [80, 64, 51, 41, 33, 26, 21, 17, 14, 11]
    for k, n in enumerate(alive, 1):
        m = prune_masks(w, m, {"a": 0.8})
        assert int(m["a"].sum()) == n
        # with the weights held fixed, the survivors are exactly the n largest magnitudes
        assert torch.equal(m["a"].bool(), mags > (100 - n) / 100)
        assert abs((1 - n / 100) - (1 - 0.8**k)) < 0.011  # 1 - base^k, up to rounding
    assert 1 - 11 / 100 == pytest.approx(0.89)


def tiny_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 1))


def alive_counts(imp):
    return [int(pruning.mask_of(layer).mask.sum()) for layer in imp.layers.values()]


def test_imp_layer_scope_sparsity_after_k_rounds_with_output_base_and_ties():
    net = tiny_net()
    imp = IMP(net, build("mask0"), IMPConfig(base=0.8, output_base=0.9, scope="layer"))
    assert list(imp.layers) == ["0", "2", "4"] and imp.output_layer == "4"
    hidden = [80, 64, 51, 41, 33, 26, 21, 17, 14, 11]  # see test_layer_scope_k_rounds_100_weights
    # output (10 weights, base 0.9): 10 -1-> 9 -round(.9)-> 8 -round(.8)-> 7 -> 6 -> 5 -round(.5)=1-> 4,
    # then round(0.4) = 0 for ever
    out = [9, 8, 7, 6, 5, 4, 4, 4, 4, 4]
    for r in range(1, 11):
        for layer in imp.layers.values():  # "train": every |w| equal -> all ties
            pruning.raw_weight(layer).data.fill_(0.5)
        imp.advance(r)
        assert alive_counts(imp) == [hidden[r - 1], hidden[r - 1], out[r - 1]]
        # ties broken by flat index: the survivors are the LAST alive entries of each layer
        m0 = pruning.mask_of(imp.layers["0"]).mask.flatten()
        assert m0.tolist() == [False] * (100 - hidden[r - 1]) + [True] * hidden[r - 1]
    total, per = pruning.sparsity(imp.layers)
    assert per == {"0": 0.89, "2": 0.89, "4": 0.6}
    assert total == pytest.approx((89 + 89 + 6) / 210)


def test_imp_global_scope_pools_hidden_layers_and_keeps_output_apart():
    net = tiny_net()
    imp = IMP(net, build("mask0"), IMPConfig(base=0.8, output_base=0.9, scope="global"))
    idx = torch.arange(100, dtype=torch.float32).view(10, 10)
    expected = [
        # pool of 200: k = 40, all from layer 2 (its weights are all smaller) -> (100, 60)
        (100, 60, 9),
        # pool 160: k = 32 -> layer 2: 60 -> 28
        (100, 28, 8),
        # pool 128: k = round(25.6) = 26 -> layer 2: 28 -> 2
        (100, 2, 7),
        # pool 102: k = round(20.4) = 20 -> layer 2 loses its last 2, layer 0 loses 18 -> (82, 0)
        (82, 0, 6),
    ]
    for r, counts in enumerate(expected, 1):
        pruning.raw_weight(imp.layers["0"]).data.copy_(1 + idx / 1000)  # 1.000 .. 1.099
        pruning.raw_weight(imp.layers["2"]).data.copy_(-(idx + 1) / 1000)  # -0.001 .. -0.100
        pruning.raw_weight(imp.layers["4"]).data.fill_(1e-6)  # tiny, but its own pool
        imp.advance(r)
        assert tuple(alive_counts(imp)) == counts
    # layer 0 lost its 18 smallest = flat indices 0..17
    assert pruning.mask_of(imp.layers["0"]).mask.flatten().tolist() == [False] * 18 + [True] * 82


def conv_net():
    """Conv2d(4, 5, (5, 1)): 100 weights; Linear(5, 20): 100; the output layer Linear(20, 1): 20."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(4, 5, (5, 1)), nn.ReLU(), nn.Flatten(), nn.Linear(5, 20), nn.ReLU(), nn.Linear(20, 1)
    )


def test_conv_base_prunes_convolutions_at_their_own_rate():
    """Frankle & Carbin's Conv-2/4 rates: convolutions 10 % a round, fc layers 20 %, the output layer its own.
    conv (base 0.9): 100 -10-> 90 -9-> 81 -round(8.1)=8-> 73 -round(7.3)=7-> 66
    fc   (base 0.8): 100 -20-> 80 -16-> 64 -round(12.8)=13-> 51 -round(10.2)=10-> 41
    out  (base 0.5): 20 -10-> 10 -5-> 5 -round(2.5)=3-> 2 -1-> 1"""
    imp = IMP(conv_net(), build("mask0"), IMPConfig(base=0.8, conv_base=0.9, output_base=0.5))
    assert imp.bases() == {"0": 0.9, "3": 0.8, "5": 0.5}
    for r, counts in enumerate([(90, 80, 10), (81, 64, 5), (73, 51, 2), (66, 41, 1)], 1):
        for layer in imp.layers.values():
            pruning.raw_weight(layer).data.fill_(0.5)
        imp.advance(r)
        assert tuple(alive_counts(imp)) == counts
    # unset, a convolution takes base; the output layer keeps its own base whatever its kind
    assert IMP(conv_net(), build("mask0"), IMPConfig(base=0.8)).bases() == {"0": 0.8, "3": 0.8, "5": 0.8}
    conv_out = nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU(), nn.Conv2d(2, 3, 1))
    assert IMP(conv_out, build("mask0"), IMPConfig(base=0.8, conv_base=0.9)).bases() == {"0": 0.9, "2": 0.8}


def test_conv_base_under_global_scope_is_a_pool_of_its_own():
    """Global scope pools the tensors that share a base: at conv_base = base the conv and fc weights are one pool
    of 200 (k = 40, here every conv weight is smaller: 40 conv weights go); at conv_base 0.9 each is its own
    pool (conv loses 10, fc 20)."""

    def advance(conv_base):
        imp = IMP(conv_net(), build("mask0"), IMPConfig(base=0.8, conv_base=conv_base, output_base=1.0, scope="global"))
        pruning.raw_weight(imp.layers["0"]).data.fill_(0.1)
        pruning.raw_weight(imp.layers["3"]).data.fill_(0.2)
        imp.advance(1)
        return tuple(alive_counts(imp))

    assert advance(0.8) == advance(None) == (60, 100, 20)
    assert advance(0.9) == (90, 80, 20)


def test_mask_fill_and_attach_masks_idempotent():
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Conv1d(1, 1, 1))
    layers = pruning.attach_masks(net)
    assert list(layers) == ["0", "2"]  # BatchNorm is never prunable
    mf = pruning.mask_of(net[0])
    mf.mask[0, 0] = False
    assert pruning.attach_masks(net).keys() == layers.keys()
    assert not bool(pruning.mask_of(net[0]).mask[0, 0])  # not registered twice (nor reset)
    # the weight stays the layer's own Parameter; mask and fill are buffers beside it
    assert pruning.raw_weight(net[0]) is net[0].weight and isinstance(net[0].weight, nn.Parameter)
    assert list(net[0].state_dict()) == ["weight", "bias", "weight_mask", "weight_fill"]
    assert [n for n, _ in net.named_parameters()] == ["0.weight", "0.bias", "1.weight", "1.bias", "2.weight", "2.bias"]
    with torch.no_grad():
        pruning.raw_weight(net[0]).copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        mf.mask.copy_(torch.tensor([[True, False], [False, True]]))
        mf.fill.copy_(torch.tensor([[9.0, -7.0], [5.0, 9.0]]))
    # a mask or fill written takes effect at the next re-application: where(mask, weight, fill)
    assert net[0].weight.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    pruning.reapply_masks(net)
    assert net[0].weight.tolist() == [[1.0, -7.0], [5.0, 4.0]]
    total, per = pruning.sparsity(layers)
    assert per == {"0": 0.5, "2": 0.0} and total == pytest.approx(2 / 5)


def test_mask_of_an_unmasked_layer_says_so():
    with pytest.raises(ValueError, match="attach_masks"):
        pruning.mask_of(nn.Linear(2, 2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_passes_are_exact_on_every_value(dtype):
    """Both passes work on the floats' bits: alive entries keep every bit (NaN, inf, -0.0 included), dead
    gradients become +0.0 (also where they were inf or NaN), dead weights their fill to the bit (-0.0 and
    NaN-free fills included), for every float width."""
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 0.0, 1e-30, -3.5, 2.0])
    layer = nn.Linear(8, 2).to(dtype)
    pruning.attach_masks(layer)
    mf = pruning.mask_of(layer)
    keep = torch.tensor([[True, False] * 4, [False, True] * 4])
    fill = torch.tensor(
        [[0.25, -0.0, 0.0, 7.0, -1.5, 3.0, 0.0, 1e-3], [-0.0, 4.0, 5.0, 0.0, 0.0, -2.0, 0.125, 0.0]], dtype=dtype
    )
    with torch.no_grad():
        mf.mask.copy_(keep)
        mf.fill.copy_(fill)
        layer.weight.copy_(torch.stack([special, special.flip(0)]).to(dtype))
    before = layer.weight.detach().clone()
    layer.weight.grad = torch.stack([special.flip(0), special]).to(dtype)
    grad_before = layer.weight.grad.clone()
    pruning.zero_dead_grads(layer)
    pruning.reapply_masks(layer)

    def bits(t):
        return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])

    assert torch.equal(bits(layer.weight.detach())[keep], bits(before)[keep])
    assert torch.equal(bits(layer.weight.detach())[~keep], bits(fill)[~keep])
    assert torch.equal(bits(layer.weight.grad)[keep], bits(grad_before)[keep])
    assert bool((bits(layer.weight.grad)[~keep] == 0).all())  # +0.0, not -0.0 and not NaN


def test_masks_written_in_place_are_seen_by_the_next_pass():
    """The passes' derived tensors follow every in-place write of a mask or fill (copy_, a single element,
    load_state_dict) and a move of the module."""
    net = nn.Sequential(nn.Linear(3, 2))
    pruning.attach_masks(net)
    w = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])

    def reset():
        with torch.no_grad():
            net[0].weight.copy_(w)

    mf = pruning.mask_of(net[0])
    reset()
    pruning.reapply_masks(net)
    assert torch.equal(net[0].weight.detach(), w)  # all alive: nothing changes
    mf.mask[0, 1] = False
    pruning.reapply_masks(net)
    assert net[0].weight.tolist() == [[1.0, 0.0, 3.0], [4.0, 5.0, 6.0]]
    reset()
    mf.fill.fill_(9.0)
    pruning.reapply_masks(net)
    assert net[0].weight.tolist() == [[1.0, 9.0, 3.0], [4.0, 5.0, 6.0]]
    reset()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state["0.weight_mask"] = torch.tensor([[True, True, True], [True, True, False]])
    state["0.weight_fill"] = torch.full((2, 3), -1.0)
    net.load_state_dict(state)
    pruning.reapply_masks(net)
    assert net[0].weight.tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, -1.0]]
    net.double()  # new tensors: derived again
    with torch.no_grad():
        net[0].weight.fill_(2.0)
    pruning.reapply_masks(net)
    assert net[0].weight.tolist() == [[2.0, 2.0, 2.0], [2.0, 2.0, -1.0]]


def test_legacy_state_dicts_read_in_todays_names():
    """A state dict saved while masks were parametrizations (`<layer>.parametrizations.weight.original`,
    `.0.mask`, `.0.fill`) reads as today's, its weight the effective where(mask, original, fill)."""
    legacy = {
        "0.bias": torch.tensor([0.5, -0.5]),
        "0.parametrizations.weight.original": torch.tensor([[1.0, 2.0], [3.0, 4.0]]),
        "0.parametrizations.weight.0.mask": torch.tensor([[True, False], [True, True]]),
        "0.parametrizations.weight.0.fill": torch.tensor([[0.0, 0.25], [0.0, 0.0]]),
    }
    assert pruning.is_legacy(legacy)
    state = pruning.upgrade_state(legacy)
    assert not pruning.is_legacy(state)
    net = nn.Sequential(nn.Linear(2, 2))
    pruning.attach_masks(net)
    net.load_state_dict(state)
    assert net[0].weight.tolist() == [[1.0, 0.25], [3.0, 4.0]]
    assert pruning.mask_of(net[0]).mask.tolist() == [[True, False], [True, True]]
    assert pruning.upgrade_state(state) is state  # today's: as it is
