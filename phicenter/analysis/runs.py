"""The runs of a grid: every results.json under the folders, labelled (dataset, row = architecture, column =
strategy) and grouped into cells by ϕ, one run per seed."""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from phicenter.config import flatten, shapes_training

RESULTS = "results.json"
# The axes the report is about: runs that differ in them only are one experiment. Settings of how a run
# executes (phicenter.config.EXECUTION_KEYS) never make two experiments either.
IGNORED_KEYS = {"seed", "phi"}
# Strategy options that act beside the signs and that every strategy has: when a dataset's runs hold more than
# one value, every column says its value, so "mask1 against mask0" is never also an unseen "BatchNorm rewound
# against kept" (docs/method.md, "Non-prunable parameters").
ACROSS_STRATEGIES = {"strategy.rewind_other"}
SKIP_DIRS = {"tb", "checkpoints", ".hydra"}

# Strategy columns: the paper's four in its tables' order, then the other strategies; any other name after
# them, alphabetically.
PAPER_COLUMNS = ("gradual", "mask0", "mask1", "standard")
STRATEGY_COLUMNS = PAPER_COLUMNS + ("sign_transfer", "sign_rewind", "lrr", "lth", "random", "random_mask")


def phi_record(entry: dict) -> dict:
    """Where a round entry says what phi did: the transfer record of a sign_transfer round (phi acts only in
    the transfer), else the round entry itself (its boundary's diagnostics)."""
    moved = entry.get("transfer")
    return moved if isinstance(moved, dict) else entry


def column_key(col: str) -> tuple:
    """Sort key of a strategy column label ("mask1" or "mask1 [strategy.rewind_other=False]")."""
    name = col.split(" [", 1)[0]
    known = STRATEGY_COLUMNS.index(name) if name in STRATEGY_COLUMNS else len(STRATEGY_COLUMNS)
    return known, name, col


# ---------------------------------------------------------------- load


@dataclass
class Run:
    path: Path
    status: str
    problem: str | None = None  # why the run is not used; None for a usable run
    config: dict = field(default_factory=dict)
    rounds: list = field(default_factory=list)
    phi: float = math.nan
    seed: int | None = None
    val: float = math.nan  # the accuracies the tables use, fractions: the final round's, or for a
    test: float = math.nan  # run that transfers (sign_transfer) its last transferred network's
    round_val: float = math.nan  # the final round's own (sign_transfer: stage 1's)
    round_test: float = math.nan
    transfer_val: float = math.nan  # sign_transfer: the last round's transferred network
    transfer_test: float = math.nan
    sparsity: float = math.nan  # final round: share of prunable weights pruned
    effective_sparsity: float = math.nan  # final round: share that can no longer change the output
    barrier: float = math.nan  # instability.enabled: the final round's test error barrier to its copy
    inactive: bool = False  # phi != 0 and phi re-signed no survivor in any round
    rounds_trained: int = 0  # rounds this run trained itself
    rounds_reused: int = 0  # rounds it took from the round store or a cohort twin (`reused_from`)
    dataset: str = ""  # labels, filled in by label()
    row: str = ""
    col: str = ""


def load(dirs: list[Path], skip: Path | None = None) -> list[Run]:
    """Every results.json under dirs, plus job folders that have none; nothing is dropped silently."""
    runs = []
    for root in dirs:
        for dirpath, dirnames, filenames in os.walk(root):
            here = Path(dirpath)
            dirnames[:] = sorted(
                d for d in dirnames if d not in SKIP_DIRS and (skip is None or (here / d).resolve() != skip)
            )
            if RESULTS in filenames:
                runs.append(read_run(here / RESULTS))
            elif "pack.json" not in filenames and ((here / ".hydra").is_dir() or "train.log" in filenames):
                runs.append(
                    Run(
                        here / RESULTS,
                        "missing",
                        "no results.json: the job stopped before its first round ended (see its train.log)",
                    )
                )
    return runs


def read_run(path: Path) -> Run:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return Run(path, "corrupt", f"unreadable results.json ({type(e).__name__})")
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
        return Run(path, "corrupt", "results.json has no config")
    status = str(data.get("status") or "unknown")
    rounds = data.get("rounds") if isinstance(data.get("rounds"), list) else []
    if not all(isinstance(r, dict) and isinstance(r.get("round"), int) for r in rounds):
        return Run(path, "corrupt", "results.json has a malformed round entry")
    run = Run(path, status, config=data["config"], rounds=rounds)
    run.rounds_reused = sum(r.get("reused_from") is not None for r in rounds)
    run.rounds_trained = len(rounds) - run.rounds_reused
    if status != "complete":
        total = (run.config.get("prune") or {}).get("iterations")
        of = f" of {total + 1}" if isinstance(total, int) else ""
        error = f"; {data['error']}" if data.get("error") else ""
        run.problem = f"{status}: {len(rounds)}{of} rounds done{error}"
        if isinstance(data.get("halved"), dict):  # pack_halving: stopped by the search, not by a fault
            h = data["halved"]
            run.problem += f"; successive halving stopped it after round {h.get('round')} (best: {h.get('best')})"
        return run
    final = data.get("final") or (rounds[-1] if rounds else None)
    try:
        run.phi = float(run.config["phi"])
        run.seed = int(run.config["seed"])
        run.test = run.round_test = float(final["test_acc"])
        run.val = run.round_val = num(final.get("val_acc"))
        run.sparsity, run.effective_sparsity = num(final.get("sparsity")), num(final.get("effective_sparsity"))
        if isinstance(final.get("instability"), dict):
            run.barrier = num(final["instability"].get("barrier"))
        moved = final.get("transfer")
        if isinstance(moved, dict):  # sign_transfer: the method's result is the transferred network
            run.val = run.transfer_val = num(moved.get("val_acc"))
            run.test = run.transfer_test = num(moved.get("test_acc"))
            if moved.get("diverged"):
                run.problem = f"the last round's transferred network diverged: {moved['diverged']}"
                return run
        for part in ("dataset", "model", "strategy"):
            if not isinstance(run.config[part]["name"], str):
                raise TypeError(f"{part}.name")
    except (KeyError, TypeError, ValueError) as e:
        run.problem = f"corrupt: complete but {type(e).__name__} {e} in config or final round"
        return run
    if not (math.isfinite(run.test) and math.isfinite(run.phi)):
        run.problem = "corrupt: complete but ϕ or the final test accuracy is not a number"
    run.inactive = run.phi != 0 and phi_changed_no_sign(rounds)
    return run


def phi_changed_no_sign(rounds: list) -> bool:
    """True when every round >= 1 says, in every layer, that phi re-signed no survivor (False when unknown);
    for sign_transfer, its transfers say it (phi_record)."""
    for r in rounds:
        if r["round"] < 1:
            continue
        r = phi_record(r)
        layers = r.get("layers") if isinstance(r.get("layers"), dict) else {}
        counts = [
            lay.get(k) if isinstance(lay, dict) else None
            for lay in layers.values()
            for k in ("flipped_by_phi_count", "dead_zone_count")
        ]
        if not counts:  # older results: only the round totals
            counts = [r.get("flipped_by_phi"), r.get("dead_zone_count")]
        if any(c is None or c != 0 for c in counts):
            return False
    return True


def num(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


# ---------------------------------------------------------------- group


def _flat(d: dict) -> dict:
    """Dotted keys, each value as canonical JSON (comparable whatever its type)."""
    return {k: json.dumps(v, sort_keys=True) for k, v in flatten(d).items()}


def _varying(runs: list[Run], keep) -> list[str]:
    flats = [_flat(r.config) for r in runs]
    keys = sorted({k for f in flats for k in f if keep(k) and k not in IGNORED_KEYS and shapes_training(k)})
    return [k for k in keys if len({f.get(k) for f in flats}) > 1]


def _suffix(run: Run, keys: list[str]) -> str:
    if not keys:
        return ""
    flat = _flat(run.config)
    return " [" + ", ".join(f"{k}={json.loads(flat[k]) if k in flat else '—'}" for k in keys) + "]"


def label(runs: list[Run]) -> None:
    """Dataset, row (architecture) and column (strategy) labels; any other setting that varies within a
    dataset is added to the label it belongs to, so different experiments never share a cell. A strategy
    option that varies within one strategy labels that strategy's columns; one of ACROSS_STRATEGIES that varies
    anywhere in the dataset labels every column."""
    by_ds = defaultdict(list)
    for r in runs:
        by_ds[r.config["dataset"]["name"]].append(r)
    for ds, rs in by_ds.items():
        ds_keys = _varying(rs, lambda k: k.startswith("dataset.") and k != "dataset.name")
        other = _varying(rs, lambda k: not k.startswith(("dataset.", "model.", "strategy.")))
        across = _varying(rs, lambda k: k in ACROSS_STRATEGIES)
        for r in rs:
            r.dataset = ds + _suffix(r, ds_keys)
        for part in ("model", "strategy"):
            by_name = defaultdict(list)
            for r in rs:
                by_name[r.config[part]["name"]].append(r)
            for name, named in by_name.items():
                keys = _varying(named, lambda k, p=part: k.startswith(p + ".") and k != p + ".name")
                for r in named:
                    if part == "model":
                        r.row = name + _suffix(r, keys + other)
                    else:
                        r.col = name + _suffix(r, sorted(set(keys) | set(across)))


@dataclass
class PhiGroup:
    """The runs of one cell at one phi, one per seed."""

    phi: float
    runs: list[Run]

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def inactive(self) -> bool:
        return all(r.inactive for r in self.runs)

    def by_seed(self) -> dict[int, Run]:
        return {r.seed: r for r in self.runs}


def group(runs: list[Run]) -> dict:
    """{(dataset, row, col): {phi: PhiGroup}}. Of two runs with the same cell, phi and seed the first one found
    is kept (DIRs in the order given, folders in name order); the other gets a `problem`."""
    cells, seen = defaultdict(dict), {}
    for r in runs:
        key = (r.dataset, r.row, r.col, r.phi, r.seed)
        if key in seen:
            r.problem = f"duplicate of {seen[key].path.parent} (same settings, ϕ and seed); not counted twice"
            continue
        seen[key] = r
        cell = cells[(r.dataset, r.row, r.col)]
        cell.setdefault(r.phi, PhiGroup(r.phi, [])).runs.append(r)
    return dict(cells)
