"""A ticket leaves phicenter: export -> load gives the run's logits bit for bit, apply puts a ticket's mask and
signs on another initialisation (sign_transfer's transfer), structured tickets compact to smaller layers and to
ONNX, and bad exports are refused in one line with nothing written.

The hand-built ticket is tests/test_sign_transfer.py's tiny net (fc_lot with one hidden layer of 2 on 3 inputs,
so its layers are fc1 and out), trained and masked:
    W1 = [[0.9, 0.05, -0.3], [0, 0.12, 0.8]]   b1 = [0.5, 0.6]    mask1 = [[1, 1, 1], [0, 1, 1]]
    W2 = [[-0.2, 0], [0.4, 0]]                 b2 = [-0.7, 0.8]   mask2 = [[1, 0], [1, 0]]
phi = 0.15 in both layers: signs(W1, 0.15) on the mask = [[+, -, -], [., -, +]] (0.05 and 0.12 lie in the dead
zone), signs(W2, 0.15) = [[-, .], [+, .]]. Put on the initialisation
    S1 = [[-0.3, 0.6, 0.1], [0.25, -0.05, -0.7]]   s1 = [-0.2, 0.4]
    S2 = [[0.5, -0.1], [-0.8, 0.9]]                s2 = [0.05, -0.6]
keeping its magnitudes it gives [[0.3, -0.6, -0.1], [0, -0.05, 0.7]], [0.2, 0.4], [[-0.5, 0], [0.8, 0]],
[-0.05, 0.6]; with c = 0.5 (fc1) and 0.25 (out), [[0.5, -0.5, -0.5], [0, -0.5, 0.5]] and [[-0.25, 0], [0.25, 0]].
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tests.cli import compose_config, env

from phicenter import data, export, models, ticket
from phicenter.config import settings
from phicenter.engine import build
from phicenter.engine.rundir import checkpoint_path
from phicenter.method import polarity, pruning
from phicenter.method import transfer as method_transfer
from phicenter.method.imp import IMP, IMPConfig
from phicenter.method.strategies import build as strategy

ROOT = Path(__file__).resolve().parents[1]
W1 = torch.tensor([[0.9, 0.05, -0.3], [0.0, 0.12, 0.8]])
B1 = torch.tensor([0.5, 0.6])
W2 = torch.tensor([[-0.2, 0.0], [0.4, 0.0]])
B2 = torch.tensor([-0.7, 0.8])
KEEP1 = torch.tensor([[True, True, True], [False, True, True]])
KEEP2 = torch.tensor([[True, False], [True, False]])
S1 = torch.tensor([[-0.3, 0.6, 0.1], [0.25, -0.05, -0.7]])
SB1 = torch.tensor([-0.2, 0.4])
S2 = torch.tensor([[0.5, -0.1], [-0.8, 0.9]])
SB2 = torch.tensor([0.05, -0.6])


# ---------------------------------------------------------------- runs

SMALL = [
    "dataset=synthetic",
    "dataset.shape=[3,8,8]",
    "dataset.n_train=60",
    "dataset.val_size=10",
    "dataset.n_test=20",
    "dataset.num_classes=4",
    "batch_size=10",
]
RUNS = {  # name: overrides; 1 epoch x 2 rounds each
    "fc_lot-magnitude": ["strategy=standard"],  # the frozen fills travel in the ticket
    "fc_lot-structured": ["prune.method=structured"],
    "conv2-magnitude": ["model=conv2", *SMALL, "strategy=mask1", "phi=0.001"],
    "conv2-structured": ["model=conv2", *SMALL, "prune.method=structured", "strategy=mask1"],
    "resnet20-magnitude": ["model=resnet20", *SMALL, "strategy=lth"],
    "resnet20-structured": ["model=resnet20", *SMALL, "prune.method=structured"],
}


def train(folder: Path, *overrides: str) -> dict:
    from phicenter.engine.loop import run

    cfg = compose_config(
        "round_store.enabled=false",
        "threads=1",
        "epochs=1",
        "prune.iterations=2",
        "checkpoint.keep_all=true",
        *overrides,
    )
    return run(cfg, folder)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ticket_runs")
    return {name: (root / name, train(root / name, *extra)) for name, extra in RUNS.items()}


def split_of(folder: Path):
    """The run's test split as its test pass saw it: normalised, in its evaluation batches."""
    cfg = OmegaConf.create(json.loads((folder / "results.json").read_text())["config"])
    splits = build.load_data(cfg)
    return cfg, splits, list(data.loaders(settings(cfg), splits, int(cfg.batch_size), int(cfg.seed))[2])


def checkpoint_net(folder: Path, r: int):
    """The round's network as the engine holds it: the model built from the config, masks attached, the round
    checkpoint loaded."""
    cfg, splits, _ = split_of(folder)
    net = build.build_model(cfg, splits)
    pruning.attach_masks(net)
    net.load_state_dict(torch.load(checkpoint_path(folder, r), weights_only=True)["model"])
    return net.eval()


def export_ok(capsys, *argv: str) -> str:
    assert export.main([str(a) for a in argv]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


@pytest.mark.parametrize("name", list(RUNS))
def test_load_gives_the_runs_logits_bit_for_bit(runs, name, tmp_path, capsys):
    folder, res = runs[name]
    out = export_ok(capsys, folder, "--out", tmp_path / "t.safetensors")
    size, ckpt = (tmp_path / "t.safetensors").stat().st_size, checkpoint_path(folder, 2).stat().st_size
    assert "t.safetensors: " in out and f"({size:,} bytes)" in out and "round_002.pt: " in out
    assert f"({ckpt:,} bytes)" in out and size < ckpt
    net, ref = ticket.load(tmp_path / "t.safetensors"), checkpoint_net(folder, 2)
    assert not any(k.endswith(("_mask", "_fill")) for k in net.state_dict())  # a plain module
    hits = n = 0
    with torch.no_grad():
        for x, y in split_of(folder)[2]:
            logits = net(x)
            assert torch.equal(logits, ref(x))
            hits, n = hits + int((logits.argmax(1) == y).sum()), n + len(y)
    assert hits / n == res["rounds"][2]["test_acc"]  # what the run recorded for round 2
    t = ticket.read(tmp_path / "t.safetensors")
    m = t.meta
    cfg = res["config"]
    assert (m["model"], m["round"], m["round_key"], m["phi"], m["strategy"], m["prune"], m["config"]) == (
        cfg["model"]["name"],
        2,
        res["rounds"][2]["round_key"],
        cfg["phi"],
        cfg["strategy"],
        cfg["prune"],
        cfg,
    )
    assert (m["input_shape"], m["num_classes"]) == (res["data"]["input_shape"], res["data"]["num_classes"])
    layers = pruning.prunable_layers(ref)
    for lname, layer in layers.items():
        recorded = res["rounds"][2]["layers"][lname]
        assert t.constants[lname] == recorded["c"] and t.phis[lname] == recorded["phi"]
        assert torch.equal(t.masks()[lname], pruning.mask_of(layer).mask)
    fills = [k for k in t.tensors if k.endswith(".weight.fill")]
    frozen = cfg["strategy"]["name"] == "standard" and cfg["prune"]["method"] == "magnitude"
    assert bool(fills) == frozen  # only standard's frozen trained values


def test_an_earlier_round_and_a_pack_jobs_variant(tmp_path, capsys):
    """--round picks any completed round; a `pack=true` job's variant folder is a run folder, its job folder is not."""
    from phicenter.engine.cohort import make_variants
    from phicenter.engine.loop import train as train_cohort

    cfg = compose_config(
        "round_store.enabled=false", "threads=1", "epochs=1", "prune.iterations=1", "checkpoint.keep_all=true"
    )
    job = tmp_path / "job"
    train_cohort(make_variants(cfg, phis=[0.0, 0.001], strategies=[{"name": "mask1", "rewind_other": False}]), job)
    variants = sorted(p.name for p in job.iterdir() if (p / "results.json").is_file())
    assert len(variants) == 2
    assert export.main([str(job)]) == 2
    err = capsys.readouterr().err.strip()
    assert "a job of several variants (pack=true), not one run; export one of its runs:" in err and variants[0] in err
    assert err.count("\n") == 0 and not any(job.rglob("*.safetensors"))
    folder = job / variants[1]
    for r in (0, 1):
        export_ok(capsys, folder, "--round", r, "--out", tmp_path / f"r{r}.safetensors")
        x = split_of(folder)[2][0][0]
        with torch.no_grad():
            assert torch.equal(ticket.load(tmp_path / f"r{r}.safetensors")(x), checkpoint_net(folder, r)(x))
    assert ticket.read(tmp_path / "r0.safetensors").meta["sparsity"] == 0.0


# ---------------------------------------------------------------- the file's tensors by hand


def test_a_weights_tensors_by_hand():
    """mask [[1, 1, 0], [1, 0, 1]] packs to 1 + 2 + 8 + 32 = 43; the survivors 0.5, -0.0, -2.0, 3.0 have sign
    bits 0, 1, 1, 0: 2 + 4 = 6; their magnitudes 0.5, 0, 2, 3. A pruned weight at a non-zero fill (7.0) makes
    `.fill`: the pruned entries' values in C order."""
    import numpy as np

    from phicenter.ticket import encoding

    mask = torch.tensor([[True, True, False], [True, False, True]])
    fill = torch.tensor([[0.0, 0.0, 7.0], [0.0, 0.0, 0.0]])
    w = torch.tensor([[0.5, -0.0, 7.0], [-2.0, 0.0, 3.0]])
    enc = encoding.encode_weight("fc", w, mask, fill)
    assert enc["fc.weight.mask"].tolist() == [43] and enc["fc.weight.sign"].tolist() == [6]
    assert enc["fc.weight.magnitude"].tolist() == [0.5, 0.0, 2.0, 3.0] and enc["fc.weight.fill"].tolist() == [7.0, 0.0]
    assert np.unpackbits(enc["fc.weight.mask"].numpy(), bitorder="little")[:6].tolist() == [1, 1, 0, 1, 0, 1]
    back, m, f = encoding.decode_weight("fc", enc, (2, 3), torch.float32)
    assert torch.equal(back.view(torch.int32), w.view(torch.int32)) and torch.equal(m, mask) and torch.equal(f, fill)
    assert torch.signbit(back[0, 1])  # -0.0 comes back as -0.0
    assert "fc.weight.fill" not in encoding.encode_weight("fc", torch.where(mask, w, 0.0), mask, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="a pruned weight is not at its fill"):
        encoding.encode_weight("fc", w, mask, torch.zeros(2, 3))
    with pytest.raises(ticket.TicketError, match="do not hold the 6 bits"):
        encoding.decode_weight(
            "fc", dict(enc, **{"fc.weight.mask": torch.tensor([43, 0], dtype=torch.uint8)}), (2, 3), torch.float32
        )


# ---------------------------------------------------------------- apply (the transfer)


def hand_ticket(tmp_path: Path) -> ticket.Ticket:
    """The docstring's trained, masked net as a ticket, written and read back."""
    net = models.build("fc_lot", (1, 1, 3), 2, hidden=(2,))
    layers = pruning.attach_masks(net)
    with torch.no_grad():
        for name, w, b, keep in (("fc1", W1, B1, KEEP1), ("out", W2, B2, KEEP2)):
            layers[name].weight.copy_(w)
            layers[name].bias.copy_(b)
            pruning.mask_of(layers[name]).mask.copy_(keep)
    meta = {
        "model": "fc_lot",
        "input_shape": [1, 1, 3],
        "num_classes": 2,
        "model_options": {"hidden": [2]},
        "phis": {"fc1": 0.15, "out": 0.15},
        "config": {"model": {"name": "fc_lot", "init": "torch_default", "hidden": [2]}},
    }
    ticket.save(tmp_path / "hand.safetensors", ticket.encode(net, meta, {"fc1": 0.5, "out": 0.25}))
    return ticket.read(tmp_path / "hand.safetensors")


def hand_init():
    net = models.build("fc_lot", (1, 1, 3), 2, hidden=(2,))
    with torch.no_grad():
        net.fc1.weight.copy_(S1)
        net.fc1.bias.copy_(SB1)
        net.out.weight.copy_(S2)
        net.out.bias.copy_(SB2)
    return net


def close(actual, expected):
    torch.testing.assert_close(actual.detach(), torch.tensor(expected), rtol=1e-6, atol=0)


def test_apply_by_hand(tmp_path):
    t = hand_ticket(tmp_path)
    assert t.phis == {"fc1": 0.15, "out": 0.15} and t.constants == {"fc1": 0.5, "out": 0.25}
    moved = ticket.apply(t, hand_init())  # keeping the init's magnitudes
    close(moved.fc1.weight, [[0.3, -0.6, -0.1], [0.0, -0.05, 0.7]])
    close(moved.fc1.bias, [0.2, 0.4])
    close(moved.out.weight, [[-0.5, 0.0], [0.8, 0.0]])
    close(moved.out.bias, [-0.05, 0.6])
    assert torch.equal(pruning.mask_of(moved.fc1).mask, KEEP1) and torch.equal(pruning.mask_of(moved.out).mask, KEEP2)
    moved = ticket.apply(tmp_path / "hand.safetensors", hand_init(), magnitude="c")  # setting c
    close(moved.fc1.weight, [[0.5, -0.5, -0.5], [0.0, -0.5, 0.5]])
    close(moved.out.weight, [[-0.25, 0.0], [0.25, 0.0]])
    close(moved.out.bias, [-0.05, 0.6])
    with pytest.raises(ValueError, match="magnitude must be"):
        ticket.apply(t, hand_init(), magnitude="trained")


def test_apply_is_sign_transfers_transfer(tmp_path):
    """One implementation: apply gives, bit for bit, method.transfer on the signed mask of the net itself."""
    t = hand_ticket(tmp_path)
    trained = t.masked_network()
    signed = method_transfer.signed_mask(pruning.prunable_layers(trained), {"fc1": 0.15, "out": 0.15})
    a, b = ticket.apply(t, hand_init()), method_transfer.transfer(hand_init(), signed)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka


def test_a_sign_transfer_ticket_applied_is_stage_twos_transferred_net(tmp_path):
    """The ticket of a sign_transfer level, applied to the transfer seed's initialisation, is bit for bit the
    network the engine's stage 2 trains (engine.transfer.transferred_net), survivors in the dead zone included."""
    from tests.test_sign_transfer import sign_transfer_level_one

    from phicenter.engine import transfer as engine_transfer

    cfg, splits, net, imp, member = sign_transfer_level_one()
    meta = {
        "model": "fc_lot",
        "input_shape": list(splits.input_shape),
        "num_classes": splits.num_classes,
        "model_options": {},
        "phis": dict(imp.phis),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    ticket.save(tmp_path / "level1.safetensors", ticket.encode(net, meta, imp.constants))
    t = ticket.read(tmp_path / "level1.safetensors")
    stage_two, diag = engine_transfer.transferred_net(member, 7, splits)
    applied = ticket.apply(t, t.initialisation(seed=7))
    assert diag["dead_zone_count"] > 0
    assert stage_two.state_dict().keys() == applied.state_dict().keys()
    for k, v in stage_two.state_dict().items():
        assert torch.equal(v, applied.state_dict()[k]), k


def test_apply_onto_a_new_seed(runs, tmp_path):
    """A run's ticket on seed 1's initialisation (theta0 of the seed-1 run): the new init's magnitudes, the
    ticket's signs (signs(trained, phi)) and mask."""
    folder, res = runs["conv2-magnitude"]
    assert export.main([str(folder), "--out", str(tmp_path / "t.safetensors")]) == 0
    t = ticket.read(tmp_path / "t.safetensors")
    init = t.initialisation(seed=1)
    cfg, splits, _ = split_of(folder)
    theta0_seed1 = build.build_model(cfg, splits, seed=1)
    for a, b in zip(init.state_dict().values(), theta0_seed1.state_dict().values()):
        assert torch.equal(a, b)
    before = {k: v.clone() for k, v in init.state_dict().items()}
    moved = ticket.apply(t, init)
    trained = checkpoint_net(folder, 2)
    tl = pruning.prunable_layers(trained)
    for name, layer in pruning.prunable_layers(moved).items():
        keep = pruning.mask_of(tl[name]).mask
        sign = polarity.signs(tl[name].weight, t.phis[name])
        assert torch.equal(pruning.mask_of(layer).mask, keep)
        assert torch.equal(layer.weight[keep], before[f"{name}.weight"].abs()[keep] * sign[keep])
        assert not layer.weight[~keep].any()
        assert torch.equal(layer.bias, before[f"{name}.bias"].abs() * polarity.signs(tl[name].bias, 0.0))
    assert t.phis["conv1"] == 0.001 and res["config"]["strategy"]["name"] == "mask1"


# ---------------------------------------------------------------- compact and ONNX


def widths(width: int, rounds: int) -> int:
    for _ in range(rounds):
        width -= pruning.n_to_prune(width, 0.8)
    return width


@pytest.mark.parametrize("name", ["fc_lot-structured", "conv2-structured", "resnet20-structured"])
def test_compact_and_onnx_match_the_masked_network(runs, name, tmp_path, capsys):
    import onnxruntime as ort

    folder, _ = runs[name]
    out = export_ok(capsys, folder, "--compact", "--onnx", "--out", tmp_path / "c.safetensors")
    assert "c.onnx: " in out and "onnxruntime: the ONNX model's logits are within" in out
    compact, masked = ticket.load(tmp_path / "c.safetensors"), checkpoint_net(folder, 2)
    kept = ticket.kept_units(ticket.read(tmp_path / "c.safetensors"))
    shapes = {k: tuple(v.shape) for k, v in compact.state_dict().items()}
    if name.startswith("fc_lot"):  # 300 -> 240 -> 192 and 100 -> 80 -> 64 units; digits' 64 inputs
        assert (shapes["fc1.weight"], shapes["fc2.weight"], shapes["out.weight"]) == ((192, 64), (64, 192), (10, 64))
    elif name.startswith("conv2"):  # 64 -> 41 filters; conv2's 41 filters x 4 x 4 flattened into fc1
        assert (shapes["conv1.weight"], shapes["conv2.weight"]) == ((41, 3, 3, 3), (41, 41, 3, 3))
        assert (shapes["fc1.weight"], shapes["fc2.weight"], shapes["out.weight"]) == ((164, 656), (164, 164), (4, 164))
    else:  # each block's conv1 (and bn1, conv2's inputs); the residual stream whole
        for i, w in enumerate((16,) * 3 + (32,) * 3 + (64,) * 3):
            k = widths(w, 2)
            assert shapes[f"blocks.{i}.conv1.weight"][0] == shapes[f"blocks.{i}.bn1.weight"][0] == k
            assert shapes[f"blocks.{i}.conv2.weight"] == (w, k, 3, 3) and int(kept[f"blocks.{i}.conv1"].sum()) == k
    survivors = sum(int(pruning.mask_of(lay).mask.sum()) for lay in pruning.prunable_layers(masked).values())
    assert sum(lay.weight.numel() for lay in pruning.prunable_layers(compact).values()) == survivors
    session = ort.InferenceSession(str(tmp_path / "c.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        for x, _ in split_of(folder)[2]:
            want = masked(x)
            assert want.abs().max() < 100  # logits of a sane scale: 1e-5 is a real bound
            got = compact(x)
            assert (got - want).abs().max() <= 1e-5
            for batch in (x[:1], x):
                onnx_out = torch.from_numpy(session.run(["logits"], {"images": batch.numpy()})[0])
                assert (onnx_out - compact(batch)).abs().max() <= 1e-5


def test_vgg16_compacts_within_float_tolerance():
    """vgg16's 13 convs lose filters (their BatchNorm channels and the next conv's inputs go with them); the
    head reads the last conv's channels through the global pool."""
    net = models.build("vgg16", (3, 32, 32), 10)
    imp = IMP(net, strategy("mask0"), IMPConfig(method="structured"))
    imp.advance(1)
    masks = {n: pruning.mask_of(lay).mask for n, lay in imp.layers.items()}
    net.eval()
    small = ticket.compact(net, masks)
    shapes = {k: tuple(v.shape) for k, v in small.state_dict().items()}
    assert shapes["conv1.weight"] == (51, 3, 3, 3) and shapes["conv2.weight"] == (51, 51, 3, 3)
    assert shapes["bn13.running_var"] == (410,) and shapes["out.weight"] == (10, 410)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (small(x) - net(x)).abs().max() <= 1e-5


def untrained_resnet():
    net = models.build("resnet20", (3, 8, 8), 4)
    imp = IMP(net, strategy("mask0"), IMPConfig(method="structured"))
    imp.advance(1)
    return net.eval(), {n: pruning.mask_of(lay).mask.clone() for n, lay in imp.layers.items()}


def prune_by_hand(net, masks, layer: str, index) -> None:
    masks[layer][index] = False
    with torch.no_grad():
        net.get_submodule(layer).weight[index] = 0.0


def test_a_residual_block_that_cannot_be_compacted_is_refused():
    net, masks = untrained_resnet()
    prune_by_hand(net, masks, "blocks.4.conv2", 3)  # a unit whose output enters the residual addition
    with pytest.raises(
        ticket.CompactError,
        match=r"^residual block blocks\.4 cannot be compacted: 1 of the 32 "
        r"units of blocks\.4\.conv2 are pruned, but its output enters a "
        r"residual addition",
    ):
        ticket.compact(net, masks)
    net, masks = untrained_resnet()
    prune_by_hand(net, masks, "blocks.2.conv1", slice(None))  # every unit, and every weight that reads them
    prune_by_hand(net, masks, "blocks.2.conv2", slice(None))
    with pytest.raises(ticket.CompactError, match=r"^blocks\.2 cannot be compacted: every unit of blocks\.2\.conv1"):
        ticket.compact(net, masks)


def test_the_command_line_refuses_that_block(runs, tmp_path, capsys):
    folder = tmp_path / "run"
    shutil.copytree(runs["resnet20-structured"][0], folder)
    state = torch.load(checkpoint_path(folder, 2), weights_only=True)
    state["model"]["blocks.7.conv2.weight_mask"][5] = False
    state["model"]["blocks.7.conv2.weight"][5] = 0.0
    torch.save(state, checkpoint_path(folder, 2))
    assert export.main([str(folder), "--compact"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "residual block blocks.7 cannot be compacted" in err
    assert not (folder / "tickets").exists()


# ---------------------------------------------------------------- refusals


def refused(capsys, argv, message: str, folder: Path | None = None) -> None:
    assert export.main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err, err
    if folder is not None:
        assert not (folder / "tickets").exists() and not any(folder.rglob("*.safetensors"))


def test_bad_exports_are_refused_with_nothing_written(runs, tmp_path, capsys, monkeypatch):
    good = runs["fc_lot-magnitude"][0]

    def copy(name):
        shutil.copytree(good, tmp_path / name, ignore=shutil.ignore_patterns("tickets", "*.safetensors"))
        return tmp_path / name

    refused(capsys, [tmp_path / "nope"], "no such folder")
    refused(capsys, [good / "results.json"], "give a run folder")
    (tmp_path / "empty").mkdir()
    refused(capsys, [tmp_path / "empty"], "not a phicenter run folder (no results.json)", tmp_path / "empty")
    refused(capsys, [good, "--round", "7"], "round 7 is not complete (completed: 0..2; status complete)")
    run = copy("dropped")
    checkpoint_path(run, 0).unlink()
    refused(capsys, [run, "--round", "0"], "the checkpoint of round 0 was not kept (kept: 1, 2;", run)
    run = copy("corrupt")
    checkpoint_path(run, 2).write_bytes(checkpoint_path(run, 2).read_bytes()[:5000])
    refused(capsys, [run], "round_002.pt: corrupt, or not a phicenter checkpoint", run)
    run = copy("over")
    record = json.loads((run / "results.json").read_text())
    record["rounds"][2]["test_acc"] = 0.5
    (run / "results.json").write_text(json.dumps(record))
    refused(capsys, [run], "its round 2 is not the round results.json records", run)
    run = copy("running")
    record = json.loads((run / "results.json").read_text())
    record.update(rounds=record["rounds"][:1], status="running")
    (run / "results.json").write_text(json.dumps(record))
    refused(capsys, [run, "--round", "1"], "round 1 is not complete (completed: 0; status running)", run)
    refused(capsys, [good, "--compact"], "--compact needs a structured ticket (prune.method=structured)")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    refused(
        capsys,
        [runs["conv2-structured"][0], "--compact", "--onnx"],
        "--onnx needs onnxruntime, which is not installed: pip install 'phicenter[onnx]'",
        runs["conv2-structured"][0],
    )
    refused(capsys, [good, "--round", "x"], "argument --round: invalid int value: 'x'")
    refused(capsys, [good, "--onnx", "--out", tmp_path / "t.onnx"], "--out names the ticket file")


def test_a_file_that_is_not_a_ticket_is_refused_in_one_line(tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "text.safetensors").write_text("hello")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"), metadata={"format": "pt"})
    save_file(
        {"w": torch.zeros(2)},
        str(tmp_path / "old.safetensors"),
        metadata={"format": '"phicenter-ticket"', "version": "99"},
    )
    for name, message in (
        ("nope", "no such file"),
        ("text", "not a safetensors file"),
        ("other", "its metadata is not phicenter's"),
        ("old", "ticket version 99"),
    ):
        with pytest.raises(ticket.TicketError, match=message):
            ticket.load(tmp_path / f"{name}.safetensors")


def test_a_failed_write_leaves_nothing(runs, tmp_path, capsys):
    """The ticket is written, then the ONNX file fails (a full disk): the ticket goes again, exit code 1."""
    from phicenter import io

    io.inject("1:ENOSPC:.onnx")
    try:
        assert (
            export.main(
                [str(runs["conv2-structured"][0]), "--compact", "--onnx", "--out", str(tmp_path / "c.safetensors")]
            )
            == 1
        )
    finally:
        io.inject(None)
    assert "No space left on device" in capsys.readouterr().err and not any(tmp_path.iterdir())


def test_the_command_exits_2_and_ticket_imports_neither_lightning_nor_hydra(runs, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "phicenter.export", str(tmp_path / "nope")],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "no such folder" in proc.stderr
    assert export.main([str(runs["fc_lot-structured"][0]), "--out", str(tmp_path / "t.safetensors")]) == 0
    code = (
        "import sys; from phicenter import ticket; net = ticket.load(sys.argv[1]); "
        "t = ticket.read(sys.argv[1]); ticket.apply(t, t.initialisation(seed=3)); "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('pytorch_lightning', 'lightning', 'lightning_fabric', 'hydra', 'omegaconf')); print(bad)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "t.safetensors")],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_the_bench_rows(monkeypatch):
    """python -m phicenter.bench.tickets on 8x8 inputs, one call per timing: the schedule's unit counts, the files
    in the order of their sizes, the compact network within float tolerance."""
    from phicenter.bench import tickets as bench

    monkeypatch.setattr(bench, "SHAPE", (3, 8, 8))
    monkeypatch.setattr(bench, "REPEATS", {1: 1, 256: 1})
    rows = bench.bench_model("resnet20", [1, 2], log=lambda _: None)
    assert [r["round"] for r in rows] == [1, 2]
    for r, row in zip((1, 2), rows):
        for i, w in enumerate((16,) * 3 + (32,) * 3 + (64,) * 3):
            assert row["units_kept"][f"blocks.{i}.conv1"] == widths(w, r)
            assert row["units_kept"][f"blocks.{i}.conv2"] == w
        b = row["bytes"]
        assert b["onnx"] < b["compact"] < b["ticket"] < b["dense"] < b["checkpoint"]
        assert row["compact_max_diff"] <= 1e-5 * max(1.0, row["largest_logit"])
        assert row["sparsity"] == pytest.approx(1 - row["weights"] / row["dense_weights"])
        assert set(row["latency_s"]) == {1, 256} and all(
            set(v) == {"dense", "masked", "compact"} and min(v.values()) > 0 for v in row["latency_s"].values()
        )
    assert rows[1]["weights"] < rows[0]["weights"]
