"""The report beside the literature (phicenter.analysis.literature): a seeded, hand-made grid whose matching
sparsity is known by construction, the published points and their spread in the table and the figure, and the
paper's matching sparsity as stated or derived from its points."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from tests.cli import compose_config

from phicenter import config
from phicenter.analysis import literature, report

REMAINING = [100.0, 80.0, 64.0, 51.2, 40.96, 32.77]
# Mean test accuracy of each round over three seeds; each seed is the mean - 0.1, + 0, + 0.1 points (the dense
# round: - 0.2, 0, + 0.2), which seed gets which drawn by a seeded permutation: means and spreads are exact.
MEANS = [98.0, 98.1, 97.9, 97.6, 97.5, 95.0]
T975_2 = 4.302652729911275  # scipy.stats.t.ppf(0.975, 2)
DENSE_CI = T975_2 * 0.2 / math.sqrt(3)  # 0.4968... points
THRESHOLD = 98.0 - DENSE_CI  # 97.5032...: round 4 (97.5) is below it, round 3 (97.6) is not
ROUND3_CI = T975_2 * 0.1 / math.sqrt(3)  # 0.2484...

REFERENCE = {
    "source": "Hand & Made (2026), a test paper, Figure 1",
    "metric": "test accuracy at the end of training",
    "spread": "min and max of three trials",
    "curves": [
        {
            "strategy": "lth",
            "label": "winning ticket",
            "matching_remaining": 3.6,
            "below_remaining": 2.9,
            "note": "its text says so",
            "points": [
                {"remaining": 100.0, "accuracy": 98.2, "spread": [98.0, 98.4]},
                {"remaining": 51.2, "accuracy": 98.5},
                {"remaining": 20.97, "accuracy": 97.0, "read_off_plot": True},
            ],
        },
        {"strategy": "random", "label": "random reinitialisation", "below_remaining": 21.1},
        {"strategy": "lth", "label": "late rewinding", "match": ["rewind.epoch=5"]},
    ],
    "missing": "nothing else",
}


def write_grid(root, reference=REFERENCE, seeds=(0, 1, 2)):
    base = config.recorded_config(compose_config("experiment=lth_lenet300_mnist"))
    rng = np.random.default_rng(20)
    offsets = {r: rng.permutation([-0.2, 0.0, 0.2] if r == 0 else [-0.1, 0.0, 0.1]) for r in range(len(MEANS))}
    for s in seeds:
        rounds = [
            {
                "round": r,
                "sparsity": 1 - REMAINING[r] / 100,
                "val_acc": 0.9,
                "test_acc": (MEANS[r] + offsets[r][s]) / 100,
                "flipped_by_phi": 0.0,
            }
            for r in range(len(MEANS))
        ]
        folder = root / f"seed={s},strategy=lth"
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(
            json.dumps(
                {
                    "config": dict(base, seed=s, reference=reference),
                    "rounds": rounds,
                    "final": rounds[-1],
                    "status": "complete",
                }
            )
        )


def test_matching_sparsity_of_a_hand_made_grid(tmp_path):
    write_grid(tmp_path / "grid")
    res = report.report([tmp_path / "grid"], tmp_path / "out")
    assert res["used"] == 3 and res["literature"] == 3
    with open(tmp_path / "out" / "matching.csv") as f:
        rows = {r["curve"]: r for r in csv.DictReader(f)}
    m = rows["winning ticket"]
    assert (m["ours_round"], m["ours_remaining_pct"], m["n"]) == ("3", "51.200", "3")
    assert float(m["threshold_pct"]) == pytest.approx(THRESHOLD, abs=1e-4)
    assert float(m["ours_test_pct"]) == pytest.approx(97.6, abs=1e-4)
    assert float(m["ours_ci95"]) == pytest.approx(ROUND3_CI, abs=1e-4)
    assert (m["paper_remaining_pct"], m["paper_how"], m["paper_below_pct"]) == ("3.6", "stated", "2.9")
    assert "no complete run with strategy=random, phi=0" in rows["random reinitialisation"]["problem"]
    assert "rewind.epoch=5" in rows["late rewinding"]["problem"]

    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Compared with the literature" in md and "### Hand & Made (2026), a test paper, Figure 1" in md
    assert (
        "ours: round 3, 51.20 % of the weights remaining, test accuracy 97.60 ± 0.25 % (3 seeds; dense "
        "98.00 ± 0.50 %, threshold 97.50 %); the paper's: 3.6 % remaining, as its text states it; it falls "
        "below the dense accuracy from 2.9 % remaining"
    ) in md
    assert "| 51.20 | 3 | 97.60 ± 0.25 | 3 | 98.50 |" in md  # the published point beside round 3
    assert "| 100.00 | 0 | 98.00 ± 0.50 | 3 | 98.20 [98.00, 98.40] |" in md
    assert "| 20.97 | — | — |  | 97.00 (read off a plot) |" in md  # a point near no round: a row of its own
    figs = list((tmp_path / "out").glob("literature__*.png"))
    assert len(figs) == 1 and figs[0].name in md

    with open(tmp_path / "out" / "literature.csv") as f:
        table = list(csv.DictReader(f))
    by_rem = {r["remaining_pct"]: r for r in table}
    assert by_rem["51.200"]["paper_test_pct"] == "98.5" and by_rem["51.200"]["round"] == "3"
    assert by_rem["100.000"]["paper_low"] == "98.0" and by_rem["100.000"]["paper_high"] == "98.4"
    assert by_rem["20.970"]["round"] == "—" and by_rem["20.970"]["read_off_plot"] == "True"
    assert by_rem["40.960"]["paper_test_pct"] == "" and float(by_rem["40.960"]["ours_test_pct"]) == pytest.approx(97.5)


def test_one_seed_has_no_interval_and_the_threshold_is_the_dense_mean(tmp_path):
    write_grid(tmp_path / "grid", seeds=(1,))
    report.report([tmp_path / "grid"], tmp_path / "out")
    with open(tmp_path / "out" / "matching.csv") as f:
        m = next(r for r in csv.DictReader(f) if r["curve"] == "winning ticket")
    # seed 1's own accuracies: the dense round and rounds 1.. each at mean + that seed's offset
    rng = np.random.default_rng(20)
    offsets = [rng.permutation([-0.2, 0.0, 0.2] if r == 0 else [-0.1, 0.0, 0.1])[1] for r in range(len(MEANS))]
    acc = [MEANS[r] + offsets[r] for r in range(len(MEANS))]
    want = max(r for r in range(len(acc)) if acc[r] >= acc[0])
    assert m["ours_round"] == str(want) and m["ours_ci95"] == "" and float(m["threshold_pct"]) == pytest.approx(acc[0])


def test_runs_without_a_reference_add_no_section(tmp_path):
    write_grid(tmp_path / "grid", reference=None)
    res = report.report([tmp_path / "grid"], tmp_path / "out")
    assert res["literature"] == 0 and "Compared with the literature" not in (tmp_path / "out" / "report.md").read_text()
    assert not (tmp_path / "out" / "matching.csv").exists()


def test_a_published_matching_sparsity_is_derived_from_the_points_when_the_text_gives_none():
    """Renda et al.'s ResNet-20 LRR points: dense 91.713 %; 16.78 % remaining is the sparsest point at or above it
    (91.787), 13.42 % is below (91.475)."""
    ref = config.resolved(compose_config("experiment=renda_lrr_resnet20_cifar10").reference)
    lrr = next(c for c in ref["curves"] if c["strategy"] == "lrr")
    assert literature.published_matching(lrr) == {
        "remaining": 16.78,
        "accuracy": 91.787,
        "dense": 91.713,
        "how": "derived",
    }
    assert literature.published_matching({"points": [{"remaining": 50.0, "accuracy": 90.0}]}) is None
    assert literature.published_matching({"matching_remaining": 3.6})["how"] == "stated"


def test_matching_takes_the_sparsest_round_even_after_a_dip():
    rounds = [
        literature.Round(0, 100.0, 90.0, 0.5, 3),
        literature.Round(1, 80.0, 89.0, 0.1, 3),
        literature.Round(2, 64.0, 89.6, 0.1, 3),
        literature.Round(3, 51.2, 80.0, 0.1, 3),
    ]
    m = literature.matching(rounds)
    assert (m["round"], m["remaining"], m["threshold"]) == (2, 64.0, 89.5)


def test_match_items_are_key_equals_value():
    assert literature.parse_match(["rewind.epoch=2", "phi=0", "strategy.pruned_fill=zero"]) == {
        "rewind.epoch": 2,
        "phi": 0,
        "strategy.pruned_fill": "zero",
    }
    with pytest.raises(ValueError, match="not key=value"):
        literature.parse_match(["rewind.epoch"])


def test_a_sign_transfer_level_counts_its_transferred_networks_accuracy():
    """sign_transfer's result at a level is the transferred network (as in the report's tables); round 0 has no
    transfer and counts its own."""
    from pathlib import Path

    from phicenter.analysis.runs import Run

    rounds = [
        {"round": 0, "sparsity": 0.0, "test_acc": 0.9, "transfer": None},
        {"round": 1, "sparsity": 0.2, "test_acc": 0.8, "transfer": {"test_acc": 0.7}},
    ]
    table = literature.round_table([Run(Path("r"), "complete", rounds=rounds)])
    assert [(r.round, r.remaining, r.mean) for r in table] == [(0, 100.0, 90.0), (1, 80.0, 70.0)]
