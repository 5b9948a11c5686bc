"""Each distinct round trained once (docs/method.md, "Each distinct round is trained once").

A round's result is fixed, to the bit, by its round key: the whole state at its start (every parameter,
buffer, mask and fill, after the round boundary), the settings that shape training, the execution settings
that change float rounding (threads, processes, fused optimizer, compile, deterministic kernels, evaluation
batch), the platform and library versions, the training code, the data, the seed and the round index. phi and
the strategy act only through that state, so they stay out of the key. Before a round trains, the loop
computes each member's key; members whose key is in the round store take the trained state and metrics from
it, members of a cohort with equal keys train as one (the first of them, the representative) and the others
copy its result. Each round trained is then published under its key.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch

from phicenter import data, targets
from phicenter.config import flatten, recorded_config, settings, shapes_training
from phicenter.data.pipelines import library_versions
from phicenter.engine import build, rewinding
from phicenter.engine.roundstore import Entry, open_store
from phicenter.engine.rundir import CKPT_DIR, is_writer
from phicenter.engine.stacked import keeps_bits
from phicenter.io import write_file
from phicenter.method.options import training_options

KEY_VERSION = 3  # 3: masks and fills as buffers beside weights that hold their effective values
# what acts on a round only through the state at its start (the round boundary made it); a strategy option that
# shapes training itself is declared so (method.options.trains) and is put back in by training_settings
OUT_OF_KEY = ("phi", "phi_scale", "strategy", "prune", "reinit")
SPLITS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test", "mean", "std")
# The training code is every module of the package but these, which only show or read what was trained:
# the analysis (report, figures, statistics, the sweep summary, the dry run's counts), the bench (a caller of
# the engine, never imported by it), the report's entry point, the progress bar and lines, the records
# (results.json's round entries and the scalars, made from a round once it is trained), the loggers that
# receive those scalars, the tickets (phicenter.ticket and phicenter.export: a trained round read out of its
# checkpoint), and the store's command (phicenter.store: lists, checks and trims the round store).
CODE_ROOT = Path(__file__).resolve().parents[1]
NOT_TRAINING_CODE = (
    "analysis/",
    "bench/",
    "report.py",
    "engine/progress.py",
    "engine/records.py",
    "loggers/",
    "export.py",
    "store.py",
    "ticket/",
    "method/dryrun.py",
    "method/linear_path.py",
)

_fingerprints: dict[int, str] = {}
_code_digests: dict[Path, str] = {}


def training_settings(cfg) -> dict:
    """The settings of a config that shape a round's training, flat and sorted: the optimizer, schedule,
    epochs, batch size, precision, the model and the dataset with its split and augmentation, the seed,
    rewind.* (round 0 records theta_s; rounds >= 1 train from it), and the strategy options declared as
    shaping training when they are not at their default (strategy.aws: a sign_transfer stage 1 without AWS
    shares lrr's keys); never an execution setting (phicenter.config.EXECUTION_KEYS)."""
    resolved = recorded_config(cfg, 0.0)
    flat = flatten(resolved)
    flat = {k: v for k, v in flat.items() if shapes_training(k) and k.split(".")[0] not in OUT_OF_KEY}
    flat.update(training_options(resolved.get("strategy") or {}))
    return {k: flat[k] for k in sorted(flat)}


def execution_in_key(cfg, device_type: str, world_size: int) -> dict:
    """The execution settings that change a round's bits (phicenter.config.IN_ROUND_KEY), each at the value
    the round trains with: the threads torch uses now (whether `threads` set them or not), the device type and
    the number of data-parallel processes (trainer.accelerator and trainer.devices resolved), and the others
    as the engine reads them."""
    s = settings(cfg)
    return {
        "threads": torch.get_num_threads(),
        "compile": s.compile,
        "optim.fused": bool(s.optim.fused),
        "trainer.deterministic": build.deterministic(s),
        "trainer.accelerator": device_type,
        "trainer.devices": int(world_size),
        "eval_batch_size": data.eval_batch_size(s, s.batch_size),
    }


def platform(device_type: str) -> dict:
    """What else sets a kernel's rounding: torch and Lightning (their versions), the CPU's vector instruction
    set that torch dispatches to, float32 matmul precision, and on CUDA the GPU, CUDA, cuDNN and TF32."""
    out = {
        "torch": torch.__version__,
        "torch_git": torch.version.git_version,
        "lightning": pl.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "matmul_precision": torch.get_float32_matmul_precision(),
    }
    if device_type == "cuda" and torch.cuda.is_available():
        out.update(
            gpu=torch.cuda.get_device_name(),
            capability=list(torch.cuda.get_device_capability()),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            cudnn_tf32=torch.backends.cudnn.allow_tf32,
            matmul_tf32=torch.backends.cuda.matmul.allow_tf32,
        )
    return out


def code_digest(root: Path | None = None) -> str:
    """sha256 of the training code: every .py file under `root` (default CODE_ROOT, the package) but
    NOT_TRAINING_CODE, by relative path and bytes, in sorted order; read once per process (and root)."""
    root = Path(CODE_ROOT if root is None else root)
    if root not in _code_digests:
        h = hashlib.sha256()
        for rel in sorted(p.relative_to(root).as_posix() for p in root.rglob("*.py")):
            if rel in NOT_TRAINING_CODE or rel.startswith(tuple(x for x in NOT_TRAINING_CODE if x.endswith("/"))):
                continue
            content = (root / rel).read_bytes()
            h.update(f"{rel}\0{len(content)}\0".encode())
            h.update(content)
        _code_digests[root] = h.hexdigest()
    return _code_digests[root]


IMPORTED_CODE = code_digest()  # read as the package is imported: the code this process runs


def _update(h, name: str, t: torch.Tensor) -> None:
    t = t.detach()
    h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
    if t.numel():
        h.update(t.to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().data)


def data_fingerprint(splits) -> str:
    """sha256 of every split's images and labels and of the normalisation statistics (once per Splits)."""
    fp = _fingerprints.get(id(splits))
    if fp is None:
        h = hashlib.sha256(f"classes={splits.num_classes}".encode())
        for name in SPLITS:
            _update(h, name, getattr(splits, name))
        fp = _fingerprints[id(splits)] = h.hexdigest()
        weakref.finalize(splits, _fingerprints.pop, id(splits), None)
    return fp


def state_digest(h, state: dict) -> None:
    for name in sorted(state):
        _update(h, name, state[name])


class RoundKeys:
    """The round keys of the runs of one config, for a run of `world_size` data-parallel processes on a
    device of `device_type` (a cohort's members share every setting in the key but their strategy's
    training options: Reuse keeps one RoundKeys per distinct set). The thread count is read as each key
    is made."""

    def __init__(self, cfg, splits, device_type: str, world_size: int = 1):
        self._made = (cfg, splits, device_type, world_size)
        self._headers: dict[int, bytes] = {}

    @property
    def header(self) -> bytes:
        threads = torch.get_num_threads()
        if threads not in self._headers:
            cfg, splits, device_type, world_size = self._made
            header = {
                "version": KEY_VERSION,
                "settings": training_settings(cfg),
                "execution": execution_in_key(cfg, device_type, world_size),
                "platform": platform(device_type),
                "code": code_digest(),
                "data": data_fingerprint(splits),
                **library_versions(settings(cfg).dataset.pipeline),  # torchvision: its and Pillow's versions
                **targets.in_round_key(training_settings(cfg)),  # model=custom: its path and source file
            }
            self._headers[threads] = json.dumps(header, sort_keys=True, separators=(",", ":"), default=str).encode()
        return self._headers[threads]

    def __call__(self, net: torch.nn.Module, round_index: int) -> str:
        h = hashlib.sha256(self.header)
        h.update(f"|round={int(round_index)}|".encode())
        state_digest(h, net.state_dict())
        return h.hexdigest()


@dataclass
class Source:
    """Where a member's round comes from: trained here (`rep`: its index among the members trained), copied
    from a representative of the cohort, or taken from the store (`entry`). `publish`: whether a round
    trained here goes to the store (not when its bits depend on the cohort it trained in)."""

    key: str
    rep: int | None = None
    entry: Entry | None = None
    reused_from: str | None = None  # null: this run trained it
    publish: bool = True


@dataclass
class Outcome:
    """A member's trained round, wherever it came from."""

    key: str
    history: list
    test: tuple
    reused_from: str | None
    diverged: str | None = None
    publish: bool = True


class Reuse:
    """Round keys, the store and who trains what, for one cohort of a run of `world_size` processes, trained
    with the cohort's forward `impl` (engine.stacked). `round_store.enabled=false`: every member trains every
    round (keys are still recorded). A multi-process run, whose ranks must all decide alike, never reads the
    store, and its rounds, whose keys hold its number of processes, would be read by nothing: it does not
    publish either. Where a cohort of several variants trains each to other bits than alone (not
    stacked.keeps_bits) and kernels are deterministic, every member trains every round itself, as with the
    store off, and nothing is published: a reused round must be the very one the run would have trained.
    Nor is a round published that resumes a fit an earlier launch began under another key (say at another
    thread count): part of it was trained otherwise. Each round a member trains is marked with its key in the
    member's checkpoints (`round_NNN.key`) until it is done, for a relaunch to compare."""

    def __init__(self, cfg, splits, device_type: str, world_size: int = 1, impl: str = "auto", log=print):
        self.splits, self.device_type, self.world_size = splits, device_type, world_size
        self._keys: dict[str, RoundKeys] = {}
        self.store = open_store(cfg, log=log)
        self.shared = self.store is not None and int(world_size) == 1
        self.log = log
        self.stacked_alone = not keeps_bits(impl, device_type) and build.deterministic(cfg)
        self.rewinds = rewinding.active(cfg)

    def keys(self, cfg) -> RoundKeys:
        """The RoundKeys of a member's config (one per distinct training settings)."""
        settings = json.dumps(training_options(cfg.strategy), sort_keys=True, default=str)
        if settings not in self._keys:
            self._keys[settings] = RoundKeys(cfg, self.splits, self.device_type, self.world_size)
        return self._keys[settings]

    def plan(self, members: list, r: int) -> tuple[list, list[Source]]:
        """(the members to train, each member's Source): one representative per distinct key not in the
        store; every member, when a cohort of several trains each to bits of its own (see the class)."""
        if len(members) > 1 and self.stacked_alone:
            return list(members), [
                Source(self.keys(m.variant.cfg)(m.net, r), rep=i, publish=False) for i, m in enumerate(members)
            ]
        trained, sources, first = [], [], {}
        seen = self._seen()
        for m in members:
            key = self.keys(m.variant.cfg)(m.net, r)
            if self.store is None or key not in first:
                entry = self._get(m, key)
                if entry is not None:
                    src = Source(key, entry=entry, reused_from=entry.first_run)
                else:
                    src = Source(key, rep=len(trained), publish=self._begin(m, r, key))
                    trained.append(m)
                first[key] = src
            else:
                src = first[key]
                if src.entry is None:
                    src = Source(key, rep=src.rep, reused_from=str(trained[src.rep].folder.path.resolve()))
            sources.append(src)
        self._note_errors(members, seen)
        return trained, sources

    def _get(self, m, key: str) -> Entry | None:
        """The store's entry of `key`, checked against m's network (names, shapes, dtypes: what loading it
        takes); an entry the store rejects is counted in m's record."""
        if not self.shared:
            return None
        before = self.store.rejected
        entry = self.store.get(key, self.log, like=m.net.state_dict())
        self.usage(m)["rejected"] += self.store.rejected - before
        return entry

    def _begin(self, m, r: int, key: str) -> bool:
        """Mark round r of m as begun under `key`; false when an earlier launch began it under another key."""
        if not self.shared:
            return False
        mark = _mark(m, r)
        before = mark.read_text() if mark.is_file() else None
        if before is None and is_writer():
            write_file(mark, key.encode())
        if before in (None, key):
            return True
        self.log(
            f"round {r} of {m.folder.path} resumes a fit begun under another round key (an execution setting "
            "that changes its bits, the code or the platform changed since); it will not be published"
        )
        return False

    def take(self, members: list, sources: list[Source], trained: list, module, r: int, epochs: int) -> list:
        """Each member's Outcome; a member that did not train gets the trained state (and, in round 0 of a
        late-rewinding run, the rewind point) and replays the epoch rows to its TensorBoard events."""
        out = []
        for m, src in zip(members, sources):
            if src.entry is not None:
                e = src.entry
                res = Outcome(src.key, [dict(row) for row in e.history], tuple(e.test), src.reused_from)
                state, rewind = e.model, e.rewind
            else:
                rep = trained[src.rep]
                res = Outcome(
                    src.key,
                    [dict(row) for row in module.history[src.rep]],
                    tuple(module.last_test[src.rep]),
                    src.reused_from,
                    module.diverged.get(src.rep),
                    src.publish,
                )
                state = rep.net.state_dict() if rep is not m else None
                rewind = rep.imp.rewind if r == 0 and self.rewinds and rep is not m else None
            if src.entry is not None:
                self.usage(m)["read"] += 1
            if src.reused_from is not None and res.diverged is None:
                m.net.load_state_dict(state)
                if rewind is not None:
                    m.imp.set_rewind(rewind)
                    m.folder.save_rewind(m.imp.rewind)
                if m.recorder is not None:
                    for row in res.history:
                        m.recorder.epoch(row, step=r * epochs + row["epoch"])
            out.append(res)
        return out

    def publish(self, members: list, outcomes: list[Outcome], r: int) -> None:
        """Each round trained here (and not diverged), under its key, once."""
        if not self.shared:
            return
        seen = self._seen()
        for m, res in zip(members, outcomes):
            if res.reused_from is not None:
                continue
            if is_writer():
                _mark(m, r).unlink(missing_ok=True)
            if res.diverged is not None or not res.publish:
                continue
            rewind = m.imp.rewind if r == 0 and self.rewinds else None
            if self.store.put(
                Entry(
                    res.key,
                    r,
                    str(m.folder.path.resolve()),
                    _cpu(m.net.state_dict()),
                    res.history,
                    res.test,
                    None if rewind is None else _cpu(rewind),
                )
            ):
                self.usage(m)["published"] += 1
        self._note_errors(members, seen)

    def usage(self, m) -> dict:
        """What the store did for member m, its results.json `round_store`: its dir (null when off), the
        rounds read from it and published to it, the entries it rejected (engine.roundstore: not signed by
        the run's key, or not this network's) and the store's errors (a relaunch carries the counts on)."""
        rec = m.record.get("round_store")
        if rec is None:
            before = (m.folder.read() or {}).get("round_store") or {}
            rec = m.record["round_store"] = {
                "dir": None if self.store is None else str(self.store.root),
                "read": int(before.get("read", 0)),
                "published": int(before.get("published", 0)),
                "rejected": int(before.get("rejected", 0)),
                "errors": list(before.get("errors") or []),
            }
        return rec

    def _seen(self) -> int:
        return len(self.store.errors) if self.store is not None else 0

    def _note_errors(self, members: list, seen: int) -> None:
        """Each member's record of the store gets the errors met since `seen` (the cohort shares the store)."""
        for m in members:
            self.usage(m)["errors"] += self.store.errors[seen:] if self.store is not None else []


def _mark(m, r: int) -> Path:
    return m.folder.path / CKPT_DIR / f"round_{r:03d}.key"


def _cpu(state: dict) -> dict:
    return {k: v.detach().to("cpu") for k, v in state.items()}
