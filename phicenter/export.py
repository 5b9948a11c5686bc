"""`python -m phicenter.export RUN [--round N] [--out FILE] [--force] [--compact] [--onnx] [--data-dir DIR]`:
a run's network at one round as a signed ticket, one safetensors file that plain torch reads back
(phicenter.ticket).

The network of round N is the one the round's test accuracy was measured on: round N's trained network, as
its round checkpoint (`RUN/checkpoints/round_NNN.pt`) holds it. Default N: the last completed round. The
ticket goes to RUN/tickets/round_NNN.safetensors unless --out says where. --compact (structured runs) writes
the network without its removed units instead; --onnx also writes that network as ONNX (FILE with .onnx),
checked in onnxruntime against torch. A file already there is overwritten only with --force, and keeps its
permission bits. Bad input is one line and exit code 2, before anything is written; what is written, is
written whole (phicenter.io). See docs/method.md, "A ticket".
"""

from __future__ import annotations

import argparse
import hashlib
import os
import stat
import sys
from pathlib import Path

import torch

from phicenter.analysis.readback import BadRecord, Round, load_torch, locate
from phicenter.engine.rundir import RESULTS, THETA0
from phicenter.io import FILE_MODE, WriteError, write_file

PROG = "phicenter export"  # as argparse and every error line name it (`python -m phicenter.export` too)


class BadInput(ValueError):
    """One line that says what is wrong with the arguments."""


# What export reads of results.json, each key with the type it must have (phicenter.analysis.readback).
RECORD_SHAPE = {
    **{"config": dict, "rounds": list, "data": dict, "data.input_shape": list, "data.num_classes": int},
    **{f"config.{k}": dict for k in ("model", "strategy", "prune", "reinit")},
    **{"config.model.name": str, "config.reinit.magnitude": (str, int, float), "config.phi": (int, float)},
}


# ---------------------------------------------------------------- what the ticket holds


def network(src: Round):
    """The round's network with its masks in force, as the run held it (on the CPU)."""
    from phicenter.method import pruning
    from phicenter.ticket import TicketError, architecture

    cfg, data = src.record["config"], src.record["data"]
    try:
        net = architecture(cfg["model"]["name"], data["input_shape"], data["num_classes"], cfg["model"])
    except (TicketError, TypeError, ValueError) as e:  # a model or option this phicenter does not have
        why = (str(e).splitlines() or [type(e).__name__])[0]
        raise BadInput(f"{src.run / RESULTS}: config.model does not build a network here ({why})") from None
    pruning.attach_masks(net)
    try:
        net.load_state_dict(pruning.upgrade_state(src.state["model"]), strict=True, assign=True)
    except (RuntimeError, ValueError) as e:
        raise BadInput(
            f"{src.checkpoint}: does not hold this run's {cfg['model']['name']} network "
            f"({str(e).splitlines()[-1].strip()})"
        ) from None
    return net.eval()


def constants_and_phis(src: Round, layers) -> tuple[dict, dict]:
    """c and phi of each prunable layer, as the run computed them from theta0 (method.imp), checked against
    what results.json recorded at the round boundaries."""
    from phicenter.method.imp import layer_constant, layer_phi
    from phicenter.method.pruning import upgrade_state

    cfg, path = src.record["config"], src.run / THETA0
    if not path.is_file():
        raise BadInput(f"{src.run}: no {THETA0}, so c and phi of its layers are unknown")
    theta0 = upgrade_state(load_torch(path.read_bytes(), path))
    consts, phis = {}, {}
    for name in layers:
        w = theta0.get(f"{name}.weight")
        if not isinstance(w, torch.Tensor):
            raise BadInput(f"{path}: no weight of layer {name}")
        try:
            consts[name] = layer_constant(w, cfg["reinit"]["magnitude"])
            phis[name] = layer_phi(w, float(cfg["phi"]), cfg.get("phi_scale", "absolute"))
        except ValueError as e:
            raise BadInput(f"{path}: {e}") from None
        for entry in src.record["rounds"]:
            seen = (entry.get("layers") or {}).get(name) or {}
            if ("c" in seen and seen["c"] != consts[name]) or ("phi" in seen and seen["phi"] != phis[name]):
                raise BadInput(f"{path}: layer {name}'s c or phi is not the one {RESULTS} records")
    return consts, phis


def normalisation(src: Round, data_dir: str | None):
    """The run's splits (read as the run read them, `data_dir` when the data moved) and what the ticket
    records of its input: per-channel mean and std, applied to images scaled to [0, 1]."""
    from omegaconf import OmegaConf

    from phicenter import data
    from phicenter.engine import build
    from phicenter.spec import ConfigError

    conf = OmegaConf.create(src.record["config"])
    if data_dir is not None:
        conf.data_dir = data_dir
    try:
        splits = build.load_data(conf)
    except ConfigError as e:  # a recorded config that this phicenter's schema refuses
        raise BadInput(f"{src.run / RESULTS}: its config does not pass the checks ({e})") from None
    except (data.DataError, OSError) as e:
        raise BadInput(
            f"the ticket records the run's input normalisation, read from its data: {e} "
            "(--data-dir sets the data folder)"
        ) from None
    return splits, {"scale": "x / 255", "mean": [float(v) for v in splits.mean], "std": [float(v) for v in splits.std]}


def metadata(src: Round, phis: dict, normalize: dict) -> dict:
    from phicenter.method.strategies import STRATEGIES, Strategy
    from phicenter.ticket import INIT_OPTIONS

    cfg, e = src.record["config"], src.entry
    strategy = dict(cfg["strategy"])
    cls = STRATEGIES.get(strategy.get("name"))
    sets_c = cls is not None and cls.survivors is Strategy.survivors
    return {
        "model": cfg["model"]["name"],
        "input_shape": list(src.record["data"]["input_shape"]),
        "num_classes": int(src.record["data"]["num_classes"]),
        "model_options": {k: v for k, v in cfg["model"].items() if k not in INIT_OPTIONS},
        "init": cfg["model"].get("init"),
        "normalize": normalize,
        "phi": cfg["phi"],
        "phi_scale": cfg.get("phi_scale", "absolute"),
        "phis": phis,
        "strategy": strategy,
        "survivors_become": "c * sign" if sets_c else "kept magnitudes",
        "prune": cfg["prune"],
        "seed": cfg.get("seed"),
        "round": src.round,
        "round_key": e.get("round_key"),
        "sparsity": e.get("sparsity"),
        "effective_sparsity": e.get("effective_sparsity"),
        "val_acc": e.get("val_acc"),
        "test_acc": e.get("test_acc"),
        "checkpoint": {
            "file": src.checkpoint.name,
            "bytes": len(src.checkpoint_bytes),
            "sha256": hashlib.sha256(src.checkpoint_bytes).hexdigest(),
        },
        "config": cfg,
    }


def _equal_states(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype
        and a[k].shape == b[k].shape
        and torch.equal(a[k].reshape(-1).view(torch.uint8), b[k].reshape(-1).view(torch.uint8))
        for k in a
    )


# ---------------------------------------------------------------- the command


def build_files(
    src: Round, out: Path, compact: bool, onnx: bool, data_dir: str | None
) -> tuple[list[tuple[Path, bytes]], list[str]]:
    """Every file to write, made and checked in memory (the ticket, and the ONNX model), and what the checks
    found."""
    from safetensors.torch import load as load_tensors

    from phicenter import ticket
    from phicenter.method import pruning
    from phicenter.ticket import checks, onnxfile

    cfg = src.record["config"]
    if compact and (cfg.get("prune") or {}).get("method", "magnitude") != "structured":
        raise BadInput(
            "--compact needs a structured ticket (prune.method=structured); this run prunes single "
            "weights (magnitude): no unit is removed whole"
        )
    if onnx and onnxfile.missing():
        raise BadInput(onnxfile.missing())
    net = network(src)
    layers = pruning.prunable_layers(net)
    consts, phis = constants_and_phis(src, layers)
    splits, normalize = normalisation(src, data_dir)
    try:
        t = ticket.encode(net, metadata(src, phis, normalize), consts)
    except ValueError as e:
        raise BadInput(f"{src.checkpoint}: {e}") from None
    data = ticket.to_bytes(t)
    plain = {k: v for k, v in net.state_dict().items() if not k.endswith((pruning.MASK, pruning.FILL))}
    if not _equal_states(ticket.Ticket(t.meta, load_tensors(data)).state_dict(), plain):
        raise RuntimeError("the ticket does not give back the checkpoint's network bit for bit")
    notes, model, files = [], None, []
    try:
        if compact:
            t, model = checks.compact_checked(t, net, checks.first_test_images(splits), notes)
            data = ticket.to_bytes(t)
        files.append((out, data))
        if onnx:
            model = model if model is not None else t.network()
            files.append((out.with_suffix(".onnx"), checks.onnx_checked(model, splits, notes)))
    except ticket.TicketError as e:  # a compact network or ONNX model that does not compute the ticket's logits
        raise BadInput(str(e)) from None
    return files, notes


def size(n: int) -> str:
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse's default adds the usage)
        print(f"{PROG}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    p = _Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("run", metavar="RUN", help="a run folder (the one holding results.json)")
    p.add_argument("--round", type=int, help="the round to export (default: the last completed one)")
    p.add_argument("--out", type=Path, help="the ticket file (default: RUN/tickets/round_NNN.safetensors)")
    p.add_argument("--force", action="store_true", help="overwrite files already there (their permissions stay)")
    p.add_argument(
        "--compact", action="store_true", help="structured runs: the network without its removed units (smaller layers)"
    )
    p.add_argument("--onnx", action="store_true", help="also the ONNX model of the network (FILE with .onnx)")
    p.add_argument(
        "--data-dir",
        help="the data folder (default: the run's data_dir); the ticket records the input normalisation from it",
    )
    return p.parse_args(argv)


def _check_targets(paths: list[Path], force: bool) -> None:
    """Before any work: no file put where a folder stands, nor over a file without --force."""
    for path in paths:
        if path.is_dir():
            raise BadInput(f"{path}: a folder stands there; --out names the ticket file")
        if os.path.lexists(path) and not force:
            raise BadInput(f"{path}: exists already (--force overwrites it)")


def _mode(path: Path) -> int:
    """The permission bits of the file `path` replaces (FILE_MODE where none stands): a file overwritten on
    purpose is no more readable than the one it replaces, from its first byte there."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode) & 0o777
    except OSError:
        return FILE_MODE


def _write(files: list[tuple[Path, bytes]], force: bool) -> None:
    """Each file written whole, and all or none: those written first are removed again when one fails."""
    written = []
    try:
        for path, data in files:
            write_file(path, data, mode=_mode(path) if force else FILE_MODE)
            written.append(path)
    except WriteError:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def _summary(src: Round, files: list[tuple[Path, bytes]], notes: list[str]) -> None:
    entry, cfg = src.entry, src.record["config"]
    ckpt = len(src.checkpoint_bytes)
    for path, data in files:
        print(f"{path}: {size(len(data))} ({len(data):,} bytes)")
    for note in notes:
        print(note)
    first = len(files[0][1])
    print(
        f"round checkpoint {src.checkpoint}: {size(ckpt)} ({ckpt:,} bytes); the ticket is {ckpt / first:.1f} "
        f"times smaller"
    )
    print(
        f"{cfg['model']['name']}, round {src.round}: sparsity {_percent(entry.get('sparsity'))}, test accuracy "
        f"{_percent(entry.get('test_acc'))}; {cfg['strategy'].get('name')}, phi {cfg['phi']}, "
        f"prune.method={cfg['prune'].get('method', 'magnitude')}"
    )


def _percent(v) -> str:
    return f"{100 * v:.2f} %" if isinstance(v, (int, float)) else "not recorded"


def main(argv: list[str] | None = None) -> int:
    try:
        args = _arguments(argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        src = locate(args.run, args.round, RECORD_SHAPE)
        suffix = ".compact.safetensors" if args.compact else ".safetensors"
        out = Path(args.out or src.run / "tickets" / f"round_{src.round:03d}{suffix}")
        if args.onnx and out.suffix == ".onnx":
            raise BadInput(f"--out names the ticket file ({out}); the ONNX model goes beside it, with .onnx")
        _check_targets([out, out.with_suffix(".onnx")] if args.onnx else [out], args.force)
        files, notes = build_files(src, out, args.compact, args.onnx, args.data_dir)
    except (BadInput, BadRecord) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    try:
        _write(files, args.force)
    except WriteError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    _summary(src, files, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
