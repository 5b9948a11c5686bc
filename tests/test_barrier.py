"""The error barrier on the linear path between two networks (phicenter.analysis.barrier): values worked out by
hand on a tiny ReLU net and a BatchNorm layer, a net with itself, the ends against the runs' own records, and bad
input refused in one line."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from tests.cli import ROOT, compose_config, env
from torch import nn

from phicenter.analysis import barrier


def tiny_relu_net():
    return nn.Sequential(nn.Linear(1, 2), nn.ReLU(), nn.Linear(2, 2))


def hand_states():
    """Two nets computing the same function with their hidden units swapped. Along the path the hidden weights
    are s = 1 - 2 alpha times A's, the output mixes the units, and the output bias favours class 1 by 0.5, so a
    positive x is classified 0 iff s^2 x > 0.5."""
    a = {
        "0.weight": torch.tensor([[1.0], [-1.0]]),
        "0.bias": torch.zeros(2),
        "2.weight": torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
        "2.bias": torch.tensor([0.0, 0.5]),
    }
    b = dict(a, **{"0.weight": torch.tensor([[-1.0], [1.0]]), "2.weight": torch.tensor([[0.0, 1.0], [1.0, 0.0]])})
    return a, b


DATA = [(torch.tensor([[1.0], [2.0], [-1.0], [-2.0]]), torch.tensor([0, 0, 1, 1]))]


def test_hand_built_path_has_the_hand_value():
    a, b = hand_states()
    path = barrier.linear_path(tiny_relu_net(), a, b, barrier.grid(11), DATA)
    # s^2 at alpha = 0, 0.1, ..., 1: 1, .64, .36, .16, .04, 0, .04, .16, .36, .64, 1. x = 1 is wrong where
    # s^2 <= 0.5 (alpha 0.2 to 0.8), x = 2 where s^2 <= 0.25 (alpha 0.3 to 0.7); negative x are always right.
    assert path.errors == [0, 0, 0.25, 0.5, 0.5, 0.5, 0.5, 0.5, 0.25, 0, 0]
    assert path.barrier == 0.5 and path.ends == 0 and path.worst_alpha == 0.3 and path.bn_batches == 0
    assert barrier.linear_path(tiny_relu_net(), a, b, barrier.grid(3), DATA).errors == [0, 0.5, 0]


def test_ends_count_in_the_mean():
    """Barrier = max error - mean of the ends' errors: A right everywhere, B = A's output layer swapped."""
    a, _ = hand_states()
    b = dict(a, **{"2.weight": torch.tensor([[0.0, 1.0], [1.0, 0.0]]), "2.bias": torch.tensor([0.5, 0.0])})
    path = barrier.linear_path(tiny_relu_net(), a, b, [0.0, 1.0], DATA)
    assert path.errors == [0.0, 1.0] and path.barrier == pytest.approx(0.5)


def test_a_net_with_itself_has_no_barrier():
    a, _ = hand_states()
    path = barrier.linear_path(tiny_relu_net(), a, a, barrier.grid(30), DATA)
    assert path.barrier == 0 and set(path.errors) == {0}


def test_batchnorm_statistics_are_recomputed_exactly_at_each_alpha():
    """w = 1 (A), 3 (B): at alpha 0.5, w = 2 and the BatchNorm sees 2x. Batches [0, 1] and [2, 3] give batch
    means 1 and 5 and unbiased variances 2 and 2: running mean 3 and variance 2 over both, 1 and 2 over the
    first one only."""
    net = nn.Sequential(nn.Linear(1, 1, bias=False), nn.BatchNorm1d(1))
    base = {k: v.clone() for k, v in net.state_dict().items()}
    a, b = dict(base, **{"0.weight": torch.tensor([[1.0]])}), dict(base, **{"0.weight": torch.tensor([[3.0]])})
    train = [(torch.tensor([[0.0], [1.0]]), torch.tensor([0, 0])), (torch.tensor([[2.0], [3.0]]), torch.tensor([0, 0]))]
    path = barrier.linear_path(net, a, b, [0.5], [train[0]], train)
    bn = net[1]
    assert path.bn_batches == 2 and bn.running_mean.item() == 3.0 and bn.running_var.item() == 2.0
    assert bn.momentum == 0.1 and not bn.training  # restored, and measured in eval mode
    path = barrier.linear_path(net, a, b, [0.5], [train[0]], train, bn_count=1)
    assert path.bn_batches == 1 and bn.running_mean.item() == 1.0 and bn.running_var.item() == 2.0
    with pytest.raises(ValueError, match="BatchNorm"):
        barrier.linear_path(net, a, b, [0.5], [train[0]])


def test_effective_state_takes_the_fill_where_pruned():
    from phicenter.method import pruning

    net = nn.Sequential(nn.Linear(2, 2))
    pruning.attach_masks(net)
    layer = net[0]
    pruning.raw_weight(layer).data.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    pruning.mask_of(layer).mask.copy_(torch.tensor([[True, False], [False, True]]))
    pruning.mask_of(layer).fill.copy_(torch.tensor([[0.0, 7.0], [0.0, 0.0]]))
    pruning.reapply_masks(net)  # as after every training step
    state = barrier.effective_state(net.state_dict())
    assert set(state) == {"0.weight", "0.bias"}
    assert torch.equal(state["0.weight"], torch.tensor([[1.0, 7.0], [0.0, 4.0]]))


# ---------------------------------------------------------------- on phicenter runs


def train_tiny(folder, *overrides):
    from phicenter.engine.loop import run

    cfg = compose_config(
        "dataset=synthetic",
        "dataset.n_train=60",
        "dataset.val_size=10",
        "dataset.n_test=20",
        "dataset.num_classes=4",
        "batch_size=10",
        "epochs=1",
        "prune.iterations=1",
        "threads=1",
        "checkpoint.keep_all=true",
        *overrides,
    )
    return run(cfg, folder)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("barrier_runs")
    out = {}
    for name, extra in {
        "fc": ["dataset.shape=[1,4,4]", "+model.hidden=[8]"],
        "fc_seed1": ["dataset.shape=[1,4,4]", "+model.hidden=[8]", "seed=1"],
        "fc_wide": ["dataset.shape=[1,4,4]", "+model.hidden=[12]"],
        "resnet": ["dataset.shape=[3,8,8]", "model=resnet20"],
    }.items():
        out[name] = (root / name, train_tiny(root / name, *extra))
    return out


def test_ends_are_the_runs_own_test_errors(runs):
    """No BatchNorm: the ends are exactly the two rounds' nets, pruned weights at their fill."""
    folder, res = runs["fc"]
    a = barrier.load_side(str(folder / "checkpoints" / "round_001.pt"), None)
    b = barrier.load_side(str(folder), 0)
    barrier.check_pair(a, b, different_masks=True)  # round 1 is pruned, round 0 dense
    out = barrier.measure(a, b, n_alphas=5)
    assert out["quantity"] == barrier.DIFFERENT_MASKS and out["mask_entries_differing"] > 0
    assert out["errors"][0] == pytest.approx(1 - res["rounds"][1]["test_acc"], abs=1e-12)
    assert out["errors"][-1] == pytest.approx(1 - res["rounds"][0]["test_acc"], abs=1e-12)
    assert out["bn_batches"] == 0 and len(out["alphas"]) == 5
    assert out["barrier"] == pytest.approx(max(out["errors"]) - (out["errors"][0] + out["errors"][-1]) / 2)


@pytest.mark.parametrize("name", ["fc", "resnet"])
def test_command_line_barrier_of_a_run_with_itself_is_zero(runs, tmp_path, name):
    folder, _ = runs[name]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "phicenter.analysis.barrier",
            str(folder),
            str(folder),
            "--round",
            "1",
            "--alphas",
            "4",
            "--out",
            str(tmp_path / "b.json"),
        ],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "barrier: 0.00 percentage points" in proc.stdout
    import json

    res = json.loads((tmp_path / "b.json").read_text())
    assert res["barrier"] == 0 and len(set(res["errors"])) == 1 and res["round_a"] == res["round_b"] == 1
    # resnet20 has BatchNorm: 50 training examples in batches of 10, recomputed at every alpha
    assert res["bn_batches"] == (5 if name == "resnet" else 0)


def test_two_seeds_of_one_architecture_are_accepted(runs):
    a, b = barrier.load_side(str(runs["fc"][0]), 1), barrier.load_side(str(runs["fc_seed1"][0]), 1)
    with pytest.raises(barrier.BadInput, match="different masks"):  # each seed pruned its own mask
        barrier.check_pair(a, b)
    barrier.check_pair(a, b, different_masks=True)
    out = barrier.measure(a, b, n_alphas=3)
    assert -1 <= out["barrier"] <= 1 and out["errors"][1] >= 0


def one_line_refusal(capsys, argv, message):
    assert barrier.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err, err


def test_bad_input_is_one_line_and_exit_2(runs, tmp_path, capsys):
    fc, wide, resnet = (str(runs[k][0]) for k in ("fc", "fc_wide", "resnet"))
    one_line_refusal(capsys, [fc, wide], "different architectures (model.hidden: [8] vs [12])")
    one_line_refusal(capsys, [fc, resnet], "different architectures (model.name: 'fc_lot' vs 'resnet20')")
    one_line_refusal(capsys, [fc, fc, "--round", "7"], "no checkpoint of round 7 (kept: 0, 1;")
    one_line_refusal(capsys, [fc, str(tmp_path / "nope")], "no such file or folder")
    one_line_refusal(capsys, [fc, str(tmp_path)], "not a phicenter run folder")
    fake = tmp_path / "run" / "checkpoints" / "round_001.pt"
    fake.parent.mkdir(parents=True)
    fake.write_text("not a checkpoint")
    (tmp_path / "run" / "results.json").write_text((runs["fc"][0] / "results.json").read_text())
    one_line_refusal(capsys, [fc + "/checkpoints/round_001.pt", str(fake)], "not a phicenter round checkpoint")
    one_line_refusal(capsys, [fc, fc, "--alphas", "1"], "--alphas must be at least 2")
    one_line_refusal(capsys, [fc, fc, "--bogus"], "unrecognized arguments: --bogus")


def test_different_data_is_refused(runs):
    a = barrier.load_side(str(runs["fc"][0]), 1)
    other = dict(a.config, dataset=dict(a.config["dataset"], n_test=30))
    with pytest.raises(barrier.BadInput, match=r"different data \(dataset.n_test: 20 vs 30\)"):
        barrier.check_pair(a, barrier.Side(a.checkpoint, 1, other, a.state))
    # an execution setting of the data (how it is read) is no difference
    same = dict(a.config, dataset=dict(a.config["dataset"], num_workers=2))
    barrier.check_pair(a, barrier.Side(a.checkpoint, 1, same, a.state, a.masks))


def test_mask_difference_counts_entries_and_takes_a_missing_mask_as_unpruned():
    state = {"0.weight": torch.zeros(2, 2)}
    side = lambda masks: barrier.Side(ROOT, 1, {}, state, masks)
    full, half = torch.ones(2, 2, dtype=torch.bool), torch.tensor([[True, False], [False, True]])
    assert barrier.mask_difference(side({"0.weight": half}), side({"0.weight": half})) == (0, 4, None)
    assert barrier.mask_difference(side({"0.weight": half}), side({"0.weight": full})) == (2, 4, "0.weight")
    assert barrier.mask_difference(side({"0.weight": half}), side({})) == (2, 4, "0.weight")


def test_different_masks_are_refused_in_one_line_unless_asked_for(runs, tmp_path, capsys):
    """Two rounds of one run have different masks: linear mode connectivity compares two trainings of one
    subnetwork, so the pair is refused; --different-masks measures it and names it another quantity."""
    fc = runs["fc"][0]
    r0, r1 = str(fc / "checkpoints" / "round_000.pt"), str(fc / "checkpoints" / "round_001.pt")
    one_line_refusal(capsys, [r1, r0], "A and B have different masks (")
    assert barrier.main([r1, r0, "--alphas", "3", "--different-masks", "--out", str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "interpolation barrier between different subnetworks (" in out and "\nbarrier:" not in out
    import json

    res = json.loads((tmp_path / "b.json").read_text())
    assert res["quantity"] == "interpolation barrier between different subnetworks"
    assert 0 < res["mask_entries_differing"] <= res["mask_entries"]
    # one mask (a round with itself): the flag changes nothing, the quantity is linear mode connectivity's
    assert barrier.main([r1, r1, "--alphas", "2", "--different-masks"]) == 0
    assert "\nbarrier: 0.00 percentage points" in "\n" + capsys.readouterr().out
