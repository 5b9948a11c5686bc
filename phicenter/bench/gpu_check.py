"""`python -m phicenter.bench.gpu_check [--out outputs/gpu-check.json]` (`make gpu-check`): every check of a
CUDA-only path on one GPU, then a short bench of its GPU rows, in one JSON.

  1. the tests marked `cuda` (tests/test_gpu.py, device=cuda): a cohort's forward against K = 1, bf16-mixed and
     16-mixed rounds, channels_last, compile=true across rounds, device-resident data and augmentation, and
     the bench's GPU rows on small sizes;
  2. `python -m phicenter.bench --quick` on the GPU: MFU, the paper grid's GPU-hours estimate and the cohort
     speedup of fc_lot and conv2.

Each part runs in its own process under a time limit (together under 8 minutes). Without CUDA nothing runs:
it says that it skipped every check because no GPU is present, and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from phicenter import CONF_DIR

ROOT = CONF_DIR.parent
TESTS_S, BENCH_S = 270, 200  # the parts' time limits, in seconds
SKIPPED = "gpu-check: skipped every check: no GPU (CUDA) is present"


def _run(cmd: list[str], timeout: float) -> dict:
    t0 = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        out = {"returncode": proc.returncode, "tail": (proc.stdout + proc.stderr)[-4000:]}
    except subprocess.TimeoutExpired as e:
        tail = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        out = {"returncode": None, "timed_out": True, "tail": tail[-4000:]}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def junit_cases(path: Path) -> dict[str, dict]:
    """{test id: {"outcome", "seconds", "message"}} from pytest's JUnit XML."""
    cases = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name')}"
        outcome, message = "passed", None
        for kind in ("failure", "error", "skipped"):
            node = case.find(kind)
            if node is not None:
                outcome = "skipped" if kind == "skipped" else "failed"
                message = (node.get("message") or node.text or "")[:2000]
        cases[name] = {"outcome": outcome, "seconds": round(float(case.get("time", 0)), 2), "message": message}
    return cases


def run_tests(work: Path) -> dict:
    xml = work / "tests.xml"
    part = _run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-m",
            "cuda",
            "-p",
            "no:cacheprovider",
            f"--junitxml={xml}",
            str(ROOT / "tests" / "test_gpu.py"),
        ],
        TESTS_S,
    )
    part["cases"] = junit_cases(xml) if xml.exists() else {}
    outcomes = [c["outcome"] for c in part["cases"].values()]
    part["passed"] = (
        part["returncode"] == 0 and bool(outcomes) and "failed" not in outcomes and "skipped" not in outcomes
    )
    return part


def run_bench(work: Path, extra: list[str]) -> dict:
    out = work / "bench.json"
    part = _run(
        [sys.executable, "-m", "phicenter.bench", "--quick", "--device", "cuda", "--out", str(out), *extra], BENCH_S
    )
    part["results"] = json.loads(out.read_text()) if out.exists() else None
    part["passed"] = part["returncode"] == 0 and part["results"] is not None
    if part["results"]:
        r = part["results"]
        part["summary"] = {
            k: r.get(k)
            for k in (
                "device_name",
                "mfu",
                "grid_gpu_hours_est",
                "cohort_speedup",
                "cohort_speedup_conv2",
                "loop_overhead_ratio",
                "data_speedup",
            )
        }
    return part


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m phicenter.bench.gpu_check", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="outputs/gpu-check.json", help="the JSON written (default: %(default)s)")
    ap.add_argument("--no-bench", dest="bench", action="store_false", help="the tests only")
    ap.add_argument(
        "--bench-args",
        nargs=argparse.REMAINDER,
        default=[],
        help="more arguments for python -m phicenter.bench (e.g. --data-dir ../shared/data)",
    )
    args = ap.parse_args(argv)
    import torch

    from phicenter.io import write_json

    t0 = time.perf_counter()
    if not torch.cuda.is_available():
        print(SKIPPED)
        write_json(Path(args.out), {"skipped": True, "reason": "no GPU (CUDA) present", "checks_run": 0})
        return 0
    res = {"skipped": False, "device_name": torch.cuda.get_device_name(), "torch": torch.__version__}
    with tempfile.TemporaryDirectory(prefix="phicenter-gpu-check-") as tmp:
        res["tests"] = run_tests(Path(tmp))
        res["bench"] = run_bench(Path(tmp), args.bench_args) if args.bench else None
    res["passed"] = res["tests"]["passed"] and (res["bench"] is None or res["bench"]["passed"])
    res["seconds"] = round(time.perf_counter() - t0, 1)
    write_json(Path(args.out), res)
    cases = res["tests"]["cases"].values()
    print(
        f"gpu-check on {res['device_name']}: {sum(c['outcome'] == 'passed' for c in cases)} of {len(cases)} "
        f"checks passed; bench {'—' if res['bench'] is None else 'ok' if res['bench']['passed'] else 'FAILED'}"
        f"{'' if not (res['bench'] or {}).get('summary') else ' ' + json.dumps(res['bench']['summary'])}; "
        f"{res['seconds']:.0f} s; {args.out}"
    )
    for name, c in res["tests"]["cases"].items():
        if c["outcome"] != "passed":
            print(f"  {c['outcome']}: {name}: {(c['message'] or '').splitlines()[0] if c['message'] else ''}")
    return 0 if res["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
