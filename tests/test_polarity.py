"""polarity.signs / dead_zone / critical_phi / flip_fractions on hand-built tensors.

Values are dyadic (exact in float32) unless a test is about rounding, so every tie below is a real tie.
"""

import math

import pytest
import torch

from phicenter.method.polarity import critical_phi, dead_zone, flip_fractions, signs

REF = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0])


@pytest.mark.parametrize(
    "phi, expected",
    [
        # phi = 0: negatives -1, zero is a tie (+1), positives +1
        (0.0, [-1, -1, 1, 1, 1]),
        # phi = 0.5: 0.0 < 0.5 -> -1; 0.5 == phi is a tie -> +1
        (0.5, [-1, -1, -1, 1, 1]),
        # negative phi = -0.5: -2 < -0.5 -> -1; -0.5 is a tie -> +1; the rest are above
        (-0.5, [-1, 1, 1, 1, 1]),
        # phi beyond every entry: all below / all above
        (3.0, [-1, -1, -1, -1, -1]),
        (-3.0, [1, 1, 1, 1, 1]),
        # phi strictly between entries: 0.25 -> 0.0 below, 0.5 above
        (0.25, [-1, -1, -1, 1, 1]),
        (-1.0, [-1, 1, 1, 1, 1]),
    ],
)
def test_signs_hand_values(phi, expected):
    assert torch.equal(signs(REF, phi), torch.tensor(expected, dtype=torch.float32))


def test_signs_phi_zero_with_exact_zeros_and_negative_zero():
    # +0.0 and -0.0 both equal phi = 0 -> tie -> +1 (-0.0 < 0 is False)
    ref = torch.tensor([0.0, -0.0, 0.0, -1e-30, 1e-30])
    assert torch.equal(signs(ref, 0.0), torch.tensor([1.0, 1.0, 1.0, -1.0, 1.0]))
    # phi given as an int 0 behaves as 0.0
    assert torch.equal(signs(ref, 0), signs(ref, 0.0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_signs_dtype_and_shape(dtype):
    ref = torch.tensor([[[-1.0], [0.25]], [[0.0], [-0.25]], [[2.0], [0.125]]], dtype=dtype)
    out = signs(ref, 0.125)
    assert out.shape == (3, 2, 1) and out.dtype == dtype
    # -1 < .125 -> -1 ; .25 > .125 -> +1 ; 0 < .125 -> -1 ; -.25 -> -1 ; 2 -> +1 ; .125 tie -> +1
    assert out.flatten().tolist() == [-1, 1, -1, -1, 1, 1]
    # a new tensor, not a view: writing into it leaves the reference alone
    out.fill_(7)
    assert ref.flatten()[0].item() == -1.0


def test_signs_integer_input_gives_float32_and_scalar_shape():
    ints = torch.tensor([-3, 0, 2])
    out = signs(ints, 0.5)
    assert out.dtype == torch.float32 and out.tolist() == [-1.0, -1.0, 1.0]
    scalar = signs(torch.tensor(0.75), 0.75)  # 0-dim, tie
    assert scalar.shape == () and scalar.item() == 1.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_signs_compares_phi_exactly_not_rounded_to_dtype(dtype):
    # r is the dtype's nearest value to 0.1 (float32: 0.10000000149..., float16: 0.0999755...).
    r_t = torch.tensor([0.1], dtype=dtype)
    r = float(r_t)
    # phi == r exactly: tie -> +1
    assert signs(r_t, r).item() == 1.0
    # phi one double-ulp above r: r < phi -> -1. (Rounding phi to the dtype first would make this a tie, +1.)
    assert signs(r_t, math.nextafter(r, math.inf)).item() == -1.0
    # phi one double-ulp below r: r > phi -> +1
    assert signs(r_t, math.nextafter(r, -math.inf)).item() == 1.0
    # the paper's phi = 1e-4 against the float32 weight nearest to it (which is < 1e-4): -1, not a tie
    w = torch.tensor([1e-4], dtype=torch.float32)
    assert float(w) < 1e-4 and signs(w, 1e-4).item() == -1.0


def test_dead_zone_hand_values():
    ref = torch.tensor([-0.375, -0.125, 0.0, 0.125, 0.375, 0.25])
    # phi = 0.25: strictly inside (0, 0.25) only 0.125 (0 and 0.25 themselves excluded)
    assert dead_zone(ref, 0.25).tolist() == [False, False, False, True, False, False]
    # phi = -0.25: strictly inside (-0.25, 0): -0.125
    assert dead_zone(ref, -0.25).tolist() == [False, True, False, False, False, False]
    # phi = 0: empty zone
    assert not dead_zone(ref, 0.0).any()
    # phi = 0.5: (0, 0.5) holds 0.125, 0.375, 0.25
    assert dead_zone(ref, 0.5).tolist() == [False, False, False, True, True, True]


@pytest.mark.parametrize("phi", [0.25, 0.5, -0.25, -0.5, 0.0, 0.125, -0.125])
def test_flips_are_dead_zone_plus_one_boundary(phi):
    # every multiple of 1/8 in [-1, 1]: 0 and phi are both on the grid, so both boundaries are hit
    ref = torch.arange(-8, 9, dtype=torch.float32) / 8
    flips = signs(ref, phi) != signs(ref, 0.0)
    boundary = (ref == 0) if phi > 0 else (ref == phi) if phi < 0 else torch.zeros_like(flips)
    assert torch.equal(flips, dead_zone(ref, phi) | boundary)
    # hand count: phi = 0.25 -> {0, 1/8} flip; phi = -0.5 -> {-1/2, -3/8, -1/4, -1/8} flip
    if phi == 0.25:
        assert ref[flips].tolist() == [0.0, 0.125]
    if phi == -0.5:
        assert ref[flips].tolist() == [-0.5, -0.375, -0.25, -0.125]


def test_critical_phi_hand_layer():
    layer = torch.tensor([[0.3, -0.2], [0.05, -0.7], [0.9, -0.01]])  # float32
    pos, neg = critical_phi(layer)
    # smallest nonnegative value is 0.05, largest negative value is -0.01 (as float32, returned exactly)
    assert pos == float(torch.tensor(0.05)) and neg == float(torch.tensor(-0.01))
    base = signs(layer, 0.0)

    def flipped(phi):
        return (signs(layer, phi) != base).nonzero().tolist()

    # phi AT the positive critical value: 0.05 is a tie -> +1, nothing flips
    assert flipped(pos) == []
    # phi just above it: 0.05 < phi -> -1, exactly the (1, 0) entry flips
    assert flipped(math.nextafter(pos, math.inf)) == [[1, 0]]
    # phi halfway to the next value 0.3: still only that entry
    assert flipped(0.2) == [[1, 0]]
    # phi AT the negative critical value: -0.01 becomes a tie -> +1, so it flips
    assert flipped(neg) == [[2, 1]]
    # phi just above it (closer to 0): -0.01 < phi -> stays -1, nothing flips
    assert flipped(math.nextafter(neg, 0.0)) == []
    # phi just below it: still only that entry (the next negative value is -0.2)
    assert flipped(math.nextafter(neg, -math.inf)) == [[2, 1]]


def test_critical_phi_with_exact_zero_and_one_sided_layers():
    pos, neg = critical_phi(torch.tensor([0.0, 0.5, -0.5]))
    assert (pos, neg) == (0.0, -0.5)
    # with an exact 0 the positive critical value is 0: any phi > 0 flips it, phi = 0 does not
    ref = torch.tensor([0.0, 0.5, -0.5])
    assert torch.equal(signs(ref, 0.0), torch.tensor([1.0, 1.0, -1.0]))
    assert torch.equal(signs(ref, 1e-30), torch.tensor([-1.0, 1.0, -1.0]))
    assert critical_phi(torch.tensor([-0.5, -0.25])) == (None, -0.25)
    assert critical_phi(torch.tensor([0.5, 0.25])) == (0.25, None)
    assert critical_phi(torch.tensor([])) == (None, None)


def test_flip_fractions_hand_counts():
    ref = torch.tensor([0.1, -0.05, 0.3, 0.0, -0.2])
    phi = 0.15
    new_sign = signs(ref, phi)  # [-1, -1, +1, -1, -1]
    assert new_sign.tolist() == [-1, -1, 1, -1, -1]
    theta0 = torch.tensor([-0.5, -0.5, 0.5, 0.5, 0.5])
    survivors = torch.tensor([True, True, True, True, False])
    out = flip_fractions(ref, phi, new_sign, theta0, survivors)
    # signs at 0:   [+, -, +, +, -];  at phi: [-, -, +, -, -]  -> differ at 0 and 3 (both survivors) = 2
    # new vs theta0 sign [-, -, +, +, +]: differ at 3 and 4; 4 is pruned          = 1
    # dead zone (0, 0.15): only 0.1 (0.0 is the boundary, not inside)             = 1
    assert out == {"survivors": 4, "flipped_by_phi_count": 2, "flipped_vs_init_count": 1, "dead_zone_count": 1}


def test_signs_phi_outside_the_dtype_range():
    # float16 max is 65504; phi = 1e6 rounds to inf in float16, yet 65504 < 1e6 and inf > 1e6
    ref = torch.tensor([65504.0, float("inf"), -float("inf")], dtype=torch.float16)
    assert signs(ref, 1e6).tolist() == [-1.0, 1.0, -1.0]
    assert signs(ref, -1e6).tolist() == [1.0, 1.0, -1.0]
