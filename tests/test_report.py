"""phicenter.analysis.report: known numbers in -> known cells, CIs and p-values out; bad runs listed; a tiny grid."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from phicenter.analysis import report

REPO = Path(__file__).resolve().parents[1]
T975_DF2 = 4.302652729911275  # Student t, 97.5 % quantile, 2 degrees of freedom (tables)


# ---------------------------------------------------------------- a fabricated results tree


def layer(flips: int) -> dict:
    return {
        "sparsity": 0.2,
        "c": 0.05,
        "phi": 0.0,
        "survivors": 800,
        "flipped_by_phi_count": flips,
        "flipped_vs_init_count": flips,
        "dead_zone_count": flips,
        "flipped_by_phi": flips / 800,
        "flipped_vs_init": flips / 800,
        "dead_zone": flips / 800,
        "critical_phi_pos": 2e-4,
        "critical_phi_neg": -3e-4,
    }


def round_entry(r: int, val: float, test: float, flips: int) -> dict:
    diag = None if r == 0 else flips / 1600
    return {
        "round": r,
        "sparsity": 1 - 0.8**r,
        "effective_sparsity": 1 - 0.8**r + 0.01 * r,
        "train_loss": 0.1,
        "train_acc": 0.99,
        "val_acc": val,
        "test_acc": test,
        "test_loss": 0.3,
        "flipped_by_phi": diag,
        "flipped_vs_init": diag,
        "dead_zone": diag,
        "dead_zone_count": None if r == 0 else flips,
        "seconds": 1.0,
        "layers": {"fc1": {"sparsity": 0.0}, "out": {"sparsity": 0.0}}
        if r == 0
        else {"fc1": layer(flips), "out": layer(0)},
        "epochs": [],
    }


def write_run(
    root: Path,
    strategy: str,
    phi: float,
    seed: int,
    val: float,
    test: float,
    flips: int = 5,
    status: str = "complete",
    rounds: int = 2,
    **extra,
) -> Path:
    cfg = {
        "dataset": {"name": "digits", "val_size": 180},
        "model": {"name": "fc_lot", "init": "torch_default"},
        "strategy": {"name": strategy, "pruned_fill": "zero"},
        "phi": phi,
        "phi_scale": "absolute",
        "seed": seed,
        "epochs": 2,
        "batch_size": 60,
        "threads": 1,
        "data_dir": "./data",
        "prune": {"iterations": rounds, "base": 0.8, "scope": "layer", "output_base": None},
        **extra,
    }
    # earlier rounds a little worse; the last round carries the given accuracies
    rs = [round_entry(r, val - 0.01 * (rounds - r), test - 0.01 * (rounds - r), flips) for r in range(rounds + 1)]
    data = {"config": cfg, "rounds": rs, "final": rs[-1], "status": status, "device": "cpu"}
    job = root / f"phi={phi},seed={seed},strategy={strategy}"
    job.mkdir(parents=True)
    (job / "results.json").write_text(json.dumps(data))
    return job


@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "grid"
    # mask1, 3 seeds. phi = 1e-3 has the best validation accuracy; phi = -1e-3 the best test accuracy.
    for seed, (v0, t0) in enumerate([(0.90, 0.900), (0.91, 0.910), (0.92, 0.920)]):
        write_run(root, "mask1", 0.0, seed, v0, t0, flips=0)
    for seed, t in enumerate([0.920, 0.935, 0.930]):
        write_run(root, "mask1", 1e-3, seed, 0.95, t)
    for seed, t in enumerate([0.950, 0.950, 0.950]):
        write_run(root, "mask1", -1e-3, seed, 0.80, t)
    # mask0: phi = 5e-5 changed no sign (inactive) but has the highest accuracy, as GPU noise could make it;
    # phi = 5e-4 is active and identical to phi = 0 in every seed.
    for seed in range(3):
        write_run(root, "mask0", 0.0, seed, 0.90, 0.90, flips=0)
        write_run(root, "mask0", 5e-5, seed, 0.99, 0.90 + (0.005 if seed == 1 else 0.0), flips=0)
        write_run(root, "mask0", 5e-4, seed, 0.90, 0.90, flips=3)
    # gradual: one seed only
    write_run(root, "gradual", 0.0, 0, 0.90, 0.90, flips=0)
    write_run(root, "gradual", 1e-4, 0, 0.93, 0.92)
    return root


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def by(rows, **match) -> dict:
    hits = [r for r in rows if all(r[k] == v for k, v in match.items())]
    assert len(hits) == 1, (match, hits)
    return hits[0]


def no_nan(out: Path) -> None:
    for f in out.iterdir():
        if f.suffix in (".md", ".csv"):
            assert not re.search(r"\bnan\b|\binf\b", f.read_text(), re.I), f.name


# ---------------------------------------------------------------- statistics on known numbers


def test_mean_ci_and_paired_t_by_hand():
    m, half, n = report.mean_ci([0.920, 0.935, 0.930])
    sd = math.sqrt(((0.920 - m) ** 2 + (0.935 - m) ** 2 + (0.930 - m) ** 2) / 2)
    assert n == 3 and m == pytest.approx(0.928333333)
    assert half == pytest.approx(T975_DF2 * sd / math.sqrt(3))

    # diffs 2.0, 2.5, 1.0 pp: t = mean / (sd / sqrt 3); with 2 df the two-sided p is 1 - t / sqrt(t^2 + 2)
    d = [0.020, 0.025, 0.010]
    res = report.paired(d)
    mean = sum(d) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 2)
    t = mean / (sd / math.sqrt(3))
    assert res["mean"] == pytest.approx(mean)
    assert res["ci"] == pytest.approx(T975_DF2 * sd / math.sqrt(3))
    assert res["p_t"] == pytest.approx(1 - t / math.sqrt(t * t + 2))
    assert res["p_t"] == pytest.approx(0.0533, abs=1e-4)
    assert res["verdict"] == "not distinguishable from ϕ = 0"
    assert res["p_wilcoxon"] == pytest.approx(0.25)  # exact: 2 of the 2^3 sign patterns are as extreme
    assert res["p_sign"] == pytest.approx(0.25)
    assert (res["better"], res["worse"], res["tied"]) == (3, 0, 0)


def test_paired_edge_cases_never_nan():
    same = report.paired([0.0, 0.0, 0.0])
    assert same["verdict"] == "identical to ϕ = 0 in every seed" and same["p_t"] is None
    one = report.paired([0.01])
    assert one["verdict"] == "one seed: no claim can be made" and one["p_t"] is None
    clear = report.paired([0.010, 0.011, 0.012, 0.010, 0.011, 0.012])
    assert clear["verdict"] == "better than ϕ = 0" and clear["p_t"] < 1e-5
    worse = report.paired([-0.010, -0.011, -0.012, -0.010, -0.011, -0.012])
    assert worse["verdict"] == "worse than ϕ = 0"
    constant = report.paired([0.01, 0.01])  # sd = 0: t undefined, sign test decides
    assert constant["p_t"] is None and constant["p_sign"] == pytest.approx(0.5)
    assert constant["verdict"] == "not distinguishable from ϕ = 0"
    assert report.paired([])["verdict"] == "no seed was run at both ϕ values"


# ---------------------------------------------------------------- the fabricated tree end to end


def test_fabricated_tree_known_cells(tree, tmp_path):
    out = tmp_path / "rep"
    assert report.main([str(tree), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()

    # mask1: phi chosen on validation = 1e-3; the cell is its test accuracy 92.83 ± 1.90 over 3 seeds
    m, half, _ = report.mean_ci([0.920, 0.935, 0.930])
    expected = f"{100 * m:.2f} ± {100 * half:.2f} (0.001) n=3"
    assert expected == "92.83 ± 1.90 (0.001) n=3"
    table = read_csv(out / "table__digits.csv")
    assert table == [
        {"architecture": "fc_lot", "gradual": "92.00 (0.0001) n=1", "mask0": "90.00 ± 0.00 (0) n=3", "mask1": expected}
    ]
    assert f"| fc_lot | 92.00 (0.0001) n=1 | 90.00 ± 0.00 (0) n=3 | {expected} |" in md

    tests = read_csv(out / "best_vs_zero.csv")
    m1 = by(tests, strategy="mask1")
    assert m1["best_nonzero_phi"] == "0.001" and m1["n_pairs"] == "3"
    assert m1["diff_mean_pp"] == "1.83" and m1["diff_ci95_pp"] == "1.90"
    assert m1["p_paired_t"] == "0.053" and m1["p_wilcoxon"] == "0.250" and m1["better_worse_tied"] == "3/0/0"
    assert m1["verdict"] == "not distinguishable from ϕ = 0"
    # mask0: the inactive 5e-5 is never offered; the best active non-zero phi equals phi = 0 exactly
    m0 = by(tests, strategy="mask0")
    assert m0["best_nonzero_phi"] == "0.0005" and m0["verdict"] == "identical to ϕ = 0 in every seed"
    assert m0["p_paired_t"] == "—"
    assert by(tests, strategy="gradual")["verdict"] == "one seed: no claim can be made"

    summary = read_csv(out / "summary.csv")
    inactive = by(summary, strategy="mask0", phi="5e-05")
    assert inactive["inactive"] == "True" and report.INACTIVE in inactive["note"]
    assert "run-to-run noise" in inactive["note"] and "up to 0.50 pp" in inactive["note"]
    assert by(summary, strategy="mask0", phi="0")["note"] == "chosen on val"
    assert by(summary, strategy="mask0", phi="0.0005")["inactive"] == "False"
    assert by(summary, strategy="mask1", phi="0.001")["note"] == "chosen on val"
    assert report.INACTIVE in md and "run-to-run noise" in md
    no_nan(out)
    assert not list(out.glob(".*.tmp")), "temporary files left behind"


def test_select_test_is_the_papers_way(tree, tmp_path):
    out = tmp_path / "rep"
    assert report.main([str(tree), "--out", str(out), "--select", "test"]) == 0
    md = (out / "report.md").read_text()
    assert "the paper's way" in md
    # on test accuracy mask1 picks -1e-3 (95.00, every seed); mask0 still never picks the inactive 5e-5
    table = read_csv(out / "table__digits.csv")[0]
    assert table["mask1"] == "95.00 ± 0.00 (-0.001) n=3"
    assert table["mask0"] == "90.00 ± 0.00 (0) n=3"


def test_bad_runs_are_listed_not_fatal(tree, tmp_path):
    bad = tree / "bad"
    (bad / "corrupt").mkdir(parents=True)
    (bad / "corrupt" / "results.json").write_text('{"config": {"phi": 0.0, "rou')
    running = write_run(bad, "mask1", 5e-4, 0, 0.9, 0.9, status="running", rounds=10)
    data = json.loads((running / "results.json").read_text())
    data["rounds"] = data["rounds"][:3]
    (running / "results.json").write_text(json.dumps(data))
    failed = write_run(bad, "mask1", 5e-4, 1, 0.9, 0.9, status="failed")
    data = json.loads((failed / "results.json").read_text())
    data["error"] = "RuntimeError: boom"
    (failed / "results.json").write_text(json.dumps(data))
    nofinal = write_run(bad, "mask1", 5e-4, 2, 0.9, 0.9)
    data = json.loads((nofinal / "results.json").read_text())
    data["final"] = {"round": 2}
    data["rounds"][-1].pop("test_acc")
    (nofinal / "results.json").write_text(json.dumps(data))
    malformed = write_run(bad / "m", "mask1", 5e-4, 3, 0.9, 0.9)
    data = json.loads((malformed / "results.json").read_text())
    data["rounds"][1] = "round one"
    (malformed / "results.json").write_text(json.dumps(data))
    (bad / "never_started" / ".hydra").mkdir(parents=True)
    (bad / "never_started" / "train.log").write_text("")
    # a second folder repeats a run of the first (same settings, phi and seed): the first folder's is kept
    write_run(tmp_path / "again", "mask1", 0.0, 0, 0.5, 0.5, flips=0)

    out = tmp_path / "rep"
    assert report.main([str(tree), str(tmp_path / "again"), "--out", str(out)]) == 0
    not_used = {Path(r["path"]).name: r for r in read_csv(out / "not_used.csv")}
    assert not_used["corrupt"]["status"] == "corrupt"
    assert "unreadable" in not_used["corrupt"]["problem"]
    assert "running: 3 of 11 rounds done" in not_used["phi=0.0005,seed=0,strategy=mask1"]["problem"]
    assert "RuntimeError: boom" in not_used["phi=0.0005,seed=1,strategy=mask1"]["problem"]
    assert "corrupt" in not_used["phi=0.0005,seed=2,strategy=mask1"]["problem"]
    assert not_used["never_started"]["status"] == "missing"
    assert "malformed round" in not_used["phi=0.0005,seed=3,strategy=mask1"]["problem"]
    assert "duplicate" in not_used["phi=0.0,seed=0,strategy=mask1"]["problem"]
    md = (out / "report.md").read_text()
    for name in ("corrupt", "never_started", "RuntimeError: boom", "duplicate of"):
        assert name in md
    # none of them changed the tables: mask1 has no 5e-4 column entry and the same cell as before
    assert read_csv(out / "table__digits.csv")[0]["mask1"] == "92.83 ± 1.90 (0.001) n=3"
    no_nan(out)


def test_nothing_usable_still_writes_a_report(tmp_path):
    (tmp_path / "grid" / "x").mkdir(parents=True)
    (tmp_path / "grid" / "x" / "results.json").write_text("not json")
    assert report.main([str(tmp_path / "grid")]) == 1
    md = (tmp_path / "grid" / "report" / "report.md").read_text()
    assert "No complete run was found" in md and "unreadable" in md
    assert report.main([str(tmp_path / "missing")]) == 2


def test_other_varying_settings_get_their_own_rows(tmp_path):
    root = tmp_path / "grid"
    for e in (2, 4):
        for phi in (0.0, 1e-3):
            write_run(root / f"e{e}", "mask1", phi, 0, 0.9, 0.9 + e / 100, epochs=e)
    out = tmp_path / "rep"
    report.main([str(root), "--out", str(out)])
    rows = [r["architecture"] for r in read_csv(out / "table__digits.csv")]
    assert rows == ["fc_lot [epochs=2]", "fc_lot [epochs=4]"]


def test_inactive_phi_stands_in_for_a_missing_phi_zero(tmp_path):
    """An Optuna search has no ϕ = 0 run; an inactive ϕ is that network, so it is the baseline, shown as 0‡."""
    root = tmp_path / "search"
    write_run(root, "mask0", 2e-6, 0, 0.95, 0.94, flips=0)
    write_run(root, "mask0", 0.05, 0, 0.10, 0.10, flips=900)
    out = tmp_path / "rep"
    assert report.main([str(root), "--out", str(out)]) == 0
    assert read_csv(out / "table__digits.csv")[0]["mask0"] == "94.00 (0‡) n=1"
    test = by(read_csv(out / "best_vs_zero.csv"), strategy="mask0")
    assert test["best_nonzero_phi"] == "0.05" and test["diff_mean_pp"] == "-84.00"
    assert test["verdict"] == "one seed: no claim can be made (ϕ = 0 was not run; compared with the inactive ϕ = 2e-06)"
    assert "‡ ϕ = 0 was not run" in (out / "report.md").read_text()


def test_no_validation_split_falls_back_to_test_and_says_so(tmp_path):
    root = tmp_path / "grid"
    for phi, t in ((0.0, 0.90), (1e-3, 0.95)):
        job = write_run(root, "mask1", phi, 0, 0.5, t)
        d = json.loads((job / "results.json").read_text())
        d["final"]["val_acc"] = None
        (job / "results.json").write_text(json.dumps(d))
    out = tmp_path / "rep"
    assert report.main([str(root), "--out", str(out)]) == 0
    assert read_csv(out / "table__digits.csv")[0]["mask1"] == "95.00 (0.001)† n=1"
    assert "† no validation accuracy" in (out / "report.md").read_text()
    no_nan(out)


# ---------------------------------------------------------------- readable figures

PAPER_PHIS = [-1e-3, -5e-4, -1e-4, -5e-5, -1e-5, 0.0, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3]
SMALL_PHIS = [-1e-3, -1e-4, 0.0, 5e-5, 5e-4, 1e-3]


def drawn_figures(root: Path) -> list:
    """The report's figures of the runs under root, as matplotlib figures, drawn."""
    from phicenter.analysis.figures import figures

    runs = report.load([root])
    report.label(runs)
    made = figures(report.select(report.group(runs), "val"), render=lambda fig: fig)
    for _, _, fig in made:
        fig.canvas.draw()
    return made


def phi_labels(ax, axis: str) -> list:
    a = ax.xaxis if axis == "x" else ax.yaxis
    return [t for t in a.get_majorticklabels() if t.get_visible() and t.get_text()]


@pytest.mark.parametrize("phis", [PAPER_PHIS, SMALL_PHIS], ids=["paper", "small"])
def test_phi_axes_readable_and_legends_beside_the_data(tmp_path, phis):
    """Each phi axis (symmetric log) is ticked at phis present, compactly labelled, and no two of its labels
    overlap at the figure's size; every legend lies outside the axes' data area."""
    import matplotlib.pyplot as plt

    for i, phi in enumerate(phis):
        for strategy in ("mask0", "mask1", "random_mask"):
            write_run(tmp_path, strategy, phi, 0, 0.9 + 0.003 * i, 0.9 + 0.002 * i, flips=0 if phi == 0 else 3)
    made = drawn_figures(tmp_path)
    kinds = {name.split("__")[0] for _, name, _ in made}
    assert kinds == {"acc_vs_phi", "flips_vs_phi", "acc_vs_sparsity", "critical_phi"}
    for _, name, fig in made:
        (ax,) = fig.axes
        for axis in ("x", "y"):
            if (ax.get_xscale() if axis == "x" else ax.get_yscale()) != "symlog":
                continue
            labels = phi_labels(ax, axis)
            boxes = [t.get_window_extent() for t in labels]
            assert not [
                (labels[i].get_text(), labels[j].get_text())
                for i in range(len(boxes))
                for j in range(i + 1, len(boxes))
                if boxes[i].overlaps(boxes[j])
            ], name
            texts = [t.get_text().replace("\N{MINUS SIGN}", "-") for t in labels]
            assert "0" in texts and all(re.fullmatch(r"-?\d(\.\d+)?e-\d|0|-?0\.\d+", t) for t in texts), texts
            if name.startswith("acc_vs_phi"):
                assert {float(t) for t in texts} <= set(phis) and {"-1e-3", "1e-3", "0"} <= set(texts)
                assert "5e-5" in texts or phis is PAPER_PHIS  # the small grid's 5e-5 has room for its label
        legend = ax.get_legend()
        assert legend is not None and not legend.get_window_extent().overlaps(ax.get_window_extent()), name
        plt.close(fig)


def test_phi_labels_are_compact():
    from phicenter.analysis.figures import phi_label

    phis = (0.0, -1e-3, 5e-5, 2.5e-4, -0.05, 1e-12)
    assert [phi_label(p) for p in phis] == ["0", "-1e-3", "5e-5", "2.5e-4", "-0.05", "1e-12"]


# ---------------------------------------------------------------- a real tiny multirun


def is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_real_quickstart_grid(tmp_path):
    grid = tmp_path / "grid"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PHICENTER_DATA_DIR": str(tmp_path / "data")}
    cmd = [
        sys.executable,
        "-m",
        "phicenter.train",
        "-m",
        "strategy=mask0,mask1",
        "phi=-1e-3,0,5e-5",
        "seed=0,1",
        "epochs=1",
        "prune.iterations=2",
        "threads=1",
        f"hydra.sweep.dir={grid}",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list(grid.glob("*/results.json"))) == 12

    out = tmp_path / "rep"
    assert report.main([str(grid), "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    expected = {
        "report.md",
        "runs.csv",
        "summary.csv",
        "best_vs_zero.csv",
        "not_used.csv",
        "table__digits.csv",
        "sparsity__digits.csv",
        "acc_vs_phi__digits__fc_lot.png",
        "flips_vs_phi__digits__fc_lot.png",
        "acc_vs_sparsity__digits__fc_lot__mask0.png",
        "acc_vs_sparsity__digits__fc_lot__mask1.png",
        "critical_phi__digits__fc_lot__mask0.png",
        "critical_phi__digits__fc_lot__mask1.png",
    }
    assert names == expected
    import matplotlib.image as mpimg

    for png in out.glob("*.png"):
        assert is_png(png) and png.stat().st_size > 10_000, png.name
        h, w = mpimg.imread(png).shape[:2]
        assert h > 300 and w > 400
        assert f"]({png.name})" in (out / "report.md").read_text()

    runs = read_csv(out / "runs.csv")
    assert len(runs) == 12 and all(r["status"] == "complete" for r in runs)
    assert all(float(r["effective_sparsity"]) >= float(r["sparsity"]) > 30 for r in runs)
    # the paper table's cells with their sparsity, pruned beside effective (mean over the cell's seeds)
    (cells,) = read_csv(out / "sparsity__digits.csv")
    for strategy in ("mask0", "mask1"):
        pruned, effective = (float(x) for x in cells[strategy].split(" / "))
        assert effective >= pruned > 30
    assert "Sparsity of these cells (%): pruned / effective" in (out / "report.md").read_text()
    # mask0's reference is the trained weights: a survivor is never within 1e-3 of zero, so phi is inactive
    summary = read_csv(out / "summary.csv")
    for phi in ("-0.001", "5e-05"):
        assert by(summary, strategy="mask0", phi=phi)["inactive"] == "True"
    assert by(summary, strategy="mask1", phi="-0.001")["inactive"] == "False"
    assert all(r["n"] == "2" for r in summary)
    assert by(read_csv(out / "best_vs_zero.csv"), strategy="mask0")["best_nonzero_phi"] == "—"
    no_nan(out)


def test_new_strategies_are_columns_beside_the_papers_four_and_the_dead_zone_is_shown(tmp_path):
    root = tmp_path / "grid"
    for strategy in ("lrr", "mask0", "zeta", "sign_transfer", "lth", "gradual"):
        write_run(root, strategy, 0.0, 0, 0.9, 0.9, flips=0)
        write_run(root, strategy, 1e-3, 0, 0.9, 0.91, flips=8)
    out = tmp_path / "rep"
    assert report.main([str(root), "--out", str(out)]) == 0
    with open(out / "table__digits.csv", newline="") as f:
        header = next(csv.reader(f))
    # the paper's columns first (its tables' order), then sign_transfer, lrr, lth; an unknown name last
    assert header == ["architecture", "gradual", "mask0", "sign_transfer", "lrr", "lth", "zeta"]
    assert "| Architecture | gradual | mask0 | sign_transfer | lrr | lth | zeta |" in (out / "report.md").read_text()
    # dead zone: round_entry puts 8 / 1600 = 0.5 % of the survivors in it in every round >= 1
    row = by(read_csv(out / "summary.csv"), strategy="sign_transfer", phi="0.001")
    assert (
        row["dead_zone_pct"] == "0.5000"
        and by(read_csv(out / "summary.csv"), strategy="lrr", phi="0")["dead_zone_pct"] == "0.0000"
    )
    assert "dead zone (%)" in (out / "report.md").read_text()
    # the final round's pruned and effective sparsity (1 - 0.8^2 = 36 %, and 2 pp more), per run and per phi
    assert (row["sparsity_pct"], row["effective_sparsity_pct"]) == ("36.00", "38.00")
    run = [r for r in read_csv(out / "runs.csv") if r["strategy"] == "lth" and r["phi"] == "0"][0]
    assert (run["sparsity"], run["effective_sparsity"]) == ("36.0000", "38.0000")
    assert "| sparsity (%) | effective sparsity (%) |" in (out / "report.md").read_text()


def _with_rewind_other(job: Path, value: bool) -> None:
    path = job / "results.json"
    data = json.loads(path.read_text())
    data["config"]["strategy"]["rewind_other"] = value
    path.write_text(json.dumps(data))


def test_runs_that_differ_in_rewind_other_are_never_one_cell(tmp_path):
    """A grid holding both values of strategy.rewind_other: every column says its value, within one strategy
    (mask1 true and false are two cells, never averaged) and across strategies (mask0 false beside mask1 true
    is labelled as such)."""
    root = tmp_path / "grid"
    # mask1 rewound: 80 % and 82 % at phi = 0; kept: 90 % and 92 %. Averaged together they would read 86.00.
    for rewind, base in ((True, 0.80), (False, 0.90)):
        for seed in (0, 1):
            job = write_run(root / f"rw{rewind}", "mask1", 0.0, seed, 0.9, base + 0.02 * seed, flips=0)
            _with_rewind_other(job, rewind)
    for seed in (0, 1):  # mask0: only kept
        _with_rewind_other(write_run(root / "m0", "mask0", 0.0, seed, 0.9, 0.95, flips=0), False)
    out = tmp_path / "rep"
    assert report.main([str(root), "--out", str(out)]) == 0
    half = report.mean_ci([0.80, 0.82])[1]
    assert f"{100 * half:.2f}" == "12.71"  # t(0.975, 1) = 12.706 times sd 0.01414 / sqrt 2
    assert read_csv(out / "table__digits.csv") == [
        {
            "architecture": "fc_lot",
            "mask0 [strategy.rewind_other=False]": "95.00 ± 0.00 (0) n=2",
            "mask1 [strategy.rewind_other=False]": "91.00 ± 12.71 (0) n=2",
            "mask1 [strategy.rewind_other=True]": "81.00 ± 12.71 (0) n=2",
        }
    ]
    runs = read_csv(out / "runs.csv")
    assert {r["strategy"] for r in runs} == {
        "mask0 [strategy.rewind_other=False]",
        "mask1 [strategy.rewind_other=False]",
        "mask1 [strategy.rewind_other=True]",
    }

    # mask0 kept against mask1 rewound only: the two columns still say so
    shutil.rmtree(root / "rwFalse")
    assert report.main([str(root), "--out", str(tmp_path / "rep2")]) == 0
    header = list(read_csv(tmp_path / "rep2" / "table__digits.csv")[0])
    assert header == ["architecture", "mask0 [strategy.rewind_other=False]", "mask1 [strategy.rewind_other=True]"]

    # one value in the whole grid: plain strategy names
    shutil.rmtree(root / "rwTrue")
    for seed in (0, 1):
        _with_rewind_other(write_run(root / "m1", "mask1", 0.0, seed, 0.9, 0.9, flips=0), False)
    assert report.main([str(root), "--out", str(tmp_path / "rep3")]) == 0
    assert list(read_csv(tmp_path / "rep3" / "table__digits.csv")[0]) == ["architecture", "mask0", "mask1"]


def test_the_paper_table_has_effective_sparsity_beside_pruned_and_says_when_pruned_weights_act(tmp_path):
    """round_entry: 2 rounds of 20 % leave 1 - 0.8^2 = 36 % pruned and 36 + 2 = 38 % effective. A standard run
    keeps its pruned weights at their trained values, so it is as dense as the unpruned net: effective 0 %."""
    root = tmp_path / "grid"
    for seed in range(2):
        write_run(root, "mask0", 0.0, seed, 0.9, 0.9, flips=0)
        job = write_run(root, "standard", 0.0, seed, 0.9, 0.92, flips=0)
        res = json.loads((job / "results.json").read_text())
        for entry in res["rounds"]:
            entry["effective_sparsity"] = 0.0
        res["final"] = res["rounds"][-1]
        (job / "results.json").write_text(json.dumps(res))
    out = tmp_path / "rep"
    assert report.main([str(root), "--out", str(out)]) == 0
    assert read_csv(out / "sparsity__digits.csv") == [
        {"architecture": "fc_lot", "mask0": "36.00 / 38.00", "standard": "36.00 / 0.00§"}
    ]
    md = (out / "report.md").read_text()
    assert "| Architecture | mask0 | standard |" in md and "| fc_lot | 36.00 / 38.00 | 36.00 / 0.00§ |" in md
    assert report.ACTING_PRUNED in md and "pruned_fill=trained" in md
    by_strategy = {r["strategy"]: r for r in read_csv(out / "summary.csv")}
    assert (by_strategy["standard"]["sparsity_pct"], by_strategy["standard"]["effective_sparsity_pct"]) == (
        "36.00",
        "0.00",
    )
