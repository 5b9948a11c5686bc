"""The CUDA-only paths, each test run on the CPU too: `device=cuda` is marked `cuda` and skipped without a GPU
(`make gpu-check` runs exactly those, plus a short bench); `device=cpu` runs the same code in `make test`.

What a CPU run cannot show: cuDNN/cuBLAS kernels, inductor's GPU code, real fp16 loss scaling on a GPU, the
CUDA caching allocator. Tolerances are stated where they are checked."""

from __future__ import annotations

import copy
import json
import math
import types

import pytest
import torch
import torch.nn.functional as F
from tests.cli import compose_config
from torch import nn

from phicenter import data, models
from phicenter.engine import build, loop
from phicenter.engine.batched import batched_plan
from phicenter.engine.cohort import make_variants, single
from phicenter.engine.member import open_member
from phicenter.engine.module import CohortModule
from phicenter.engine.stacked import StackedNet, stacked_losses
from phicenter.method import pruning, strategies
from phicenter.method.imp import IMP, IMPConfig

HAS_CUDA = torch.cuda.is_available()
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="no GPU (CUDA) present")]),
]
# float32 with TF32 off: a cohort's result may differ from the variant alone by this much, relative to the
# largest magnitude of the tensor compared (other kernels, other summation orders; same maths)
COHORT_RTOL = 1e-4


@pytest.fixture
def exact_fp32():
    """TF32 off (cuDNN convolutions use it by default): the comparisons are of float32 maths."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def close(a: torch.Tensor, b: torch.Tensor, what: str) -> float:
    err = float((a.float() - b.float()).abs().max()) if a.numel() else 0.0
    scale = max(1.0, float(b.float().abs().max())) if b.numel() else 1.0
    assert err <= COHORT_RTOL * scale, f"{what}: max |cohort - alone| = {err:.3g} > {COHORT_RTOL} x {scale:.3g}"
    return err / scale


def bn_net(shape, classes):
    """A Sequential conv net with BatchNorm, the layers the batched forward supports."""
    c = shape[0]
    return nn.Sequential(
        nn.Conv2d(c, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, classes),
    )


NETS = {  # name: (builder, input shape)
    "fc_lot": (lambda s, k: models.build("fc_lot", s, k, seed=0), (1, 8, 8)),
    "conv2": (lambda s, k: models.build("conv2", s, k, seed=0), (3, 8, 8)),
    "bn_conv": (bn_net, (3, 8, 8)),
    "resnet20": (lambda s, k: models.build("resnet20", s, k, seed=0), (3, 8, 8)),  # no plan: vmap
}


def _variants(name: str, k: int, device) -> list[nn.Module]:
    """K copies of one net with their own masks, fills and signs, as the variants of a cohort would be."""
    build_net, shape = NETS[name]
    base = build_net(shape, 10)
    pruning.attach_masks(base)
    nets = []
    for i in range(k):
        net = copy.deepcopy(base)
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for layer in pruning.prunable_layers(net).values():
                mf, raw = pruning.mask_of(layer), pruning.raw_weight(layer)
                mf.mask.copy_(torch.rand(raw.shape, generator=g) > 0.3)
                mf.fill.copy_(torch.randn(raw.shape, generator=g) * 0.01 * (i % 2))
                raw.mul_(torch.where(torch.rand(raw.shape, generator=g) < 0.2, -1.0, 1.0))
        pruning.reapply_masks(net)  # dead entries at their fills, as the training step leaves them
        nets.append(net.to(device).train())
    return nets


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(NETS))
def test_cohort_forward_matches_each_variant_alone(device, name, exact_fp32):
    """The stacked forward CUDA uses (impl auto: batched for nn.Sequential nets, else vmap) against K = 1:
    logits, gradients and BatchNorm statistics of every variant, to COHORT_RTOL."""
    k, shape = 3, NETS[name][1]
    nets = _variants(name, k, device)
    impl = "batched" if batched_plan(nets[0]) else "vmap"
    if device == "cuda":
        assert StackedNet(copy.deepcopy(nets), impl="auto", device=device).impl == impl
    stack = StackedNet(copy.deepcopy(nets), impl=impl, device=device)
    x = torch.randn(16, *shape, generator=torch.Generator().manual_seed(7)).to(device)
    y = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(8)).to(device)
    logits = stack(x, training=True)
    stacked_losses(logits, y)[0].sum().backward()
    for i, net in enumerate(nets):
        alone = net(x)
        F.cross_entropy(alone, y).backward()
        close(logits[i].detach(), alone.detach(), f"{name} logits of variant {i}")
        for pname, p in net.named_parameters():
            close(stack.grad(pname, i), p.grad, f"{name} grad {pname} of variant {i}")
        for bname, b in net.named_buffers():
            if b.is_floating_point():
                close(stack.bufs[bname][i], b, f"{name} buffer {bname} of variant {i}")


def _config(device: str, *extra: str, iterations: int = 1):
    return compose_config(
        *[
            "model=conv2",
            "dataset=synthetic",
            "dataset.shape=[3,8,8]",
            "dataset.n_train=340",
            "dataset.n_test=100",
            "epochs=2",
            f"prune.iterations={iterations}",
            "round_store.enabled=false",
            "threads=1",
            f"trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}",
            *extra,
        ],
    )


def _cpu_fp16_trainer(*args, precision=None, accelerator=None, **kw):
    """The CPU stand-in for CUDA's 16-mixed: Lightning's own MixedPrecision plugin with a GradScaler, on the
    CPU (where Lightning would otherwise switch 16-mixed to bf16-mixed), so the loss-scaled step runs."""
    import pytorch_lightning as pl
    from pytorch_lightning.plugins.precision import MixedPrecision

    assert precision == "16-mixed" and accelerator == "cpu"
    return pl.Trainer(
        *args, accelerator="cpu", plugins=[MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu"))], **kw
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision, k", [("bf16-mixed", 1), ("bf16-mixed", 2), ("16-mixed", 1)])
def test_mixed_precision_rounds(device, precision, k, tmp_path, monkeypatch):
    """Whole rounds of conv2 (channels_last on CUDA) in bf16-mixed (alone and in a cohort) and 16-mixed (loss
    scaling): they complete, losses stay finite, the sparsity schedule is the one of 32-bit runs."""
    if device == "cpu" and precision == "16-mixed":
        monkeypatch.setattr(build, "pl", types.SimpleNamespace(Trainer=_cpu_fp16_trainer))
    scaled = []
    real = CohortModule.manual_backward
    monkeypatch.setattr(CohortModule, "manual_backward", lambda self, loss: scaled.append(1) or real(self, loss))
    cfg = _config(device, f"trainer.precision={precision}")
    variants = single(cfg) if k == 1 else make_variants(cfg, [0.0, 0.02])
    out = loop.train(variants, tmp_path)
    assert bool(scaled) == (precision == "16-mixed")  # the loss-scaled step (GradScaler), else plain torch
    for res in out.values():
        assert res["status"] == "complete" and res["precision"] == precision
        assert res["device"].startswith(device)
        assert [round(r["sparsity"], 3) for r in res["rounds"]] == [0.0, 0.2]
        assert all(math.isfinite(e["train_loss"]) for r in res["rounds"] for e in r["epochs"])


@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_round_boundary(device, exact_fp32):
    """CUDA trains conv nets in channels_last (CohortModule.prepare). The round boundary on channels_last
    tensors prunes and re-signs exactly what it does on contiguous ones, keeps the format, and the forward
    agrees to COHORT_RTOL. (On the CPU, prepare leaves the format: the test sets it as prepare does on CUDA.)"""
    plain = models.build("conv2", (3, 8, 8), 10, seed=0).to(device)
    other = copy.deepcopy(plain)
    imps = [IMP(net, strategies.build("mask1"), IMPConfig(phi=0.02)) for net in (plain, other)]
    CohortModule([other], {"name": "adam", "lr": 1e-3}).prepare(device)
    if device == "cpu":
        other.to(memory_format=torch.channels_last)
    conv = pruning.raw_weight(next(m for m in other.modules() if isinstance(m, nn.Conv2d)))
    assert conv.is_contiguous(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(0)
    for r in (1, 2):
        with torch.no_grad():  # the same stand-in for a round of training on both
            for a, b in zip(plain.parameters(), other.parameters()):
                step = (torch.randn(a.shape, generator=g) * 0.05).to(device)
                a.add_(step)
                b.add_(step)
        for imp in imps:
            imp.advance(r)
        for name, layer in imps[0].layers.items():
            twin = imps[1].layers[name]
            assert torch.equal(pruning.mask_of(layer).mask, pruning.mask_of(twin).mask), name
            assert torch.equal(pruning.raw_weight(layer), pruning.raw_weight(twin)), name
    assert conv.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(8, 3, 8, 8, generator=g).to(device)
    with torch.no_grad():
        close(other.eval()(x), plain.eval()(x), "channels_last forward")


@pytest.mark.parametrize("device", DEVICES)
def test_compile_across_rounds_without_recompiling(device, tmp_path, monkeypatch):
    """compile=true: the net is compiled in round 0 (training, validation and test graphs); rounds 1 and 2
    (new masks and signs in place, new Trainers) run on those graphs. On CUDA with inductor; on the CPU with
    the eager backend (the same dynamo graphs and guards, no code generation)."""
    import torch._dynamo

    if device == "cpu":
        real = nn.Module.compile
        monkeypatch.setattr(nn.Module, "compile", lambda self, *a, **kw: real(self, *a, **{**kw, "backend": "eager"}))
    torch._dynamo.reset()
    cfg = _config(device, "compile=true", iterations=2)
    splits = build.load_data(cfg)
    member = open_member(single(cfg)[0], tmp_path, splits, False)
    loop.train_cohort([member], 0, splits, tmp_path, last_round=0)
    counters = torch._dynamo.utils.counters
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 1
    loop.train_cohort([member], 1, splits, tmp_path)
    assert counters["stats"]["unique_graphs"] == graphs, "a later round compiled again"
    assert member.record["status"] == "complete"
    assert [round(r["sparsity"], 3) for r in member.rounds] == [0.0, 0.2, 0.36]
    torch._dynamo.reset()


@pytest.mark.parametrize("device", DEVICES)
def test_device_resident_data_and_augmentation(device):
    """Batches keep the images on the training device and crop, flip and normalise them there: the batches
    are those made on the CPU (labels and crops exactly, normalised values to 1e-6), shards included."""
    splits = data.load("synthetic", ".", val_size=10, n_train=131, n_test=10, shape=(3, 8, 8))

    def epoch(dev, rank=0, world=1):
        b = (
            data.Batches(
                splits.x_train, splits.y_train, splits.mean, splits.std, 16, shuffle=True, augment=True, seed=3
            )
            .to(dev)
            .shard(rank, world)
        )
        b.set_epoch(2, 1)
        assert b.x.device.type == torch.device(dev).type and b.x.dtype == torch.uint8  # resident, raw
        return list(b)

    for world in (1, 2):
        for rank in range(world):
            ref, got = epoch("cpu", rank, world), epoch(device, rank, world)
            assert len(ref) == len(got) == math.ceil(math.ceil(121 / world) / 16)
            for (xr, yr), (xg, yg) in zip(ref, got):
                assert xg.device.type == device and torch.equal(yr, yg.cpu())
                torch.testing.assert_close(xg.cpu(), xr, rtol=0, atol=1e-6)
    plain = data.Batches(splits.x_train, splits.y_train, splits.mean, splits.std, 16, shuffle=True, seed=3)
    plain.set_epoch(2, 1)
    assert not torch.equal(next(iter(plain))[0], epoch("cpu")[0][0])  # augmentation is on


@pytest.mark.parametrize("device", DEVICES)
def test_bench_gpu_rows(device, tmp_path):
    """The bench's GPU rows on small sizes: images/s, FLOPs per image, MFU against the device's peak (a
    given peak on the CPU), the paper grid's GPU-hours estimate, and the cohort speedup of fc_lot and conv2."""
    from phicenter.bench.cohort import cohort_speedup
    from phicenter.bench.gpu import bench_gpu

    args = types.SimpleNamespace(
        data_dir=None,
        gpu_experiments=["mnist_fc_lot", "cifar10_conv2"],
        precision="bf16-mixed",
        workdir=tmp_path,
        compile=False,
        peak_tflops=None if device == "cuda" else 1.0,
    )
    out = bench_gpu({"gpu_images": 120, "repeats": 1}, args, device)
    assert set(out["rows"]) == {"mnist_fc_lot", "cifar10_conv2"}
    for exp, r in out["rows"].items():
        assert r["images_per_s"] > 0 and r["train_flops_per_image"] > 0 and r["grid_hours_est"] > 0, exp
        assert r["runs"] == 44 and r["rounds"] == 11
        if r["peak_tflops"]:
            assert 0 < r["mfu"] < 1, exp
    assert out["grid_hours_est"] == pytest.approx(sum(r["grid_hours_est"] for r in out["rows"].values()))
    accelerator = f"trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}"
    for model, shape in (("fc_lot", "[1,8,8]"), ("conv2", "[3,8,8]")):
        res = cohort_speedup(
            k=2,
            model=model,
            dataset="synthetic",
            epochs=1,
            sequential=1,
            isolate=False,
            workdir=tmp_path / model,
            overrides=[accelerator, f"dataset.shape={shape}", "dataset.n_train=220", "threads=1"],
        )
        assert res["cohort_speedup"] > 0 and res["device"].startswith(device), model
        assert res["impl"] == ("batched" if device == "cuda" else "loop"), model


@pytest.mark.skipif(HAS_CUDA, reason="with a GPU, make gpu-check runs the checks themselves")
def test_gpu_check_without_a_gpu_skips_everything(tmp_path, capsys):
    from phicenter.bench import gpu_check

    assert gpu_check.main(["--out", str(tmp_path / "check.json")]) == 0
    assert capsys.readouterr().out.strip() == gpu_check.SKIPPED
    assert json.loads((tmp_path / "check.json").read_text())["skipped"] is True


def test_gpu_check_reads_each_outcome(tmp_path):
    from phicenter.bench.gpu_check import junit_cases

    (tmp_path / "t.xml").write_text(
        '<testsuites><testsuite><testcase classname="tests.test_gpu" name="a[cuda]" time="1.5"/>'
        '<testcase classname="tests.test_gpu" name="b[cuda]" time="2"><failure message="boom">trace</failure>'
        '</testcase><testcase classname="tests.test_gpu" name="c[cuda]" time="0"><skipped message="no GPU"/>'
        "</testcase></testsuite></testsuites>"
    )
    cases = junit_cases(tmp_path / "t.xml")
    assert {k: v["outcome"] for k, v in cases.items()} == {
        "tests.test_gpu::a[cuda]": "passed",
        "tests.test_gpu::b[cuda]": "failed",
        "tests.test_gpu::c[cuda]": "skipped",
    }
    assert cases["tests.test_gpu::b[cuda]"]["message"] == "boom" and cases["tests.test_gpu::a[cuda]"]["seconds"] == 1.5
