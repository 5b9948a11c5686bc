"""The error barrier on the linear path between two networks of one mask: the measurement of Frankle et al.'s
(2020, "Linear mode connectivity and the lottery ticket hypothesis") instability analysis, also Oh et al.'s (2025)
tool, whose code asserts equal masks.

    python -m phicenter.analysis.barrier A B [--round N] [--alphas 11] [--split test] [--bn-batches all]
        [--different-masks]

A and B are round checkpoints of phicenter runs (`<run>/checkpoints/round_003.pt`) or run folders (then the
checkpoint of `--round N`, default the latest one kept). For each alpha of an even grid over [0, 1] the network
(1 - alpha) A + alpha B is built from both nets' effective weights (a pruned entry at its fill) and every other
parameter and buffer; its BatchNorm running statistics are recomputed on training data; its error is measured on
the split. The barrier is the largest error on the grid minus the mean of the two ends' errors
(docs/method.md, "Instability analysis"). Two ends with different masks (two rounds of a run, two seeds) are
refused unless --different-masks is given; their barrier is then another quantity, the interpolation barrier
between different subnetworks, and named so. Bad input is one line and exit code 2, before any work.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from phicenter.data import path_batches
from phicenter.engine.rundir import CKPT_DIR, RESULTS, checkpoint_path, read_json, write_json
from phicenter.method.linear_path import effective_state, linear_path
from phicenter.method.linear_path import grid as alpha_grid
from phicenter.method.pruning import MASK, upgrade_state

PROG = "python -m phicenter.analysis.barrier"
ONE_MASK = "error barrier between two networks of one mask (linear mode connectivity)"
DIFFERENT_MASKS = "interpolation barrier between different subnetworks"


class BadInput(ValueError):
    """One line that says what is wrong with the arguments."""


def grid(n: int) -> list[float]:
    """n evenly spaced alphas from 0 to 1 (method.linear_path.grid), refused in the command's words."""
    if n < 2:
        raise BadInput(f"--alphas must be at least 2 (both ends), got {n}")
    return alpha_grid(n)


# ---------------------------------------------------------------- phicenter runs and checkpoints


@dataclass
class Side:
    """One end of the path: a round checkpoint and the config of the run that wrote it."""

    checkpoint: Path
    round: int
    config: dict
    state: dict
    masks: dict = field(default_factory=dict)  # prunable weight name -> its bool mask (no entry: unpruned)


def _round_of(path: Path) -> int | None:
    stem = path.stem
    return int(stem.split("_")[1]) if stem.startswith("round_") and stem.split("_")[1].isdigit() else None


def locate(arg: str, round_index: int | None) -> tuple[Path, Path]:
    """(run folder, checkpoint file) of one argument."""
    path = Path(arg)
    if path.is_dir():
        if not (path / RESULTS).is_file():
            raise BadInput(f"{path}: not a phicenter run folder (no {RESULTS})")
        kept = sorted((path / CKPT_DIR).glob("round_[0-9][0-9][0-9].pt"))
        rounds = [r for r in (_round_of(p) for p in kept) if r is not None]
        if not rounds:
            raise BadInput(f"{path}: no round checkpoint in {path / CKPT_DIR}")
        want = rounds[-1] if round_index is None else round_index
        if want not in rounds:
            raise BadInput(
                f"{path}: no checkpoint of round {want} (kept: {', '.join(map(str, rounds))}; "
                "checkpoint.keep_all=true keeps every round)"
            )
        return path, checkpoint_path(path, want)
    if path.is_file():
        if round_index is not None:
            raise BadInput(f"--round picks a checkpoint in a run folder; {path} is a file")
        run = path.parent.parent
        if not (run / RESULTS).is_file():
            raise BadInput(
                f"{path}: no {RESULTS} in {run}, so the architecture is unknown (give a checkpoint "
                f"inside a run folder's {CKPT_DIR}/)"
            )
        return run, path
    raise BadInput(f"{path}: no such file or folder")


def load_side(arg: str, round_index: int | None) -> Side:
    run, ckpt = locate(arg, round_index)
    try:
        raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as e:
        raise BadInput(f"{ckpt}: not a phicenter round checkpoint ({type(e).__name__})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict) or "round" not in raw:
        raise BadInput(f"{ckpt}: not a phicenter round checkpoint (no model state and round)")
    record = read_json(run / RESULTS)
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise BadInput(f"{run / RESULTS}: unreadable, or it has no config")
    model = upgrade_state(raw["model"])
    masks = {k[: -len(MASK)]: v.bool() for k, v in model.items() if k.endswith(MASK)}
    return Side(ckpt, int(raw["round"]), record["config"], effective_state(model), masks)


def mask_difference(a: Side, b: Side) -> tuple[int, int, str | None]:
    """(entries whose mask differs, prunable entries, the first weight where they differ). A weight without a
    mask on one side counts as unpruned there."""
    differ = total = 0
    first = None
    for name in sorted(a.masks.keys() | b.masks.keys()):
        shape = (a.masks.get(name) if name in a.masks else b.masks[name]).shape
        ma, mb = (s.masks.get(name, torch.ones(shape, dtype=torch.bool)) for s in (a, b))
        n = int((ma != mb).sum())
        differ, total = differ + n, total + ma.numel()
        first = first or (name if n else None)
    return differ, total, first


def _settings(config: dict, part: str) -> dict:
    from phicenter.config import flatten, is_execution_key

    return {k: v for k, v in flatten({part: config.get(part) or {}}).items() if not is_execution_key(k)}


def check_pair(a: Side, b: Side, different_masks: bool = False) -> None:
    """The two ends must be one architecture, trained on one dataset, and (unless `different_masks`) have one
    mask: linear mode connectivity compares two trainings of one subnetwork."""
    ma, mb = _settings(a.config, "model"), _settings(b.config, "model")
    ma.pop("model.init", None), mb.pop("model.init", None)  # theta0's distribution, not the architecture
    shapes = lambda s: {k: tuple(v.shape) for k, v in s.items()}
    da, db = _settings(a.config, "dataset"), _settings(b.config, "dataset")
    for what, x, y in (
        ("are different architectures", ma, mb),
        ("are different architectures", shapes(a.state), shapes(b.state)),
        ("were trained on different data", da, db),
    ):
        diff = _first_difference(x, y)
        if diff is not None:
            show = (lambda v: v) if x is not ma and x is not da else repr
            raise BadInput(f"A and B {what} ({diff}: {show(x.get(diff))} vs {show(y.get(diff))})")
    differ, total, first = mask_difference(a, b)
    if differ and not different_masks:
        raise BadInput(
            f"A and B have different masks ({differ} of {total} prunable weights differ, first in {first}): the "
            "barrier of linear mode connectivity (Frankle et al. 2020; Oh et al. assert equal masks) compares two "
            f"trainings of one subnetwork; --different-masks measures the {DIFFERENT_MASKS} instead"
        )


def _first_difference(x: dict, y: dict) -> str | None:
    """The first key whose values differ, a `.name` first."""
    keys = sorted((k for k in x.keys() | y.keys() if x.get(k) != y.get(k)), key=lambda k: (not k.endswith(".name"), k))
    return keys[0] if keys else None


def measure(
    a: Side,
    b: Side,
    n_alphas: int = 11,
    split: str = "test",
    bn_count: int | None = None,
    data_dir: str | None = None,
    device: str = "cpu",
) -> dict:
    """The barrier between two checkpoints of phicenter runs (checked with check_pair first)."""
    from omegaconf import OmegaConf

    from phicenter import data
    from phicenter.config import settings
    from phicenter.engine import build

    cfg = OmegaConf.create(a.config)
    if data_dir is not None:
        cfg.data_dir = data_dir
    try:
        splits = build.load_data(cfg)
    except data.DataError as e:
        raise BadInput(f"{e} (--data-dir sets the data folder)") from None
    net = build.build_model(cfg, splits).to(device)
    if len(getattr(splits, f"y_{split}")) == 0:
        raise BadInput(f"the run has no {split} split")
    eval_b, train_b = path_batches(settings(cfg), splits, split, device)
    state = lambda s: {k: v.to(device) for k, v in s.state.items()}
    path = linear_path(net, state(a), state(b), grid(n_alphas), eval_b, train_b, bn_count)
    differ, total, _ = mask_difference(a, b)
    return {
        "a": str(a.checkpoint),
        "b": str(b.checkpoint),
        "round_a": a.round,
        "round_b": b.round,
        "quantity": DIFFERENT_MASKS if differ else ONE_MASK,
        "mask_entries_differing": differ,
        "mask_entries": total,
        "split": split,
        "bn_batch_size": int(cfg.batch_size) if path.bn_batches else None,
        **path.record(),
    }


# ---------------------------------------------------------------- command line


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse's default adds the usage)
        print(f"{PROG}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _count(text: str) -> int | None:
    if text == "all":
        return None
    n = int(text)
    if n < 1:
        raise ValueError(text)
    return n


def _quantity(res: dict) -> str:
    """What the printed barrier is: of one mask, or between different subnetworks (and how different)."""
    if res["quantity"] == ONE_MASK:
        return "barrier"
    return f"{DIFFERENT_MASKS} ({res['mask_entries_differing']} of {res['mask_entries']} mask entries differ)"


def main(argv: list[str] | None = None) -> int:
    p = _Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("a", metavar="A", help="round checkpoint (<run>/checkpoints/round_NNN.pt) or run folder")
    p.add_argument("b", metavar="B", help="the other end, likewise")
    p.add_argument("--round", type=int, help="with run folders: the round whose checkpoint to take")
    p.add_argument("--alphas", type=int, default=11, help="grid points over [0, 1], both ends included (11)")
    p.add_argument("--split", choices=("test", "val"), default="test", help="where the error is measured")
    p.add_argument(
        "--bn-batches",
        type=_count,
        default=None,
        metavar="N|all",
        help="training batches BatchNorm statistics are recomputed on at each alpha (default: all)",
    )
    p.add_argument("--data-dir", help="the data folder (default: the run's data_dir)")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto (cuda when there is one)")
    p.add_argument("--out", type=Path, help="also write the path and the barrier to this JSON file")
    p.add_argument(
        "--different-masks",
        action="store_true",
        help=f"accept ends with different masks: the {DIFFERENT_MASKS}, not linear mode connectivity",
    )
    try:
        args = p.parse_args(argv)
    except SystemExit as e:  # --help (0), or a bad argument (2, said in one line by _Parser)
        return int(e.code or 0)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    try:
        grid(args.alphas)
        a, b = load_side(args.a, args.round), load_side(args.b, args.round)
        check_pair(a, b, args.different_masks)
        res = measure(a, b, args.alphas, args.split, args.bn_batches, args.data_dir, device)
    except BadInput as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    print(f"{'alpha':>6}  {args.split} error (%)")
    for alpha, err in zip(res["alphas"], res["errors"]):
        print(f"{alpha:6.3f}  {100 * err:8.2f}")
    bn = (
        f"BatchNorm statistics recomputed on {res['bn_batches']} training batches of {res['bn_batch_size']}"
        if res["bn_batches"]
        else "no BatchNorm"
    )
    print(
        f"{_quantity(res)}: {100 * res['barrier']:.2f} percentage points (max error {100 * res['max_error']:.2f} % at "
        f"alpha {res['worst_alpha']:.3f}; ends {100 * res['errors'][0]:.2f} % and {100 * res['errors'][-1]:.2f} "
        f"%; {bn})"
    )
    if args.out:
        write_json(args.out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
