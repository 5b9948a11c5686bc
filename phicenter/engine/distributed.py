"""Data-parallel training of one run (`trainer.strategy=ddp trainer.devices=N`): what the cohort module adds to
Lightning's DDP.

- The module steps its optimizer itself, several steps per Lightning call (data.Batches groups). DDP's reducer
  expects one backward after each forward of its wrapper, so it is switched off for the fit
  (`require_backward_grad_sync`, the flag DDP's own `no_sync` sets) and each step's gradients are averaged
  over the processes here, in one all-reduce. Every process then takes the same step from the same state:
  the parameters stay equal without being broadcast.
- Each process trains on its own shard of every epoch's order (data.shards, as a DistributedSampler takes it),
  so N processes take about 1/N of the steps each. The epoch's training loss and accuracy are summed over the
  processes; validation and test run whole on every process (equal results, nothing to gather), with the
  BatchNorm statistics of the first process.
- Every process does each round boundary on its own copy of the nets; `agree` checks that their masks and
  signs are equal (results.json keeps each process's digest of them, `rank_digests`).
Only the first process writes run files (engine.rundir.is_writer).
"""

from __future__ import annotations

import hashlib

import torch
import torch.distributed as dist

from phicenter.method.pruning import mask_of


def world_size(trainer) -> int:
    return int(getattr(trainer, "world_size", 1) or 1)


def own_gradients(trainer) -> None:
    """This fit averages its gradients itself (average_gradients): DDP's reducer is off."""
    from torch.nn.parallel import DistributedDataParallel

    model = trainer.strategy.model
    if isinstance(model, DistributedDataParallel):
        model.require_backward_grad_sync = False


def average_gradients(params, world: int) -> None:
    """Each parameter's gradient becomes its mean over the processes (one all-reduce of them all)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat.div_(world)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view(g.shape))
        offset += g.numel()


def sum_over_processes(values: list[float], device) -> list[float]:
    """The sum over the processes of each value (float64, on the device the backend needs)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.cpu().tolist()


def broadcast_buffers(module: torch.nn.Module) -> None:
    """The first process's floating-point buffers (BatchNorm statistics) to every process."""
    for b in module.buffers():
        if b.is_floating_point():
            dist.broadcast(b, src=0)


def digest(imp) -> str:
    """A digest of a net's masks and the signs of its effective prunable weights."""
    h = hashlib.sha1()
    for name, layer in imp.layers.items():
        with torch.no_grad():
            h.update(name.encode())
            h.update(mask_of(layer).mask.cpu().numpy().tobytes())
            h.update(torch.signbit(layer.weight).cpu().numpy().tobytes())
    return h.hexdigest()


def agree(values: list[str], what: str) -> list[list[str]]:
    """Every process's `values`, as [[process 0's, process 1's, ...] per value]; a RuntimeError on every
    process when they differ."""
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, list(values))
    if any(g != gathered[0] for g in gathered):
        raise RuntimeError(f"the {len(gathered)} data-parallel processes disagree on {what}")
    return [list(per_value) for per_value in zip(*gathered)]
