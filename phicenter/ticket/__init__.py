"""A signed ticket outside phicenter: one safetensors file (`python -m phicenter.export` writes it) that plain
torch reads back. Imports neither Lightning nor Hydra.

    from phicenter import ticket
    net = ticket.load("round_010.safetensors")              # the run's trained network of that round
    t = ticket.read("round_010.safetensors")
    fresh = ticket.apply(t, t.initialisation(seed=1))       # its mask and signs on another initialisation

What the file holds and why: docs/method.md, "A ticket".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from phicenter.method import pruning
from phicenter.method import transfer as _transfer
from phicenter.ticket.compaction import CompactError, compact, removed_units  # noqa: F401 (the API)
from phicenter.ticket.encoding import (  # noqa: F401
    INIT_OPTIONS,
    TicketError,
    architecture,
    decode_weight,
    encode_weight,
    fit_shapes,
    pack,
    unpack,
)

FORMAT, VERSION = "phicenter-ticket", 1
MASKED, COMPACT = "masked", "compact"  # every prunable weight with its mask | the compact network's weights
REQUIRED = ("kind", "model", "input_shape", "num_classes", "model_options", "layers")  # what load needs


@dataclass
class Ticket:
    """A ticket in memory: `meta` (the file's metadata, each value decoded from JSON) and `tensors` (the file's
    tensors by name). kind "masked": per prunable layer `<layer>.weight.mask`, `.sign`, `.magnitude`, `.c` (and
    `.fill`), every other tensor of the network's state under its own name; kind "compact": the compact network's
    state and, per layer that lost units, `<layer>.units` (packed: which of the original units it kept)."""

    meta: dict
    tensors: dict[str, torch.Tensor]

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def layers(self) -> dict[str, dict]:
        """Per prunable layer of the original network: shape, dtype, survivors, phi."""
        return self.meta["layers"]

    @property
    def phis(self) -> dict[str, float]:
        """phi in each layer's own units (phi_scale), as the run used it."""
        return {n: float(lay["phi"]) for n, lay in self.layers.items()}

    @property
    def constants(self) -> dict[str, float]:
        """Each layer's constant c (reinit.magnitude, from theta0)."""
        self._masked("has its constants")
        return {n: float(self.tensors[f"{n}.weight.c"]) for n in self.layers}

    def _masked(self, what: str) -> None:
        if self.kind != MASKED:
            raise TicketError(f"only a masked ticket {what}; this one is {self.kind} (export without --compact)")

    def weights(self) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per prunable layer (weight, mask, fill), bit for bit the trained network's."""
        self._masked("has masks")
        return {n: decode_weight(n, self.tensors, lay["shape"], _dtype(lay["dtype"])) for n, lay in self.layers.items()}

    def masks(self) -> dict[str, torch.Tensor]:
        return {n: m for n, (_, m, _) in self.weights().items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The network's state: each weight at its effective value (a pruned entry at its fill), everything else
        as stored."""
        if self.kind == COMPACT:
            return {k: v for k, v in self.tensors.items() if not k.endswith(".units")}
        own = {k for n in self.layers for k in self.tensors if k.startswith(f"{n}.weight.")}
        state = {k: v for k, v in self.tensors.items() if k not in own}
        state.update({f"{n}.weight": w for n, (w, _, _) in self.weights().items()})
        return state

    def network(self) -> nn.Module:
        """A plain nn.Module (eval mode, CPU, no masks) computing what the ticket's network computed."""
        m = self.meta
        net = architecture(m["model"], m["input_shape"], m["num_classes"], m["model_options"])
        state = self.state_dict()
        fit_shapes(net, state)
        try:
            net.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as e:
            raise TicketError(
                f"the ticket's tensors do not fit a {m['model']} network: {str(e).splitlines()[-1].strip()}"
            ) from None
        return net.eval()

    def masked_network(self) -> nn.Module:
        """network() with its masks and fills in force (pruning.attach_masks): as the run held it."""
        net = self.network()
        layers = pruning.attach_masks(net)
        for name, (_, mask, fill) in self.weights().items():
            mf = pruning.mask_of(layers[name])
            mf.mask.copy_(mask)
            mf.fill.copy_(fill)
        return net

    def compact(self) -> nn.Module:
        """The network without its removed units (ticket.compact)."""
        return compact(self.network(), self.masks())

    def initialisation(self, seed: int) -> nn.Module:
        """A fresh initialisation of the ticket's architecture from `seed`, drawn as the run drew theta0
        (models.build with the run's model settings): exactly theta0 of a run with that seed."""
        from phicenter import models

        model = dict(self.meta["config"]["model"])
        name, init = model.pop("name"), model.pop("init", "torch_default")
        return models.build(
            name, self.meta["input_shape"], self.meta["num_classes"], init=init, seed=int(seed), **model
        )


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise TicketError(f"unknown dtype {name!r}")
    return dtype


def encode(net: nn.Module, meta: dict, constants: dict[str, float]) -> Ticket:
    """The masked ticket of a network whose masks are in force (pruning.attach_masks; a run's network as its
    checkpoint holds it). `meta` must give at least model, input_shape, num_classes, model_options, init and
    per prunable layer its phi (`meta["phis"]`); the layers' shapes, dtypes and survivors are added here."""
    layers = pruning.prunable_layers(net)
    phis = meta["phis"]
    tensors, described = {}, {}
    own = set()
    for name, layer in layers.items():
        mf = pruning.mask_of(layer)
        tensors.update(encode_weight(name, layer.weight, mf.mask, mf.fill))
        tensors[f"{name}.weight.c"] = torch.tensor(float(constants[name]), dtype=torch.float64)
        described[name] = {
            "shape": list(layer.weight.shape),
            "dtype": str(layer.weight.dtype).removeprefix("torch."),
            "survivors": int(mf.mask.sum()),
            "phi": float(phis[name]),
        }
        own.update(pruning.state_keys(name))
    for key, value in net.state_dict().items():
        if key not in own:
            tensors[key] = value.detach().to("cpu").contiguous().clone()
    info = {k: v for k, v in meta.items() if k != "phis"}
    return Ticket({**info, "format": FORMAT, "version": VERSION, "kind": MASKED, "layers": described}, tensors)


def compacted(t: Ticket) -> Ticket:
    """The compact ticket of a masked one: the compact network's state, and per layer that lost units which of
    its original units it kept (packed bits)."""
    masks = t.masks()
    net = compact(t.network(), masks)
    gone = removed_units(t.network(), masks)
    tensors = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    for name, g in gone.items():
        if bool(g.any()):
            tensors[f"{name}.units"] = pack(~g)
    units_meta = {n: {"units": int(g.numel()), "kept": int((~g).sum())} for n, g in gone.items()}
    return Ticket({**t.meta, "kind": COMPACT, "compact": units_meta}, tensors)


def kept_units(t: Ticket) -> dict[str, torch.Tensor]:
    """A compact ticket's kept units per layer that lost some (bool per original unit)."""
    return {
        n: unpack(t.tensors[f"{n}.units"], (c["units"],), f"{n}.units")
        for n, c in t.meta.get("compact", {}).items()
        if f"{n}.units" in t.tensors
    }


# ---------------------------------------------------------------- the file


def to_bytes(t: Ticket) -> bytes:
    """The safetensors file: the tensors, and the metadata as strings (every value JSON)."""
    from safetensors.torch import save

    meta = {k: json.dumps(v, sort_keys=True) for k, v in t.meta.items()}
    return save({k: v.contiguous() for k, v in t.tensors.items()}, metadata=meta)


def save(path: str | Path, t: Ticket) -> int:
    """Write the ticket at `path` atomically (phicenter.io: the whole file or none); returns its size."""
    from phicenter.io import write_file

    data = to_bytes(t)
    write_file(path, data)
    return len(data)


def read(path: str | Path) -> Ticket:
    """A ticket file; TicketError (one line) for a file that is not a readable phicenter ticket."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            raw = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError:
        raise TicketError(f"{path}: no such file") from None
    except Exception as e:
        raise TicketError(f"{path}: not a safetensors file ({type(e).__name__}: {e})") from None
    try:
        meta = {k: json.loads(v) for k, v in raw.items()}
    except ValueError:
        raise TicketError(f"{path}: its metadata is not phicenter's (not JSON)") from None
    if meta.get("format") != FORMAT:
        raise TicketError(f"{path}: not a phicenter ticket (format {meta.get('format')!r})")
    if meta.get("version") != VERSION:
        raise TicketError(f"{path}: ticket version {meta.get('version')!r}; this phicenter reads version {VERSION}")
    missing = [k for k in REQUIRED if k not in meta]
    if missing or meta["kind"] not in (MASKED, COMPACT):
        raise TicketError(f"{path}: a damaged ticket (metadata without {', '.join(missing) or 'a known kind'})")
    return Ticket(meta, tensors)


def load(path: str | Path) -> nn.Module:
    """The ticket's network as a plain nn.Module (eval mode, CPU): for a masked ticket, the run's trained
    network of that round, its logits bit for bit the run's (CPU); for a compact one, that network without its
    removed units."""
    return read(path).network()


def apply(ticket: Ticket | str | Path, net: nn.Module, magnitude: str = "init") -> nn.Module:
    """Put the ticket's mask and signs on `net` (in place; returned), the transfer of sign_transfer's stage 2
    (method.transfer: one implementation for both). Signs: signs(w, phi) of the ticket's trained weights, each
    layer's phi; bias signs at 0. magnitude="init": survivors keep net's magnitudes (|w_net| * sign); "c": they
    become the ticket's constant of their layer (c * sign). Pruned weights are 0 and stay masked
    (pruning.attach_masks); normalisation layers stay as net has them."""
    t = ticket if isinstance(ticket, Ticket) else read(ticket)
    if magnitude not in ("init", "c"):
        raise ValueError(f"magnitude must be 'init' or 'c', got {magnitude!r}")
    t._masked("can be applied")
    ref = t.masked_network()
    signed = _transfer.signed_mask(pruning.prunable_layers(ref), t.phis)
    return _transfer.transfer(net, signed, constants=t.constants if magnitude == "c" else None)
