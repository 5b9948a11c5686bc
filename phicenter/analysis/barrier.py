"""The error barrier on the linear path between two networks: the instability analysis of Frankle et al. (2020,
"Linear mode connectivity and the lottery ticket hypothesis"), also Oh et al.'s (2025) tool.

    python -m phicenter.analysis.barrier A B [--round N] [--alphas 11] [--split test] [--bn-batches all]

A and B are round checkpoints of phicenter runs (`<run>/checkpoints/round_003.pt`) or run folders (then the
checkpoint of `--round N`, default the latest one kept). For each alpha of an even grid over [0, 1] the network
(1 - alpha) A + alpha B is built from both nets' effective weights (a pruned entry at its fill) and every other
parameter and buffer; its BatchNorm running statistics are recomputed on training data; its error is measured on
the split. The barrier is the largest error on the grid minus the mean of the two ends' errors
(docs/method.md, "Instability analysis"). Bad input is one line and exit code 2, before any work.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from phicenter.engine.rundir import CKPT_DIR, RESULTS, checkpoint_path, read_json, write_json
from phicenter.method import pruning

PROG = "python -m phicenter.analysis.barrier"


class BadInput(ValueError):
    """One line that says what is wrong with the arguments."""


# ---------------------------------------------------------------- the measurement, on plain modules


def effective_state(state: dict) -> dict[str, torch.Tensor]:
    """A phicenter net's state dict as the plain net's: a masked weight already holds its effective value
    (a pruned entry at its fill), so its mask and fill go; a state saved while masks were parametrizations is
    read in today's names first (pruning.upgrade_state). Every other entry is kept."""
    state = pruning.upgrade_state(state)
    return {k: v for k, v in state.items() if not k.endswith((pruning.MASK, pruning.FILL))}


def interpolate(a: dict, b: dict, alpha: float) -> dict[str, torch.Tensor]:
    """(1 - alpha) a + alpha b for every floating tensor; other tensors (BatchNorm's batch counter) from a."""
    return {k: torch.lerp(v, b[k].to(v.dtype), alpha) if v.is_floating_point() else v.clone() for k, v in a.items()}


def has_batchnorm(net: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


@torch.no_grad()
def error(net: nn.Module, batches) -> float:
    """Share of misclassified examples over the batches of (x, y), in eval mode."""
    net.eval()
    wrong = total = 0
    for x, y in batches:
        wrong += int((net(x).argmax(1) != y).sum())
        total += len(y)
    if total == 0:
        raise ValueError("no examples to measure the error on")
    return wrong / total


class First:
    """The first n batches (None: all), counted as they are drawn."""

    def __init__(self, batches, n: int | None):
        self.batches, self.n, self.drawn = batches, n, 0

    def __iter__(self):
        self.drawn = 0
        for b in self.batches:
            if self.n is not None and self.drawn >= self.n:
                return
            self.drawn += 1
            yield b


@dataclass
class LinearPath:
    alphas: list[float]
    errors: list[float]
    bn_batches: int  # training batches the BatchNorm statistics were recomputed on (0: no BatchNorm)

    @property
    def ends(self) -> float:
        return (self.errors[0] + self.errors[-1]) / 2

    @property
    def barrier(self) -> float:
        return max(self.errors) - self.ends

    @property
    def worst_alpha(self) -> float:
        return self.alphas[max(range(len(self.errors)), key=self.errors.__getitem__)]

    def record(self) -> dict:
        return {
            "alphas": self.alphas,
            "errors": self.errors,
            "barrier": self.barrier,
            "ends_mean": self.ends,
            "max_error": max(self.errors),
            "worst_alpha": self.worst_alpha,
            "bn_batches": self.bn_batches,
        }


def grid(n: int) -> list[float]:
    """n evenly spaced alphas from 0 to 1, both ends included."""
    if n < 2:
        raise BadInput(f"--alphas must be at least 2 (both ends), got {n}")
    return [i / (n - 1) for i in range(n)]


def linear_path(
    net: nn.Module, a: dict, b: dict, alphas, eval_batches, bn_batches=None, bn_count: int | None = None
) -> LinearPath:
    """The error of (1 - alpha) a + alpha b on `eval_batches` for each alpha. a and b are plain state dicts of
    `net`'s architecture (effective_state). With BatchNorm, each interpolated net's running statistics are
    reset and recomputed as exact averages over the first `bn_count` batches of `bn_batches` (None: all), in
    train mode (torch.optim.swa_utils.update_bn); without BatchNorm nothing is recomputed."""
    bn = has_batchnorm(net)
    if bn and bn_batches is None:
        raise ValueError("the net has BatchNorm: give training batches to recompute its statistics on")
    errors, used = [], 0
    for alpha in alphas:
        net.load_state_dict(interpolate(a, b, float(alpha)))
        if bn:
            seen = First(bn_batches, bn_count)
            torch.optim.swa_utils.update_bn(seen, net)
            used = seen.drawn
        errors.append(error(net, eval_batches))
    return LinearPath([float(x) for x in alphas], errors, used)


def batches(cfg, splits, split: str = "test", device="cpu"):
    """(the batches the error is measured on, the training batches BatchNorm statistics are recomputed on) of a
    run's config: the split in batches of max(batch_size, eval_batch_size); the training split in batches of
    batch_size, in an order seeded by the run's seed, not augmented, normalised as in training."""
    from phicenter import data

    x, y = getattr(splits, f"x_{split}"), getattr(splits, f"y_{split}")
    eval_bs = max(int(cfg.get("batch_size") or 60), int(cfg.get("eval_batch_size") or 1000))
    eval_b = data.Batches(x, y, splits.mean, splits.std, eval_bs).to(device)
    train_b = data.Batches(
        splits.x_train,
        splits.y_train,
        splits.mean,
        splits.std,
        int(cfg.batch_size),
        shuffle=True,
        seed=int(cfg.get("seed") or 0),
    ).to(device)
    return eval_b, train_b


# ---------------------------------------------------------------- phicenter runs and checkpoints


@dataclass
class Side:
    """One end of the path: a round checkpoint and the config of the run that wrote it."""

    checkpoint: Path
    round: int
    config: dict
    state: dict


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
    return Side(ckpt, int(raw["round"]), record["config"], effective_state(raw["model"]))


def _settings(config: dict, part: str) -> dict:
    from phicenter.config import flatten, is_execution_key

    return {k: v for k, v in flatten({part: config.get(part) or {}}).items() if not is_execution_key(k)}


def check_pair(a: Side, b: Side) -> None:
    """The two ends must be one architecture, trained on one dataset."""
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
    eval_b, train_b = batches(cfg, splits, split, device)
    state = lambda s: {k: v.to(device) for k, v in s.state.items()}
    path = linear_path(net, state(a), state(b), grid(n_alphas), eval_b, train_b, bn_count)
    return {
        "a": str(a.checkpoint),
        "b": str(b.checkpoint),
        "round_a": a.round,
        "round_b": b.round,
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
    try:
        args = p.parse_args(argv)
    except SystemExit as e:  # --help (0), or a bad argument (2, said in one line by _Parser)
        return int(e.code or 0)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    try:
        grid(args.alphas)
        a, b = load_side(args.a, args.round), load_side(args.b, args.round)
        check_pair(a, b)
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
        f"barrier: {100 * res['barrier']:.2f} percentage points (max error {100 * res['max_error']:.2f} % at "
        f"alpha {res['worst_alpha']:.3f}; ends {100 * res['errors'][0]:.2f} % and {100 * res['errors'][-1]:.2f} "
        f"%; {bn})"
    )
    if args.out:
        write_json(args.out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
