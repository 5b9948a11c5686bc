"""A ticket's tensors, as the file holds them: masks and signs as packed bits, the survivors' magnitudes, the
fills, and the network's architecture built back from its name and options. Plain torch (docs/method.md,
"A ticket")."""

from __future__ import annotations

import inspect

import torch
from torch import nn

from phicenter.spec import ConfigError

# bit i % 8 (least significant first) of byte i // 8 holds element i of the flattened (C order) tensor:
# numpy.unpackbits(b, bitorder="little")[:n] reads it back
_SHIFTS = torch.arange(8, dtype=torch.uint8)
_INT = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
# what a model's options say about theta0's values, not about its shapes: left out of a ticket's architecture
INIT_OPTIONS = ("name", "init", "batchnorm_init", "pretrained", "weights_path", "verify_weights")


class TicketError(ValueError):
    """A ticket file that cannot be read as one, or a ticket that cannot do what was asked: one line."""


def pack(bits: torch.Tensor) -> torch.Tensor:
    """A bool tensor as uint8 bytes, eight elements a byte (see _SHIFTS), the last byte padded with 0."""
    flat = bits.detach().reshape(-1).to(device="cpu", dtype=torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return (flat.view(-1, 8) << _SHIFTS).sum(1, dtype=torch.uint8)


def unpack(packed: torch.Tensor, shape, what: str = "bits") -> torch.Tensor:
    """pack's inverse: the bool tensor of `shape`."""
    n = 1
    for s in shape:
        n *= int(s)
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != (n + 7) // 8:
        raise TicketError(
            f"{what}: {packed.numel()} {packed.dtype} bytes do not hold the {n} bits of shape {list(shape)}"
        )
    return ((packed.unsqueeze(1) >> _SHIFTS) & 1).view(-1)[:n].bool().view(tuple(shape))


def encode_weight(name: str, weight: torch.Tensor, mask: torch.Tensor, fill: torch.Tensor) -> dict:
    """The file's tensors for one prunable weight: `<name>.weight.mask` (packed, 1 = alive), `.sign` (the
    survivors' sign bits in C order, packed: 1 = negative), `.magnitude` (|w| of the survivors, in C order) and,
    only when some pruned entry is not +0.0, `.fill` (the pruned entries' values, in C order). ValueError when a
    pruned entry of the weight is not exactly its fill (the mask is not in force)."""
    w = weight.detach().to("cpu").contiguous()
    m = mask.detach().to("cpu").bool()
    f = fill.detach().to("cpu", w.dtype)
    itype = _INT[w.element_size()]
    dead_w, dead_f = w[~m], f[~m]
    if not torch.equal(dead_w.view(itype), dead_f.view(itype)):
        raise ValueError(f"{name}: a pruned weight is not at its fill (the mask is not in force)")
    alive = w[m]
    out = {
        f"{name}.weight.mask": pack(m),
        f"{name}.weight.sign": pack(torch.signbit(alive)),
        f"{name}.weight.magnitude": alive.abs(),
    }
    if bool(dead_f.view(itype).ne(0).any()):
        out[f"{name}.weight.fill"] = dead_f.clone()
    return out


def decode_weight(
    name: str, tensors: dict, shape, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(weight, mask, fill) of one prunable weight, bit for bit what encode_weight was given."""
    try:
        m = unpack(tensors[f"{name}.weight.mask"], shape, f"{name}.weight.mask")
        alive = int(m.sum())
        negative = unpack(tensors[f"{name}.weight.sign"], (alive,), f"{name}.weight.sign")
        mag = tensors[f"{name}.weight.magnitude"]
    except KeyError as e:
        raise TicketError(f"no tensor {e.args[0]} in the ticket") from None
    if mag.dim() != 1 or mag.numel() != alive or mag.dtype != dtype:
        raise TicketError(
            f"{name}.weight.magnitude: {mag.numel()} {mag.dtype} values for {alive} survivors "
            f"of a {str(dtype).removeprefix('torch.')} weight"
        )
    fill = torch.zeros(tuple(shape), dtype=dtype)
    stored = tensors.get(f"{name}.weight.fill")
    if stored is not None:
        if stored.dim() != 1 or stored.numel() != m.numel() - alive:
            raise TicketError(f"{name}.weight.fill: {stored.numel()} values for {m.numel() - alive} pruned weights")
        fill[~m] = stored.to(dtype)
    w = fill.clone()
    w[m] = torch.where(negative, -mag, mag)  # negation sets the sign bit alone: every value comes back exactly
    return w, m, fill


def architecture(name: str, input_shape, num_classes: int, options: dict) -> nn.Module:
    """The network of registered model `name` with no weights yet (on the meta device): its shapes only.
    `options`: the model's architecture options (INIT_OPTIONS left out); a pretrained model is built without
    its weights, which come from the ticket."""
    from phicenter import models

    if name not in models.MODELS:
        raise TicketError(f"unknown model {name!r}; this phicenter has {', '.join(sorted(models.MODELS))}")
    fn = models.MODELS[name]
    kw = {k: v for k, v in options.items() if k not in INIT_OPTIONS}
    if "pretrained" in inspect.signature(fn).parameters:
        kw["pretrained"] = False
    try:
        with torch.device("meta"):
            return fn(tuple(int(s) for s in input_shape), int(num_classes), **kw)
    except ConfigError as e:  # model=custom whose target cannot be imported or called here
        raise TicketError(f"the ticket's network cannot be built here: {e}") from None


def fit_shapes(net: nn.Module, state: dict) -> None:
    """Give every Conv, Linear and BatchNorm layer of `net` the shape of its weight in `state` (a compact
    ticket's smaller layers), in place; layers that already have it stay as they are."""
    for name, m in list(net.named_modules()):
        if not isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.modules.batchnorm._BatchNorm)):
            continue
        key = "weight" if m.weight is not None else "running_mean"  # (a BatchNorm without affine parameters)
        w, have = state.get(f"{name}.{key}"), getattr(m, key)
        if w is None or have is None or tuple(w.shape) == tuple(have.shape):
            continue
        with torch.device("meta"):
            new = resized(m, tuple(w.shape))
        replace(net, name, new)


def resized(m: nn.Module, shape: tuple) -> nn.Module:
    """A layer like `m` whose weight has `shape` (fewer units, or fewer inputs)."""
    if isinstance(m, nn.Linear):
        return nn.Linear(shape[1], shape[0], bias=m.bias is not None)
    if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        if m.groups != 1:
            raise TicketError(f"a grouped convolution cannot change its width ({type(m).__name__}, groups {m.groups})")
        return type(m)(
            shape[1],
            shape[0],
            m.kernel_size,
            stride=m.stride,
            padding=m.padding,
            dilation=m.dilation,
            bias=m.bias is not None,
            padding_mode=m.padding_mode,
        )
    return type(m)(shape[0], eps=m.eps, momentum=m.momentum, affine=m.affine, track_running_stats=m.track_running_stats)


def replace(net: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, child, new)
