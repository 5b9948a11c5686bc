"""The bench's results as docs/benchmarks.md shows them: one markdown table, and the summary line."""

from __future__ import annotations


def _fmt(x, spec=".3f"):
    return "—" if x is None else format(x, spec)


def table(res: dict) -> str:
    L = [
        f"phicenter.bench on {res['device_name']} ({res['device']}, {res['threads']} torch threads, "
        f"{'quick' if res['quick'] else 'default'}, median of {res['repeats']}; loadavg {res['loadavg_start']})",
        "",
        "| measure | phicenter | baseline | ratio | target |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key, r in res["loop"].items():
        L.append(
            f"| (a) {key} epoch, {r['data']}, {r['images']} images, batch {r['batch_size']} | "
            f"{r['phicenter_epoch_s']:.3f} s | {r['plain_epoch_s']:.3f} s (plain loop) | {r['ratio']:.3f} | "
            f"{'≤ 1.10' if key == 'fc_lot' else '—'} |"
        )
    d = res["data"]
    L.append(
        f"| (b) data epoch, CIFAR-shaped, crop+flip, {d['images']} images, batch {d['batch_size']} | "
        f"{d['fast_epoch_s']:.3f} s | {d['torchvision_workers0_epoch_s']:.3f} s (0 workers), "
        f"{d['torchvision_workers2_epoch_s']:.3f} s (2 workers) | {d['speedup']:.1f}× faster | ≥ 3× |"
    )
    for key, p in res["prune"].items():
        L.append(
            f"| (c) {key} prune+re-sign+reinit ({p['worst_strategy']}, slowest) vs a round "
            f"({p['epochs_per_round']} epochs × {p['train_images']} images, est.) | "
            f"{p['advance_s'][p['worst_strategy']]:.3f} s | {p['round_train_s_est']:.1f} s | "
            f"{100 * p['share']:.3f} % | < 1 % |"
        )
    for key, r in res["loop"].items():
        L.append(
            f"| (d) {key} throughput ({res['device']}, 32-bit) | {r['images_per_s']:.0f} images/s | "
            f"{r['train_flops_per_image'] / 1e6:.1f} MFLOP/image | "
            f"{r['images_per_s'] * r['train_flops_per_image'] / 1e9:.2f} GFLOP/s | — |"
        )
    return "\n".join(L + _mask_rows(res) + _gpu_rows(res))


def _mask_rows(res: dict) -> list[str]:
    """Rows (e) and (f): masked against dense steps and rounds, and a second thread."""
    L = []
    m = res.get("masks")
    if m:
        for key, r in m["step"].items():
            L.append(
                f"| (e) {key} training step, masked ({r['strategy']}, {100 * r['sparsity']:.0f} % dead) vs "
                f"the same net unmasked, {r['images']} images | {r['masked_step_ms']:.3f} ms | "
                f"{r['dense_step_ms']:.3f} ms | {r['ratio']:.3f} (CPU time {r['cpu_ratio']:.3f}) | "
                f"{'≤ 1.05' if key == 'fc_lot' else '—'} |"
            )
        r = m["round"]
        L.append(
            f"| (e) fc_lot round 1 (masked) vs round 0 (dense), {r['epochs']} epochs × {r['images']} images | "
            f"{r['masked_round_s']:.2f} s | {r['dense_round_s']:.2f} s | {r['ratio']:.3f} | — |"
        )
    t = res.get("threads_rows")
    if t:
        for r in t["rows"].values():
            L.append(
                f"| (f) {r['model']} epoch at 2 threads vs 1, {r['images']} images | {r['epoch_s']['2']:.3f} s | "
                f"{r['epoch_s']['1']:.3f} s (1 thread) | {r['speedup_2_vs_1']:.2f}× | — |"
            )
    return L


def _gpu_rows(res: dict) -> list[str]:
    """Rows (d) on a GPU: throughput and MFU per experiment, and the grid's GPU-hours."""
    L = []
    g = res.get("gpu")
    if g:
        for exp, r in g["rows"].items():
            ref = f", reference: {r['grid_hours_est']:.2f} GPU-hours a seed" if r.get("reference") else ""
            L.append(
                f"| (d) {exp} ({r['precision']}{ref}) | {r['images_per_s']:.0f} images/s | "
                f"{r['tflops_per_s']:.1f} TFLOP/s of {_fmt(r['peak_tflops'], '.0f')} | MFU {_fmt(r['mfu'])} | "
                f"{'≥ 0.30' if r['model'] == 'vgg16' else '—'} |"
            )
        L.append(f"| (d) paper grid, estimated | {_fmt(g['grid_hours_est'], '.2f')} GPU-hours | | | ≤ 12 |")
        if g.get("reference_hours_est") is not None:
            L.append(
                f"| (d) reference experiments, estimated | {g['reference_hours_est']:.2f} GPU-hours (one seed "
                "each) | | | — |"
            )
    else:
        L.append("| (d) MFU, paper grid in GPU-hours | — (no GPU) | | | |")
    return L


def print_summary(res: dict) -> None:
    print(
        f"\nloop_overhead_ratio {res['loop_overhead_ratio']:.3f}  data_speedup {res['data_speedup']:.1f}  "
        f"prune_share {100 * res['prune_share']:.3f} %  ({res['seconds']:.0f} s)"
    )
    if "masked_step_ratio" in res:
        print(
            f"masked_step_ratio {res['masked_step_ratio']:.3f} (fc_lot; conv4 {res['masked_step_ratio_conv4']:.3f})  "
            f"masked_round_ratio {res['masked_round_ratio']:.3f}"
        )
    if "cohort_speedup" in res:
        print(
            f"cohort_speedup {res['cohort_speedup']:.2f} (K = 11 fc_lot, cohort vs sequential)  "
            f"cohort_peak_memory_ratio {res['cohort_peak_memory_ratio']:.2f}"
        )
    if "cohort_speedup_conv2" in res:
        print(
            f"cohort_speedup_conv2 {res['cohort_speedup_conv2']:.2f} (K = 11 conv2, CIFAR-shaped, cohort vs "
            f"sequential)  peak memory ratio {res['cohort_conv2']['cohort_peak_memory_ratio']:.2f}"
        )
    if res.get("cohort_step"):
        st = res["cohort_step"]
        kernels = ", ".join(f"{k[6:]} {v:.2f}" for k, v in list(st["kernels_ms_per_variant"].items())[:8] if v >= 0.05)
        print(
            f"cohort step (fc_lot, K = 11): one lean step alone {st['single_ms']:.2f} ms; cohort "
            f"{st['cohort_ms_per_variant']:.2f} ms per variant, of which {st['kernel_ms_per_variant']:.2f} ms in "
            f"the variant's own kernels ({kernels}): per-step gain {st['cohort_gain']:.2f}x, bound for any "
            f"cohort here {st['cohort_bound']:.2f}x"
        )
