"""The benchmark's report (``python -m dali_pose.tools.bench``): the text tables of a
report dict, and the dict made JSON-safe."""
from __future__ import annotations

import math
from typing import List

import numpy as np


# --------------------------------------------------------------------- report -------

def _fmt(v, spec="{:.1f}", none="-"):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return none
    return spec.format(v)


def _table(header: List[str], rows: List[List[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def format_report(report: dict) -> str:
    meta = report["meta"]
    out = [f"dali_pose.tools.bench: {meta['dataset']} ({meta['rows']} instances), batch "
           f"{meta['batch_size']}, {meta['threads']} threads/workers, input "
           f"{meta['input_size'][1]}x{meta['input_size'][0]}, "
           f"image_dtype={meta.get('image_dtype')}, "
           f"{meta['rounds']} rounds x {meta['batches']} batches (warm-up {meta['warmup']}); "
           f"{meta['cores']} cores, load average {meta['load_before']} -> "
           f"{meta['load_after']}", ""]
    rows, notes = [], []
    for name, r in report["backends"].items():
        if r["status"] != "ok":
            notes.append(f"{name}: {r['status']}: {r.get('reason', '')}")
            continue
        m = r["memory"]
        rows.append([
            name, _fmt(r["median_samples_per_s"]),
            f"{r['min_samples_per_s']:.0f}-{r['max_samples_per_s']:.0f}",
            _fmt(r.get("ratio_to_reference"), "{:.2f}x"), _fmt(r["cpu_cores"], "{:.2f}"),
            _fmt(r["cpu_ms_per_sample"], "{:.2f}"),
            _fmt(r.get("cpu_ratio_to_reference"), "{:.2f}x"), _fmt(m["main_rss_mb"], "{:.0f}"),
            (f"{m['workers_rss_mb']:.0f}/{m['workers_pss_mb']:.0f}"
             if "workers_rss_mb" in m else "-"),
            _fmt(m.get("gpu_mem_mb"), "{:.0f}")])
    hdr = ["backend", "samples/s", "range", "vs ref", "CPU cores", "CPU ms/sample",
           "vs ref (CPU)", "RSS MB", "workers RSS/PSS MB", "GPU MB"]
    out += [_table(hdr, rows)] + notes + ["",
            f"peak RSS: this process {meta.get('peak_rss_mb', float('nan')):.0f} MB; "
            f"largest reaped child {meta.get('children_peak_rss_mb', float('nan')):.0f} MB"]
    for name, r in report["backends"].items():
        st = r.get("stages")
        if not st:
            continue
        if name == "reference":
            rows = [[k, f"{v:.3f}"] for k, v in st["ms_per_sample"].items()]
            out += ["", f"{name} stages ({st['unit']}):", _table(["stage", "ms"], rows)]
        else:
            rows = [[k, f"{v['cpu_ms_per_sample']:.3f}", f"{v['wall_ms_per_sample']:.3f}",
                     _fmt(st["prefixes"].get(k, {}).get("samples_per_s"))]
                    for k, v in st["stages"].items()]
            if "full decode" in st["prefixes"]:
                p = st["prefixes"]["full decode"]
                src = st["prefixes"].get("source", {"cpu_ms_per_sample": 0.0,
                                                    "wall_ms_per_sample": 0.0})
                rows.append(["(full decode instead, for comparison)",
                             f"{p['cpu_ms_per_sample'] - src['cpu_ms_per_sample']:.3f}",
                             f"{p['wall_ms_per_sample'] - src['wall_ms_per_sample']:.3f}",
                             _fmt(p["samples_per_s"])])
            out += ["", f"{name} stages (warp={st['warp']}, "
                        f"{st.get('people_per_read', 1.0):.2f} people per read; "
                        f"{st['unit']}):",
                    _table(["stage", "CPU ms", "wall ms", "prefix samples/s"], rows)]
    if report.get("train_step"):
        t = report["train_step"]
        if t.get("status", "ok") != "ok":
            out += ["", f"train step: {t['status']}: {t.get('reason', '')}"]
        else:
            out += ["", f"train step (HRNet-W32, AMP {t['amp_dtype']}, channels_last, batch "
                        f"{t['batch']}): {t['median_samples_per_s']:.1f} samples/s"]
            for name, v in t.get("loader_over_training", {}).items():
                out.append(f"  {name}: loader / training = {v:.2f}")
    if report.get("kernels"):
        from .bench_kernels import format_kernels

        out += ["", format_kernels(report["kernels"])]
    if report.get("scaling"):
        rows = [[f"{r['dimension']}={r['value']}", r["backend"],
                 _fmt(r["median_samples_per_s"]), _fmt(r["ratio_to_reference"], "{:.2f}x"),
                 _fmt(r["cpu_cores"], "{:.2f}"), _fmt(r["cpu_ms_per_sample"], "{:.2f}"),
                 _fmt(r["main_rss_mb"], "{:.0f}"), _fmt(r["workers_pss_mb"], "{:.0f}")]
                for r in report["scaling"]]
        out += ["", "scaling (RSS: this process, which keeps what earlier settings built):",
                _table(["setting", "backend", "samples/s", "vs ref", "CPU cores",
                        "CPU ms/sample", "RSS MB", "workers PSS MB"], rows)]
    if report.get("epochs_memory"):
        out += ["", "memory over epochs (MB):"]
        for name, r in report["epochs_memory"].items():
            main = " ".join(f"{e['main_rss_mb']:.0f}" for e in r["epochs"])
            line = f"  {name:<10} main RSS {main}"
            if "workers_pss_mb" in r["epochs"][0]:
                line += "; workers PSS " + " ".join(f"{e['workers_pss_mb']:.0f}"
                                                    for e in r["epochs"])
            if "gpu_mem_mb" in r["epochs"][0]:
                line += "; GPU " + " ".join(f"{e['gpu_mem_mb']:.0f}" for e in r["epochs"])
            growth = ", ".join(f"{k} {v:+.1f}" for k, v in
                               r["growth_first_to_last_mb"].items())
            out.append(line + f"  (growth: {growth})")
    return "\n".join(out)


def _clean(x):
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


