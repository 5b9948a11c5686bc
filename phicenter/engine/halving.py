"""Successive halving over a job's variants (`pack_halving=true`, hparams_search=phi_halving): after each round
r >= 1, the half of the live variants with the lowest validation accuracy stop, and the rest train on. The survivor
is the search's answer; the grid it stands in for trains every variant through every round.

A stopped variant keeps the rounds it trained (its results.json, status `halved`, says at which round and
why), so the report and a relaunch read it as finished.
"""

from __future__ import annotations

import logging
import math

log = logging.getLogger("phicenter")

HALVED = "halved"  # a variant's status once successive halving stopped it
FINISHED = ("complete", HALVED)  # the statuses a relaunch leaves as they are


def halve(alive: list, r: int, last: int) -> list:
    """Stop the floor(n / 2) of the n live variants whose round-r validation accuracy is lowest (ties: the
    later variant goes, so the job's order decides); returns the variants stopped. Each one's record says so
    and is written. With one variant left, nothing stops; nor after round 0, which phi does not touch (every
    variant's round 0 is the same); after the `last` round, every live variant but the best stops."""
    if len(alive) <= 1 or r == 0:
        return []

    def val(m) -> float:
        v = (m.record.get("final") or {}).get("val_acc")
        return v if isinstance(v, float) and math.isfinite(v) else -math.inf

    ranked = sorted(range(len(alive)), key=lambda i: (-val(alive[i]), i))
    stopped = [alive[i] for i in ranked[1 if r == last else (len(alive) + 1) // 2 :]]
    best = alive[ranked[0]]
    for m in stopped:
        m.alive = False
        m.record["status"] = HALVED
        m.record["halved"] = {
            "round": r,
            "val_acc": val(m),
            "best": best.variant.name,
            "best_val_acc": val(best),
            "live": len(alive),
        }
        m.folder.write(m.record)
    log.info(
        "successive halving after round %d: %d of %d variants go on (best %s, val_acc %.4f)",
        r,
        len(alive) - len(stopped),
        len(alive),
        best.variant.name or "the run",
        val(best),
    )
    return stopped


def summary(records: dict[str, dict]) -> dict:
    """The search's answer for the job summary: the survivor (the variant that completed), each stopped
    variant's round, and the rounds >= 1 it trained against the grid's (every variant, every round)."""
    done = {n: r for n, r in records.items() if r.get("status") == "complete"}
    if not done:
        return {"survivor": None}
    survivor = max(done, key=lambda n: (done[n].get("final") or {}).get("val_acc", -math.inf))
    # rounds >= 1, where phi acts: round 0 is the same for every variant and costs the search what it costs the grid
    trained = sum(e.get("round", 0) >= 1 for r in records.values() for e in r.get("rounds") or [])
    iterations = len(done[survivor].get("rounds") or []) - 1
    return {
        "survivor": survivor,
        "phi": (done[survivor].get("config") or {}).get("phi"),
        "stopped": {n: r["halved"]["round"] for n, r in records.items() if r.get("status") == HALVED},
        "rounds_trained": trained,
        "rounds_grid": len(records) * iterations,
    }
