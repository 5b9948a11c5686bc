"""Record the pinned results (tests/test_pinned.py) of this CPU: `python -m tests.pin [--root CHECKOUT]`.

torch's and MKL's CPU kernels choose their code paths by the CPU's instruction-set extensions, so numbers
pinned to the last bit hold on CPUs with the same ones. tests/data/pinned_results.json keeps the set of the CPU
it was first recorded on (`runs`) and one set per other CPU (`per_cpu`, by `cpu_fingerprint()`). Record a new
CPU's set from a checkout whose numbers are trusted (--root: a commit before the change under test), so the
change is then checked against them."""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PINNED_FILE = ROOT / "tests" / "data" / "pinned_results.json"
SIMD = ("sse", "ssse", "avx", "amx", "fma", "f16c", "bmi", "vnni", "vaes", "vpclmulqdq", "gfni", "adx")


def cpu_fingerprint() -> str | None:
    """A short hash of the CPU's vector and matrix instruction-set extensions (from /proc/cpuinfo), the flags
    kernels dispatch on; None where they cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), None)
    if not flags:
        return None
    kept = sorted(f for f in flags if f.startswith(SIMD))
    return hashlib.sha256(" ".join(kept).encode()).hexdigest()[:12]


def runs_for_this_cpu(pinned: dict) -> list[dict]:
    """The pinned runs of this CPU: its own set when one was recorded, else the first CPU's."""
    return pinned.get("per_cpu", {}).get(cpu_fingerprint() or "", {}).get("runs", pinned["runs"])


def _rounds(run_dir: Path, volatile: list[str]) -> list[dict]:
    res = json.loads((run_dir / "results.json").read_text())
    assert res["status"] == "complete", res.get("error")
    return [{k: v for k, v in r.items() if k not in volatile} for r in res["rounds"]]


def record(root: Path, pinned: dict) -> list[dict]:
    """Each pinned configuration trained by the phicenter in `root`, as the pinned runs."""
    out = []
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    for run in pinned["runs"]:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "phicenter.train", *run["args"], *pinned["common"], f"hydra.run.dir={tmp}"]
            subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
            entry = {"name": run["name"], "args": run["args"]}
            if "variants" in run:
                entry["variants"] = {v: _rounds(Path(tmp) / v, pinned["volatile"]) for v in run["variants"]}
            else:
                entry["rounds"] = _rounds(Path(tmp), pinned["volatile"])
            out.append(entry)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.pin", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose phicenter trains them")
    args = parser.parse_args()
    import torch

    pinned = json.loads(PINNED_FILE.read_text())
    if torch.__version__ != pinned["torch"]:
        parser.error(f"the numbers are pinned under torch {pinned['torch']}, this is {torch.__version__}")
    fingerprint = cpu_fingerprint()
    if fingerprint is None:
        parser.error("this CPU's instruction-set extensions cannot be read (/proc/cpuinfo)")
    pinned.setdefault("per_cpu", {})[fingerprint] = {
        "cpu": platform.processor() or platform.machine(),
        "recorded_from": subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=args.root, capture_output=True, text=True
        ).stdout.strip(),
        "runs": record(args.root.resolve(), pinned),
    }
    PINNED_FILE.write_text(json.dumps(pinned, indent=1) + "\n")
    print(f"pinned the runs of CPU {fingerprint} in {PINNED_FILE}")


if __name__ == "__main__":
    main()
