"""make_optimizer: the fused implementation is the same update; only float rounding (a fused multiply-add) may
move a few elements by an ulp or so."""

import pytest
import torch

from phicenter.engine.module import make_optimizer


@pytest.mark.parametrize(
    "optim", [{"name": "adam", "lr": 1e-2}, {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}]
)
def test_fused_matches_for_loop(optim):
    g = torch.Generator().manual_seed(0)
    start = [torch.randn(50, 30, generator=g), torch.randn(30, generator=g)]
    grads = [[torch.randn_like(t) for t in start] for _ in range(6)]
    out = {}
    for fused in (False, True):
        params = [torch.nn.Parameter(t.clone()) for t in start]
        opt, _ = make_optimizer(params, {**optim, "fused": fused}, {"name": "none"}, 1)
        assert bool(opt.defaults.get("fused")) is fused
        for step in grads:
            for p, s in zip(params, step):
                p.grad = s.clone()
            opt.step()
        out[fused] = [p.detach() for p in params]
    for a, b in zip(out[False], out[True]):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)
    differ = sum(int((a != b).sum()) for a, b in zip(out[False], out[True]))
    assert differ < 0.05 * sum(a.numel() for a in out[False])  # rounding on a few elements


def test_fused_only_where_the_device_has_it():
    cpu = [torch.nn.Parameter(torch.zeros(3))]
    assert make_optimizer(cpu, {"name": "adam", "lr": 1e-3, "fused": True}, None, 1)[0].defaults["fused"]
    meta = [torch.nn.Parameter(torch.zeros(3, device="meta"))]
    assert not make_optimizer(meta, {"name": "adam", "lr": 1e-3, "fused": True}, None, 1)[0].defaults["fused"]


def test_fused_steps_aside_for_foreach_and_differentiable():
    p = [torch.nn.Parameter(torch.zeros(3))]
    for extra in ({"foreach": True}, {"differentiable": True}):
        opt, _ = make_optimizer(p, {"name": "adam", "lr": 1e-3, "fused": True, **extra}, None, 1)
        assert not opt.defaults["fused"]


def test_device_probe_without_a_gpu_leaves_nvml_out_of_each_step(monkeypatch):
    """Lightning's import asks for the NVML-based CUDA check; with no GPU, optimizer steps must not run it."""
    import os

    import pytorch_lightning  # noqa: F401  (sets PYTORCH_NVML_BASED_CUDA_CHECK=1)

    from phicenter.engine import build

    monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    build.cheap_device_probe()
    assert os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] == "0"
    if torch.cuda._is_compiled() and torch._C._cuda_getDeviceCount() == 0:  # a CUDA build on a GPU-less machine
        calls = []
        monkeypatch.setattr(torch.cuda, "_raw_device_count_nvml", lambda: calls.append(1) or -1)
        net = torch.nn.Linear(4, 2)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        for _ in range(3):
            net(torch.ones(1, 4)).sum().backward()
            opt.step()
        assert calls == []


def test_device_probe_leaves_a_machine_with_a_gpu_alone(monkeypatch):
    import os

    from phicenter.engine import build

    monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    build.cheap_device_probe()
    assert os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] == "1"
