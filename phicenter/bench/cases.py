"""The bench's cases: an experiment's model and data trained by phicenter's fit path and by a plain loop,
side by side, and the interleaved timing of both."""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from phicenter import CONF_DIR as CONF

TRAIN_SIZE = {"mnist": 55000, "cifar10": 45000, "cifar100": 45000}  # real train split (after 5000 val)
EVAL_SIZE = {"mnist": (5000, 10000), "cifar10": (5000, 10000), "cifar100": (5000, 10000)}  # val, test
SHAPE = {"mnist": [1, 28, 28], "cifar10": [3, 32, 32], "cifar100": [3, 32, 32]}
CLASSES = {"mnist": 10, "cifar10": 10, "cifar100": 100}
# Dense peak TFLOP/s by precision, for MFU; --peak-tflops overrides. First matching name wins.


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def _real_available(name: str, data_dir: str | None) -> bool:
    from phicenter import data

    if not data_dir:
        return False
    files = data.MNIST_FILES if name == "mnist" else data.cifar_files(name)
    return all((Path(data_dir) / f).is_file() for f in files)


def experiment_config(
    experiment: str,
    n_train: int,
    data_dir: str | None,
    device: str,
    precision: str | None,
    compile: bool = False,
    extra: tuple = (),
):
    """The experiment's own config (model, optimizer, batch size, epochs), on real data when it is in
    data_dir, else on synthetic data of the real shape; augmentation off, n_train training images; `extra`
    overrides last. Returns (config, dataset name, data source)."""
    base = compose([f"experiment={experiment}"])
    name = base.dataset.name
    over = [
        f"experiment={experiment}",
        f"trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}",
        "trainer.enable_progress_bar=false",
        "dataset.augment=false",
    ]
    if precision:
        over.append(f"trainer.precision={precision}")
    if compile:
        over.append("compile=true")
    if base.model.name == "vgg16_pretrained":
        over.append("model.pretrained=false")  # the same network; timing needs no download
    if _real_available(name, data_dir):
        over += [f"data_dir={Path(data_dir).resolve()}", "dataset.download=false"]
        source = name
    else:
        shape = SHAPE.get(name, [3, 32, 32])
        over += [
            "dataset=synthetic",
            f"dataset.shape=[{','.join(map(str, shape))}]",
            f"dataset.n_train={n_train + 100}",
            "dataset.n_test=100",
            "dataset.val_size=100",
            f"dataset.num_classes={CLASSES.get(name, 10)}",
        ]
        source = f"synthetic {shape}"
    return compose(over + list(extra)), name, source


class _Clock:
    """Wall time of the training epoch inside a fit: from the epoch-start hook to the end of training (the
    epoch-end hooks, logging and epoch checkpoint included)."""

    def __init__(self, sync):
        import pytorch_lightning as pl

        clock = self

        class Cb(pl.Callback):
            def on_train_epoch_start(self, trainer, module):
                sync()
                clock.start = time.perf_counter()

            def on_train_end(self, trainer, module):
                sync()
                clock.end = time.perf_counter()

        self.callback = Cb()
        self.start = self.end = math.nan

    @property
    def seconds(self) -> float:
        return self.end - self.start


class Case:
    """One experiment's model and data, trained alternately by phicenter's fit path and a plain loop."""

    def __init__(
        self,
        experiment: str,
        n_train: int,
        data_dir: str | None,
        device: str,
        precision: str | None = None,
        workdir: Path | None = None,
        compile: bool = False,
    ):

        from phicenter import data
        from phicenter.config import settings
        from phicenter.engine import build, records
        from phicenter.engine.module import CohortModule

        build.cheap_device_probe()  # both sides' optimizer steps alike, from the first call on
        self.cfg, self.dataset, self.source = experiment_config(
            experiment, n_train, data_dir, device, precision, compile
        )
        self.experiment, self.device = experiment, torch.device(device)
        s = self.s = settings(self.cfg)
        splits = build.load_data(self.cfg)
        if len(splits.y_train) > n_train:  # real data: the first n_train images of the train split
            splits.x_train, splits.y_train = splits.x_train[:n_train], splits.y_train[:n_train]
        self.splits, self.n = splits, len(splits.y_train)
        self.batch_size, self.seed = s.batch_size, s.seed
        self.net = build.build_model(s, splits)
        self.imp = build.build_imp(s, self.net)
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="phicenter-bench-"))
        self.module = CohortModule(
            [self.net],
            s.optim,
            s.schedule,
            recorders=[records.Recorder(self.workdir / experiment)],
        )
        self.train_b, _, _ = data.loaders(s, splits, self.batch_size, self.seed, group=data.STEPS_PER_CALL)
        self.train_b.to(self.device)
        self.module.train_batches = self.train_b
        # The plain loop's data: the same images, normalised once, resident on the same device.
        self.x = ((splits.x_train.float() / 255.0 - splits.mean.view(1, -1, 1, 1)) / splits.std.view(1, -1, 1, 1)).to(
            self.device
        )
        self.y = splits.y_train.to(self.device)
        self.epoch = 0
        self.checkpoint_s: list[float] = []

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def phicenter_epoch(self) -> float:
        """One epoch of a fresh fit, exactly as a round of the engine (engine.loop) makes it."""
        from phicenter.engine import build, callbacks
        from phicenter.engine.boundary import PhiCenterPruning

        clock = _Clock(self.sync)
        cbs = [PhiCenterPruning.for_round([self.imp], 0), clock.callback]
        self.last_checkpoint_s = 0.0  # the round loop's epoch checkpoint, timed
        saver = callbacks.EpochCheckpoint(self.workdir / "ckpt", self.s.checkpoint.every_n_epochs)
        save = saver.on_train_epoch_end

        def timed_save(trainer, module):
            t0 = time.perf_counter()
            save(trainer, module)
            self.last_checkpoint_s = time.perf_counter() - t0

        saver.on_train_epoch_end = timed_save
        cbs.append(saver)
        trainer = build.make_trainer(self.cfg, cbs, 1)
        self.module.start_round(self.epoch, 1)  # a fresh data order each time
        self.module.prepare(trainer.strategy.root_device, compile=self.s.compile)
        trainer.fit(self.module, train_dataloaders=self.train_b)
        self.epoch += 1
        self.checkpoint_s.append(self.last_checkpoint_s)
        return clock.seconds

    def plain_epoch(self) -> float:
        """The minimal hand-written loop: permutation, index, forward, loss, backward, the masks' two passes,
        step; with torch's defaults (not the deterministic mode a fit before it leaves on)."""
        was = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(False)
        try:
            return self._plain_epoch()
        finally:
            torch.use_deterministic_algorithms(was)

    def _plain_epoch(self) -> float:
        from phicenter.engine.module import optimizer_kwargs
        from phicenter.method.pruning import reapply_masks, zero_dead_grads

        params = list(self.net.to(self.device).parameters())
        cls, kwargs = optimizer_kwargs(params, self.s.optim)
        opt = cls(params, **kwargs)
        net, bs, n = self.net.to(self.device).train(), self.batch_size, self.n
        self.sync()
        t0 = time.perf_counter()
        perm = torch.randperm(n, device=self.device)
        for i in range(0, n, bs):
            idx = perm[i : i + bs]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(self.x.index_select(0, idx)), self.y.index_select(0, idx)).backward()
            zero_dead_grads(net)
            opt.step()
            reapply_masks(net)
        self.sync()
        return time.perf_counter() - t0

    def flops_per_image(self) -> float:
        """Model FLOPs of one training step (forward + backward), per image, counted from the model."""
        from torch.utils.flop_counter import FlopCounterMode

        net = self.net.to(self.device).train()
        x, y = self.x[: self.batch_size], self.y[: self.batch_size]
        with FlopCounterMode(display=False) as counter:
            F.cross_entropy(net(x), y).backward()
        net.zero_grad(set_to_none=True)
        return counter.get_total_flops() / len(y)


def interleaved(fns: dict, repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Each function `warmup` times untimed, then `repeats` rounds, the order rotating every round."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    out = {k: [] for k in fns}
    keys = list(fns)
    for r in range(repeats):
        order = keys[r % len(keys) :] + keys[: r % len(keys)]
        for k in order:
            out[k].append(fns[k]())
    return out


def med(xs) -> float:
    return float(statistics.median(xs))


# ---------------------------------------------------------------------------------------------------------
