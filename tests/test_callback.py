"""PhiCenterPruning in someone else's Trainer, and the method on any nn.Module (phicenter.Pruner): values by hand,
a LightningModule written outside phicenter, resume from a Lightning checkpoint, the refusals, and the callback
over phicenter's own module reproducing the round loop's rounds to the bit."""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import math
import textwrap

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from tests.cli import ROOT, bare_trainer
from torch import nn

from phicenter import PhiCenterPruning, Pruner, data
from phicenter.config import settings
from phicenter.engine import build, loop
from phicenter.engine.module import CohortModule
from phicenter.method import pruning

# ------------------------------------------------------------------------------------------ plain torch, by hand


def test_one_round_boundary_by_hand():
    """4 weights, base 0.5: the two smallest trained |w| go; mask0 re-signs the survivors relative to phi = 0.45
    (0.4 < phi: -1; -0.5: -1) at c = 1; the phi flip of 0.4 is counted."""
    net = nn.Sequential(nn.Linear(4, 1, bias=False))
    pruner = Pruner(net, "mask0", phi=0.45, iterations=1, base=0.5, magnitude=1.0)
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[0.4, -0.0002, 0.0003, -0.5]]))
    d = pruner.next_round()
    assert net[0].weight.tolist() == [[-1.0, 0.0, 0.0, -1.0]]
    assert pruner.masks["0.weight"].tolist() == [[True, False, False, True]]
    assert pruner.signs()["0.weight"].tolist() == [[-1.0, 0.0, 0.0, -1.0]]
    assert d["flipped_by_phi"] == 0.5 and d["dead_zone"] == 0.5 and d["sparsity"] == 0.5
    with pytest.raises(ValueError, match="all 1 iterations are done"):
        pruner.next_round()


def test_hold_keeps_dead_weights_dead_under_weight_decay():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    pruner = Pruner(net, "lrr", iterations=1)
    pruner.next_round()
    dead = {k: ~m for k, m in pruner.masks.items()}
    opt = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(8, 6)).square().sum().backward()
        pruner.hold(opt)
    params = dict(net.named_parameters())
    assert all(bool((params[k][d] == 0).all()) for k, d in dead.items())


def test_a_parameter_filter_prunes_only_what_it_names():
    net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    pruner = Pruner(net, "mask1", iterations=1, parameters=["0.weight"])
    pruner.next_round()
    assert list(pruner.masks) == ["0.weight"] and not pruning.has_mask(net[2])
    assert int((net[2].weight == 0).sum()) == 0
    with pytest.raises(ValueError, match="'conv' names no Conv or Linear weight"):
        Pruner(nn.Sequential(nn.Linear(2, 2)), parameters=["conv"])


@pytest.mark.parametrize("model", ["resnet18", "timm"])
def test_any_model_two_rounds(model):
    """A torchvision resnet18 (structured pruning too: its graph reads) and a timm vision transformer
    (magnitude pruning; structured refused in one line: its graph does not)."""
    torch.manual_seed(0)
    if model == "resnet18":
        import torchvision

        make = lambda: torchvision.models.resnet18(num_classes=10)
        x = torch.randn(2, 3, 32, 32)
    else:
        timm = pytest.importorskip("timm")
        make = lambda: timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=8)
        x = torch.randn(2, 3, 32, 32)
    net = make()
    pruner = Pruner(net, "mask0", phi=5e-4, iterations=2)
    for _ in range(2):
        d = pruner.next_round()
        net(x).sum().backward()
    assert d["sparsity"] == pytest.approx(0.36, abs=1e-3)
    if model == "resnet18":
        s = Pruner(make(), "mask0", iterations=1, method="structured").next_round()
        assert 0.1 < s["sparsity"] < 0.36
    else:
        assert d["effective_sparsity"] is None
        with pytest.raises(ValueError, match="structured needs the network's graph") as e:
            Pruner(make(), method="structured")
        assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------ a LightningModule from outside

OUTSIDE = """
    import pytorch_lightning as pl
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset


    class Digits(pl.LightningDataModule):
        def setup(self, stage=None):
            x, y = load_digits(return_X_y=True)
            x, y = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)
            self.train, self.val = TensorDataset(x[:1400], y[:1400]), TensorDataset(x[1400:], y[1400:])

        def train_dataloader(self):
            return DataLoader(self.train, batch_size=64)

        def val_dataloader(self):
            return DataLoader(self.val, batch_size=256)


    class MLP(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, _):
            x, y = batch
            return F.cross_entropy(self(x), y)

        def validation_step(self, batch, _):
            x, y = batch
            self.log("val_acc", (self(x).argmax(-1) == y).float().mean())

        def configure_optimizers(self):
            opt = torch.optim.Adam(self.parameters(), lr=1e-2)
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, 0.5)}
"""


@pytest.fixture
def outside(tmp_path):
    path = tmp_path / "digits_module.py"
    path.write_text(textwrap.dedent(OUTSIDE))
    spec = importlib.util.spec_from_file_location("digits_module", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _linear_zero_share(module) -> float:
    ws = [m.weight for m in module.modules() if isinstance(m, nn.Linear)]
    return sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws)


def test_an_outside_module_trains_three_rounds(outside, tmp_path):
    pl.seed_everything(0)
    prune = PhiCenterPruning(strategy="mask0", phi=5e-4, iterations=2, epochs_per_round=1)
    trainer = bare_trainer(prune.max_epochs, callbacks=[prune], logger=CSVLogger(tmp_path / "logs"))
    module = outside.MLP()
    trainer.fit(module, datamodule=outside.Digits())
    assert _linear_zero_share(module) == pytest.approx(0.36, abs=2e-4)
    with open(tmp_path / "logs" / "lightning_logs" / "version_0" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("round/index")]
    assert [float(r["round/index"]) for r in rows] == [0.0, 1.0, 2.0]
    assert [round(float(r["round/sparsity"]), 3) for r in rows] == [0.0, 0.2, 0.36]
    assert all(0.5 < float(r["round/val_acc"]) <= 1 for r in rows)


def test_a_fit_resumed_from_a_lightning_checkpoint_goes_on_to_the_same_bits(outside, tmp_path):
    """Stopped after round 1 (epoch 1), resumed by ckpt_path into a module of another init: the same weights,
    masks and round records as the fit that ran through."""

    def fit(seed, ckpt_path=None):
        torch.manual_seed(seed)
        prune = PhiCenterPruning(strategy="mask1", phi=1e-3, iterations=2, epochs_per_round=1, seed=0)
        saver = ModelCheckpoint(tmp_path / f"ckpt{seed}", save_top_k=-1, every_n_epochs=1, filename="{epoch}")
        trainer = bare_trainer(prune.max_epochs, callbacks=[prune, saver], enable_checkpointing=True)
        module = outside.MLP()
        trainer.fit(module, datamodule=outside.Digits(), ckpt_path=ckpt_path, weights_only=True)
        return module, prune

    a, pa = fit(0)
    b, pb = fit(1, ckpt_path=tmp_path / "ckpt0" / "epoch=1.ckpt")
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    assert pa.rounds == pb.rounds


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"strategy": "nope"}, "unknown strategy 'nope'"),
        ({"strategy": "sign_transfer"}, "trains a second network at every round"),
        ({"iterations": -1}, "iterations must be an integer >= 0"),
        ({"epochs_per_round": 2, "rewind_epoch": 2}, "rewind_epoch must lie inside round 0"),
        ({"rewind_step": 10}, "rewind_step needs steps_per_epoch"),
        ({"base": 1.5}, "prune.base"),
        ({"scope": "everywhere"}, "prune.scope"),
        ({"strategy": "gradual", "strategy_options": {"trained_fraction": 2}}, "trained_fraction"),
    ],
)
def test_bad_arguments_are_refused_when_it_is_made(kwargs, message):
    with pytest.raises(ValueError, match=message) as e:
        PhiCenterPruning(**kwargs)
    assert "\n" not in str(e.value)


def test_a_trainer_of_the_wrong_length_is_refused(outside):
    prune = PhiCenterPruning(iterations=2, epochs_per_round=1)
    with pytest.raises(ValueError, match=r"need Trainer\(max_epochs=3\)"):
        bare_trainer(5, callbacks=[prune]).fit(outside.MLP(), datamodule=outside.Digits())


def test_late_rewinding_sets_the_rewind_point_and_the_schedule():
    """rewind_epoch=1 of 3: rounds >= 1 train 2 epochs from theta_1, the schedule at its epoch 1."""
    prune = PhiCenterPruning(strategy="lth", iterations=2, epochs_per_round=3, rewind_epoch=1)
    assert prune.max_epochs == 3 + 2 * 2
    assert [prune.round_of(e) for e in range(7)] == [0, 0, 0, 1, 1, 2, 2]


# --------------------------------------------------------------------- one implementation: the round loop's bits

RUN = [
    "dataset=synthetic",
    "dataset.shape=[1,6,6]",
    "dataset.n_train=120",
    "dataset.val_size=30",
    "dataset.n_test=30",
    "batch_size=20",
    "model=fc_lot",
    "strategy=mask0",
    "phi=5e-4",
    "epochs=2",
    "prune.iterations=2",
    "schedule.name=cosine",
    "threads=1",
    "seed=3",
    "round_store.enabled=false",
]


def test_the_callback_over_phicenters_module_reproduces_the_round_loop(tmp_path, compose):
    cfg = compose(*RUN)
    s = settings(cfg)
    engine = loop.run(cfg, tmp_path / "run")

    splits = build.load_data(s)
    net = build.build_model(s, splits)
    prune = PhiCenterPruning(strategy="mask0", phi=5e-4, iterations=2, epochs_per_round=s.epochs, seed=s.seed)

    class FollowsRounds(CohortModule):
        """phicenter's module, told the round by the callback instead of by the round loop."""

        @property
        def round_epoch(self):
            return self.current_epoch - (prune.last_epoch_of(self.round - 1) + 1 if self.round else 0)

        def on_train_epoch_start(self):
            self.round = prune.round_of(self.current_epoch)
            super().on_train_epoch_start()

    module = FollowsRounds([net], s.optim, s.schedule)
    module.start_round(0, s.epochs)
    train_b, val_b, _ = data.loaders(s, splits, s.batch_size, s.seed, group=data.STEPS_PER_CALL)
    module.train_batches = train_b
    trainer = bare_trainer(prune.max_epochs, callbacks=[prune], deterministic=True)
    trainer.fit(module, train_dataloaders=train_b, val_dataloaders=val_b)

    by_round = [[h for h in module.history[0] if h["round"] == r] for r in range(3)]
    for r, entry in enumerate(engine["rounds"]):
        assert [(h["train_loss"], h["val_acc"]) for h in entry["epochs"]] == [
            (h["train_loss"], h["val_acc"]) for h in by_round[r]
        ], f"round {r}"
        assert prune.rounds[r]["sparsity"] == entry["sparsity"]
        for k in ("flipped_by_phi", "flipped_vs_init", "dead_zone"):
            assert prune.rounds[r][k] == (entry[k] or 0.0), (r, k)
    assert not math.isnan(engine["final"]["val_acc"])


def test_the_readmes_plain_torch_example_runs():
    """The README's `phicenter.Pruner` example, as written (its python block that imports Pruner)."""
    pytest.importorskip("timm")
    readme = (ROOT / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in readme.split("```python\n")[1:]]
    (code,) = [b for b in blocks if "from phicenter import Pruner" in b]
    assert len(code.strip().splitlines()) < 15
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    lines = out.getvalue().split("\n")
    assert lines[:2] == ["ResNet 0.360 True", "VisionTransformer 0.360 True"], lines


class Tiny(pl.LightningModule):
    """16 random samples of 8 features, 3 classes; SGD with momentum and weight decay (dead weights would drift)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 3))

    def forward(self, x):  # (structured pruning reads the units' wiring off the module's forward)
        return self.net(x)

    def training_step(self, batch, _):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, 0.5)}


def _tiny_data():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 8, generator=g), torch.randint(0, 3, (16,), generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"strategy": s}
        for s in ("mask1", "mask0", "gradual", "standard", "lth", "random", "random_mask", "lrr", "sign_rewind")
    ]
    + [
        {"strategy": "mask1", "scope": "global", "phi_scale": "layer_std", "phi": 0.5},
        {"strategy": "mask0", "method": "structured"},
        {"strategy": "lth", "rewind_step": 5, "steps_per_epoch": 4, "epochs_per_round": 2},
        {"strategy": "mask1", "rewind_epoch": 1, "epochs_per_round": 2},
    ],
    ids=lambda kw: "-".join(f"{v}" for v in kw.values()),
)
def test_every_strategy_and_option_in_a_trainer(kwargs):
    torch.manual_seed(0)
    prune = PhiCenterPruning(**{"iterations": 2, "epochs_per_round": 1, **kwargs})
    module = Tiny()
    bare_trainer(prune.max_epochs, callbacks=[prune]).fit(module, train_dataloaders=_tiny_data())
    layers = prune.pruner.imp.layers
    assert len(prune.rounds) == 3 and prune.done == 2
    for layer in layers.values():
        m = pruning.mask_of(layer)
        dead = ~m.mask
        assert torch.equal(layer.weight[dead], m.fill[dead])  # held at their fill through the weight decay
        if kwargs["strategy"] != "standard":
            assert bool((layer.weight[dead] == 0).all())
    if kwargs.get("method") == "structured":
        assert 0 < prune.rounds[2]["sparsity"] < 0.36
    else:
        assert prune.rounds[2]["sparsity"] == pytest.approx(0.36, abs=0.01)
    if "rewind_epoch" in kwargs or "rewind_step" in kwargs:
        assert prune.pruner.imp._rewind is not None
        # rounds >= 1 start on the schedule at the rewind point: StepLR(1, 0.5) one epoch on
        assert prune.max_epochs == 2 + 2 * (2 - 1)
