"""The sign transfer of Oh, Baik & Lee (2025, "Find a winning sign"), in plain torch: a signed mask taken from a
trained network and put on another network's initialisation. See docs/method.md, "sign_transfer".

A signed mask is, per prunable layer, the mask and the sign of every weight (signs(trained, phi), the phi-center
question), plus the sign of the layer's bias (relative to 0). `transfer` puts it on a network: the surviving
weights keep that network's magnitudes and take the transferred signs, pruned weights are 0, biases keep their
magnitudes and take the transferred signs; normalisation layers, their statistics and everything else stay as
the network has them (its initialisation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from phicenter.method import polarity, pruning
from phicenter.method.imp import _fractions


@dataclass
class SignedMask:
    """Per prunable layer (by module name): the mask (bool), the weights' signs (+-1, read where the mask is
    set) and the bias's signs (+-1; absent for a layer without a bias)."""

    masks: dict[str, torch.Tensor]
    signs: dict[str, torch.Tensor]
    bias_signs: dict[str, torch.Tensor]


@torch.no_grad()
def signed_mask(layers: dict[str, nn.Module], phis: dict[str, float]) -> SignedMask:
    """The signed mask of masked layers (pruning.attach_masks) at their current, trained state: each layer's mask,
    signs(effective weight, phi of that layer) and signs(bias, 0) (tie -> +1, polarity.signs)."""
    masks, signs, bias_signs = {}, {}, {}
    for name, layer in layers.items():
        masks[name] = pruning.mask_of(layer).mask.detach().bool().clone()
        signs[name] = polarity.signs(layer.weight.detach(), phis[name])
        if getattr(layer, "bias", None) is not None:
            bias_signs[name] = polarity.signs(layer.bias.detach(), 0.0)
    return SignedMask(masks, signs, bias_signs)


@torch.no_grad()
def transfer(net: nn.Module, signed: SignedMask, constants: dict[str, float] | None = None) -> nn.Module:
    """Put `signed` on `net` (in place; returned): for every prunable layer, weight = where(mask, |w| * sign, 0)
    with w the net's own weight (its initialisation), the mask held from then on (fill 0), and
    bias = |b| * bias sign. With `constants` (c per layer), survivors become c * sign instead: the constant
    magnitude of the phi-center strategies (phicenter.ticket.apply(..., magnitude="c")). Nothing else of the
    net changes. ValueError when the signed mask does not cover exactly the net's prunable layers, or a shape
    differs. sign_transfer's stage 2 (engine.transfer) and phicenter.ticket.apply both come here."""
    layers = pruning.attach_masks(net)
    if constants is not None and set(constants) != set(layers):
        raise ValueError(
            f"the constants cover layers {sorted(constants)}; the net's prunable layers are {sorted(layers)}"
        )
    if set(signed.masks) != set(layers) or set(signed.signs) != set(layers):
        raise ValueError(
            f"the signed mask covers layers {sorted(signed.masks)}; the net's prunable layers are {sorted(layers)}"
        )
    for name, layer in layers.items():
        raw, mask = pruning.raw_weight(layer), signed.masks[name].to(layer.weight.device)
        sign = signed.signs[name].to(raw.device, raw.dtype)
        if mask.shape != raw.shape or sign.shape != raw.shape:
            raise ValueError(
                f"layer {name}: the signed mask has shape {tuple(mask.shape)}, the weight {tuple(raw.shape)}"
            )
        if constants is None:
            magnitude = layer.weight.detach().abs()  # the net's own (effective) weight: its initialisation
        else:
            magnitude = torch.full_like(raw, float(constants[name]))
        mf = pruning.mask_of(layer)
        raw.copy_(torch.where(mask, magnitude * sign, torch.zeros_like(raw)))
        mf.mask.copy_(mask)
        mf.fill.zero_()
        bias = getattr(layer, "bias", None)
        if bias is not None and name in signed.bias_signs:
            b_sign = signed.bias_signs[name].to(bias.device, bias.dtype)
            if b_sign.shape != bias.shape:
                raise ValueError(
                    f"layer {name}: the bias signs have shape {tuple(b_sign.shape)}, the bias {tuple(bias.shape)}"
                )
            bias.copy_(bias.abs() * b_sign)
    return net


@torch.no_grad()
def diagnostics(
    layers: dict[str, nn.Module], phis: dict[str, float], signed: SignedMask, init: dict[str, torch.Tensor]
) -> dict:
    """What phi did to a transfer, in IMP.advance's terms, over the mask's survivors: signs phi changed
    (signs(trained, phi) vs signs(trained, 0)), signs that differ from the initialisation's they land on
    (`flipped_vs_init`: init = the transfer net's weights before the transfer), the dead zone and the critical
    phi of each layer. `layers`: the trained (stage-1) layers the signed mask was taken from."""
    per_layer, totals = (
        {},
        {"survivors": 0, "flipped_by_phi_count": 0, "flipped_vs_init_count": 0, "dead_zone_count": 0},
    )
    for name, layer in layers.items():
        trained, keep = layer.weight.detach(), signed.masks[name].to(layer.weight.device)
        stats = polarity.flip_fractions(
            trained, phis[name], signed.signs[name].to(trained.device), init[name].to(trained.device), keep
        )
        pos, neg = polarity.critical_phi(trained[keep])
        per_layer[name] = {
            "phi": phis[name],
            **stats,
            **_fractions(stats),
            "critical_phi_pos": pos,
            "critical_phi_neg": neg,
        }
        for k in totals:
            totals[k] += stats[k]
    return {**_fractions(totals), **totals, "layers": per_layer}
