"""Two source trees of dali_pose side by side in one run: the CPU loader's throughput
interleaved round by round, and whether the crops, the dot test's bias and the batch mixing
are the same.

    git worktree add --detach /tmp/before main
    python -m dali_pose.tools.bench_trees --before /tmp/before [--after .] \
        [--rounds 5] [--round-epochs 2] [--data DIR]

Each (tree, configuration) runs in its own worker process (``PYTHONPATH`` = the tree), which
builds its loader once (and runs a warm-up epoch) and then, on the parent's command, times
a round of whole epochs (wall seconds and the process's CPU seconds, all threads: an epoch
ends with the pipelines drained, so no work of one round runs during another's), or
reports per crop of an epoch a hash of its image, heatmap, keypoints, matrix and occluded
joints (keyed by (epoch, row)), or the dot test's errors. The
parent sends the rounds in turn (tree A config 1, tree B config 1, tree A config 2, ...),
so both trees see the same machine load, and prints both.

Configurations (the synthetic dataset, training split, the trees' default loader settings,
``--set`` overrides added to each): ``default`` (full augmentation, each image decoded once
for its people), ``aid`` (information dropping with probability 1) and ``noda`` (a NODA
pool of the synthetic people, probability 1, with AID: the tree before this change decoded
one person per sample for NODA).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

CONFIGS = {
    "default": [],
    "aid": ["occlusion.method=aid", "occlusion.prob=1"],
    "noda": ["noda.prob=1", "occlusion.method=aid", "occlusion.prob=0.5"],
}


# ------------------------------------------------------------------------ worker ----

def _worker(spec: dict) -> None:
    """Build the loader of ``spec`` from the tree on ``sys.path``; answer commands on stdin
    with one JSON line each on stdout."""
    import hashlib
    import resource
    import time

    import numpy as np

    from dali_pose import build_loader, load_config

    def cpu_s():
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    t0 = time.perf_counter()
    loader = build_loader(load_config(None, spec["overrides"]), "train", device="cpu",
                          log=None)
    say = lambda obj: print(json.dumps(obj), flush=True)  # noqa: E731
    for _ in loader:  # a warm-up epoch
        pass
    say({"ready": time.perf_counter() - t0, "tree": os.path.dirname(
        os.path.dirname(sys.modules["dali_pose"].__file__))})

    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["do"] == "round":  # whole epochs: nothing runs between rounds
            c0, w0, n = cpu_s(), time.perf_counter(), 0
            for _ in range(cmd["epochs"]):
                for batch in loader:
                    n += int(batch["image"].shape[0])
            wall, cpu = time.perf_counter() - w0, cpu_s() - c0
            say({"samples": n, "seconds": wall, "cpu_s": cpu})
        elif cmd["do"] == "crops":
            out, pairs, same = {}, 0, 0
            epoch_was = loader.epoch
            for epoch in cmd["epochs"]:
                loader.set_epoch(epoch)
                for batch in loader:
                    ids = batch["image_id"].numpy()
                    _, c = np.unique(ids, return_counts=True)
                    same += int((c * (c - 1) // 2).sum())
                    pairs += len(ids) * (len(ids) - 1) // 2
                    for i, r in enumerate(batch["row"].tolist()):
                        h = hashlib.sha1()
                        for key in ("image", "heatmap", "keypoints", "matrix", "occluded"):
                            h.update(batch[key][i].contiguous().numpy().tobytes())
                        out[f"{epoch}:{r}"] = h.hexdigest()
            loader.set_epoch(epoch_was)
            say({"crops": out, "same_image_pairs": same, "pairs": pairs})
        elif cmd["do"] == "quit":
            return


def _dot_worker(spec: dict) -> None:
    """The dot test's errors (the after tree's ``tests/test_loader.py`` data and measure)
    with the loader of the tree on ``sys.path``."""
    import pathlib

    import numpy as np

    sys.path.insert(0, spec["tests"])
    from test_loader import _dot_dataset, dot_errors

    from dali_pose import build_loader, load_config

    index = _dot_dataset(pathlib.Path(tempfile.mkdtemp()))
    cfg = load_config(None, ["loader.batch_size=6", "aug.rot_prob=1", "aug.half_body_prob=0",
                             "loader.num_threads=1"])
    errs, _ = dot_errors(build_loader(cfg, "train", index=index, log=None), epochs=5)
    e = np.asarray(errs)
    print(json.dumps({"n": len(e), "max": float(e.max()), "mean": float(e.mean())}),
          flush=True)


# ------------------------------------------------------------------------ parent ----

class Worker:
    def __init__(self, tree: str, overrides, script: str = "worker", extra=None):
        env = dict(os.environ, PYTHONPATH=os.path.abspath(tree), PYTHONDONTWRITEBYTECODE="1")
        spec = dict(overrides=list(overrides), **(extra or {}))
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--" + script, json.dumps(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
            cwd=os.path.abspath(tree))

    def read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker exited with {self.proc.wait()}")
        return json.loads(line)

    def ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.ask(do="quit")
            except (RuntimeError, BrokenPipeError, ValueError):
                pass
            self.proc.wait(timeout=60)


def _dataset(root: str, log) -> list:
    """Overrides pointing at a synthetic dataset (and a NODA pool of it) under ``root``,
    generated when missing."""
    import numpy as np

    from dali_pose import load_config
    from dali_pose.tools.build_pool import build_pool
    from dali_pose.tools.synthetic import generate

    ann = os.path.join(root, "annotations", "person_keypoints_train.json")
    if not os.path.exists(ann):
        log(f"generating the synthetic dataset under {root}")
        generate(root, num_train=200, num_val=4)
    data = [f"data.train_ann={ann}", f"data.train_images={os.path.join(root, 'images/train')}"]
    pool = os.path.join(root, "pool.npz")
    if not os.path.exists(pool):
        log("building a NODA pool of it")
        np.savez(pool, **build_pool(load_config(None, data), level="cardboard",
                                    verbose=False))
    return data + [f"noda.pool={pool}"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m dali_pose.tools.bench_trees",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--before", required=True, help="the old tree (a git worktree)")
    p.add_argument("--after", default=".", help="the new tree")
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--round-epochs", type=int, default=2,
                   help="whole training epochs per timed round (a round shorter than an "
                        "epoch would time one phase of the shuffle buffer)")
    p.add_argument("--epochs", default="0,1", help="epochs whose crops are compared")
    p.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "bench_trees_data"))
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE")
    args = p.parse_args(argv)
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    trees = {"before": args.before, "after": args.after}
    data = _dataset(args.data, log)
    names = [c for c in args.configs.split(",") if c]
    report = {"trees": {k: os.path.abspath(v) for k, v in trees.items()}, "configs": {}}

    log("dot test (5 epochs of 6 rotated crops)")
    tests = os.path.join(os.path.abspath(args.after), "tests")
    for t, tree in trees.items():
        w = Worker(tree, [], "dot", {"tests": tests})
        report.setdefault("dot", {})[t] = w.read()
        w.proc.wait()
    workers = {}
    try:
        for c in names:
            for t, tree in trees.items():
                log(f"building {t} / {c}")
                workers[t, c] = Worker(tree, data + ["loader.batch_size=32"] + CONFIGS[c]
                                       + args.overrides)
                workers[t, c].read()
        rounds = {k: [] for k in workers}
        for r in range(args.rounds):
            for c in names:
                for t in trees:
                    res = workers[t, c].ask(do="round", epochs=args.round_epochs)
                    rounds[t, c].append(res)
                    log(f"round {r + 1}/{args.rounds} {c:<8} {t:<6} "
                        f"{res['samples'] / res['seconds']:7.1f} crops/s  "
                        f"{1e3 * res['cpu_s'] / res['samples']:6.2f} CPU ms/crop")
        epochs = [int(e) for e in args.epochs.split(",") if e]
        for c in names:
            crops = {t: workers[t, c].ask(do="crops", epochs=epochs) for t in trees}
            a, b = crops["before"]["crops"], crops["after"]["crops"]
            common = set(a) & set(b)
            report["configs"][c] = {
                "rounds": {t: rounds[t, c] for t in trees},
                "crops_per_s": {t: statistics.median(x["samples"] / x["seconds"]
                                                     for x in rounds[t, c]) for t in trees},
                "cpu_ms_per_crop": {t: statistics.median(1e3 * x["cpu_s"] / x["samples"]
                                                         for x in rounds[t, c])
                                    for t in trees},
                "crops_compared": len(common),
                "crops_only_in_one": len(set(a) ^ set(b)),
                "crops_identical": sum(a[k] == b[k] for k in common),
                "same_image_pair_share": {t: crops[t]["same_image_pairs"]
                                          / max(1, crops[t]["pairs"]) for t in trees},
            }
    finally:
        for w in workers.values():
            w.close()
    d = report["dot"]
    print(f"dot test: before max {d['before']['max']:.4f} mean {d['before']['mean']:.4f} px "
          f"(n={d['before']['n']}); after max {d['after']['max']:.4f} mean "
          f"{d['after']['mean']:.4f} px (n={d['after']['n']})")
    print(f"{'config':<8} {'crops/s before':>15} {'after':>7} {'ratio':>6} "
          f"{'CPU ms/crop before':>19} {'after':>6} {'identical crops':>16} "
          f"{'same-photo pairs before':>24} {'after':>7}")
    for c, r in report["configs"].items():
        cb, ca = r["crops_per_s"]["before"], r["crops_per_s"]["after"]
        mb, ma = r["cpu_ms_per_crop"]["before"], r["cpu_ms_per_crop"]["after"]
        sb, sa = r["same_image_pair_share"]["before"], r["same_image_pair_share"]["after"]
        print(f"{c:<8} {cb:15.1f} {ca:7.1f} {ca / cb:5.2f}x {mb:19.2f} {ma:6.2f} "
              f"{r['crops_identical']:>7}/{r['crops_compared']:<8} {sb:24.4f} {sa:7.4f}")
    print(json.dumps(report["configs"] and {c: {k: v for k, v in r.items() if k != "rounds"}
                                            for c, r in report["configs"].items()}))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] in ("--worker", "--dot"):
        sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") !=
                       os.path.dirname(os.path.abspath(__file__))]
        (_worker if sys.argv[1] == "--worker" else _dot_worker)(json.loads(sys.argv[2]))
    else:
        sys.exit(main())
