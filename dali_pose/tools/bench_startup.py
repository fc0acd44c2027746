"""Start-up time: fresh processes, from nothing to the first batch of train and val.

    python -m dali_pose.tools.bench --startup [--config CFG] [--set KEY=VALUE ...]
        [--warm-runs N] [--no-reference] [--json OUT]

Each measurement is a process of its own (``python -m dali_pose.tools.bench_startup
--child ...``) that starts Python and imports the loader ("import", from the parent's
spawn), builds the train loader, takes its first batch, then the same for val, and reports
each phase's wall seconds:

* DALI, cold cache: the operators' compile cache (:mod:`dali_pose.loader.compile_cache`)
  and numba's own cache both empty (fresh temporary folders): a first start on a machine;
* DALI, warm cache: the same folders again, filled by the cold run (``--warm-runs`` runs);
* classic: :mod:`dali_pose.tools.reference`'s DataLoader, ``loader.num_threads`` workers.

"loaders + batches" is the sum of the four phases after the imports (what a restart waits
before its first training step, imports aside), with the CPU seconds (user + system, worker
processes included) it took; "process" is the whole child's wall time from spawn to exit,
with its CPU seconds. The machine's load average and the hypervisor's steal over the runs are
printed with them: a shared machine makes every figure slower.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict

from ..config import add_config_args, load_config

PHASES = ("import", "train_build", "train_batch", "val_build", "val_batch")
SPAWNED = "DALI_POSE_STARTUP_SPAWNED"  # the parent's clock when it started the child


# ----------------------------------------------------------------- the child ---------

def _tree_cpu_s() -> float:
    """User + system seconds of this process, its reaped children and its live ones (the
    classic loader's workers; read from /proc, 0 for them where there is none)."""
    from .bench_backends import _pid_cpu_s

    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        total += r.ru_utime + r.ru_stime
    me = str(os.getpid())
    for pid in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    ppid = f.read().rsplit(")", 1)[1].split()[1]
            except (OSError, IndexError):
                continue
            if ppid == me:
                total += _pid_cpu_s(int(pid))
    return total


def child(kind: str, config, overrides) -> dict:
    """One start-up, timed by phase (run in a fresh process)."""
    spawned = float(os.environ.get(SPAWNED, time.time()))
    if kind == "dali":
        from ..loader import build_loader, compile_cache

        def build(cfg, split):
            return build_loader(cfg, split, log=None)
    else:
        from .reference import build_reference_loader as build
    t = [time.perf_counter() - (time.time() - spawned), time.perf_counter()]
    cpu0 = _tree_cpu_s()
    cfg = load_config(config, overrides)
    loaders = []  # kept until the end: a loader's teardown is not start-up
    for split in ("train", "val"):
        loader = build(cfg, split)
        t.append(time.perf_counter())
        next(iter(loader))
        t.append(time.perf_counter())
        loaders.append(loader)
    out = {p: b - a for p, a, b in zip(PHASES, t, t[1:])}
    out["cpu_loaders_s"] = _tree_cpu_s() - cpu0
    if kind == "dali":
        out["cache"] = dict(compile_cache.stats)
    return out


# ----------------------------------------------------------------- the parent --------

def _children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_child(kind: str, config, overrides, env: Dict[str, str]) -> dict:
    """One fresh process; its phases, wall seconds and CPU seconds (with its workers)."""
    args = [sys.executable, "-m", "dali_pose.tools.bench_startup", "--child", kind]
    if config:
        args += ["--config", config]
    for o in overrides:
        args += ["--set", o]
    cpu0, t0 = _children_cpu_s(), time.perf_counter()
    p = subprocess.run(args, env={**os.environ, **env, SPAWNED: repr(time.time())},
                       capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, _children_cpu_s() - cpu0
    if p.returncode != 0:
        raise RuntimeError(f"{kind} start-up failed:\n{p.stderr[-3000:]}")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out.update(process_s=wall, cpu_s=cpu,
               to_first_batches_s=sum(out[k] for k in PHASES[1:]))
    return out


def startup(config, overrides, warm_runs: int = 2, reference: bool = True, log=print,
            runner=run_child) -> dict:
    """Cold, then ``warm_runs`` warm DALI start-ups, then the classic loader's."""
    from .bench_backends import _load, _machine_ticks, _steal_share

    tmp = tempfile.mkdtemp(prefix="dali_pose_startup_")
    env = {"DALI_POSE_CACHE": os.path.join(tmp, "dali_pose"),
           "NUMBA_CACHE_DIR": os.path.join(tmp, "numba")}
    report = {"meta": {"config": config, "overrides": list(overrides),
                       "load_before": _load(), "cores": os.cpu_count(),
                       "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
              "runs": []}
    ticks = _machine_ticks()
    try:
        log("DALI, cold cache ...")
        report["runs"].append({"name": "dali cold", **runner("dali", config, overrides, env)})
        for i in range(warm_runs):
            log(f"DALI, warm cache ({i + 1}/{warm_runs}) ...")
            report["runs"].append({"name": f"dali warm {i + 1}",
                                   **runner("dali", config, overrides, env)})
        if reference:
            log("classic loader ...")
            report["runs"].append({"name": "classic",
                                   **runner("reference", config, overrides, {})})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report["meta"].update(load_after=_load(), steal=_steal_share(ticks, _machine_ticks()))
    runs = {r["name"]: r for r in report["runs"]}
    warm = [r["to_first_batches_s"] for n, r in runs.items() if n.startswith("dali warm")]
    if warm:
        report["warm_median_s"] = statistics.median(warm)
        report["warm_over_cold"] = report["warm_median_s"] / runs["dali cold"][
            "to_first_batches_s"]
    return report


def format_report(report: dict) -> str:
    m = report["meta"]
    load = f"{m['load_before'][0]:.2f}" if m.get("load_before") else "-"
    steal = f"{m['steal']:.0%}" if m.get("steal") is not None else "-"
    lines = [f"start-up to the first batch, fresh processes, seconds ({m['date']}; "
             f"{m['cores']} cores; load average before {load}; steal {steal})"]
    head = ["", "import", "train build", "1st batch", "val build", "1st batch",
            "loaders+batches", "(CPU s)", "process", "(CPU s)", "operators"]
    rows = []
    for r in report["runs"]:
        c = r.get("cache")
        ops = f"{c['compiled']} compiled, {c['loaded']} loaded" if c else "-"
        rows.append([r["name"], *(f"{r[p]:.2f}" for p in PHASES),
                     f"{r['to_first_batches_s']:.2f}", f"{r['cpu_loaders_s']:.2f}",
                     f"{r['process_s']:.2f}", f"{r['cpu_s']:.2f}", ops])
    widths = [max(len(str(x[i])) for x in [head] + rows) for i in range(len(head))]
    for row in [head] + rows:
        lines.append("  ".join(str(v).rjust(w) if i else str(v).ljust(w)
                               for i, (v, w) in enumerate(zip(row, widths))))
    if "warm_over_cold" in report:
        lines.append(f"warm cache: {report['warm_median_s']:.2f} s to the first batches "
                     f"(median), {report['warm_over_cold']:.0%} of the cold start")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m dali_pose.tools.bench --startup",
                                description="Time to the first batch of fresh processes: "
                                            "DALI cold and warm compile cache, classic.")
    add_config_args(p)
    p.add_argument("--warm-runs", type=int, default=2)
    p.add_argument("--no-reference", action="store_true", help="skip the classic loader")
    p.add_argument("--json", default=None, metavar="OUT", help="write the report here")
    p.add_argument("--child", choices=("dali", "reference"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.config, list(args.overrides))), flush=True)
        return 0
    if args.config is None:  # the built-in defaults: the synthetic set, rendered if missing
        from .bench import _ensure_dataset

        _ensure_dataset(load_config(None, list(args.overrides)))
    report = startup(args.config, list(args.overrides), args.warm_runs,
                     not args.no_reference,
                     log=lambda *a: print(*a, file=sys.stderr, flush=True))
    print(format_report(report), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
