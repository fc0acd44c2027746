"""The benchmark's smoke mode, and the reference loader as a second implementation."""
import json
import math

import numpy as np
import pytest
import torch

from dali_pose import build_loader, load_config, load_index
from dali_pose.codecs import build_codec
from dali_pose.normalize import IMAGENET_MEAN, IMAGENET_STD
from dali_pose.tools.reference import (ReferenceDataset, build_reference_loader, combined_targets,
                                 gaussian_heatmaps)
from dali_pose.tools.synthetic import generate

pytest.importorskip("nvidia.dali")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A rendered COCO-format dataset of a few images, and the overrides that select it."""
    p = generate(str(tmp_path_factory.mktemp("synth")), seed=0, num_train=6, num_val=3)
    return [f"data.{k}={p[k]}" for k in ("train_ann", "train_images", "val_ann",
                                          "val_images")]


# ---------------------------------------------------------------------- smoke ------

def test_smoke_run_writes_report(tiny, tmp_path, capsys):
    from dali_pose.tools.bench import main

    out = tmp_path / "bench.json"
    args = ["--smoke", "--quiet", "--json", str(out), "--epochs-memory", "2",
            "--backends", "dali-gpu,dali-cpu,dali-cpu-oracle,reference", "--kernels",
            "--set", "loader.image_dtype=uint8"]
    for o in tiny:
        args += ["--set", o]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "samples/s" in text and "reference" in text and "dali-cpu" in text
    rep = json.loads(out.read_text())  # strict JSON: no NaN
    meta = rep["meta"]
    assert meta["smoke"] and meta["batch_size"] == 4 and meta["cores"] >= 1
    assert {"load_before", "load_after", "peak_rss_mb", "config_resolved"} <= set(meta)
    be = rep["backends"]
    assert set(be) == {"dali-gpu", "dali-cpu", "dali-cpu-oracle", "reference"}
    assert meta["image_dtype"] == "uint8"
    if not torch.cuda.is_available():
        assert be["dali-gpu"]["status"] == "skipped" and "CUDA" in be["dali-gpu"]["reason"]
    for name in ("dali-cpu", "dali-cpu-oracle", "reference"):
        r = be[name]
        assert r["status"] == "ok"
        assert r["median_samples_per_s"] > 0 and r["ratio_to_reference"] > 0
        assert r["cpu_cores"] > 0 and r["cpu_ms_per_sample"] > 0
        assert r["memory"]["main_rss_mb"] > 0
        assert len(r["rounds"]) == meta["rounds"]
        assert all(x["samples"] == 3 * 4 for x in r["rounds"])
        mem = rep["epochs_memory"][name]
        assert len(mem["epochs"]) == 2 and "main_rss_mb" in mem["growth_first_to_last_mb"]
    assert be["reference"]["ratio_to_reference"] == pytest.approx(1.0)
    assert be["reference"]["memory"]["workers"] == meta["threads"]
    stages = be["reference"]["stages"]["ms_per_sample"]
    assert all(stages[s] > 0 for s in ("read", "warp", "targets"))
    k = rep["kernels"]
    assert k["batch"] == 8 and "kernels (ms per batch of 8" in text
    assert sum(v["samples"] for v in k["warp"].values()) == 8
    for v in list(k["warp"].values()) + [k["targets"], k["occlusion"]]:
        assert v["speedup"] > 0 and math.isfinite(v["speedup"])
    assert k["occlusion"]["method"] == "aid"  # the config has none: AID is timed


def test_smoke_stage_breakdown(tiny, tmp_path):
    """The DALI graph's prefixes still build and run (they mirror pipeline.build_graph)."""
    from dali_pose.tools.bench import DALI_STAGES, main

    out = tmp_path / "bench.json"
    args = ["--smoke", "--quiet", "--stages", "--rounds", "1", "--json", str(out),
            "--backends", "dali-cpu"]
    for o in tiny:
        args += ["--set", o]
    assert main(args) == 0
    be = json.loads(out.read_text())["backends"]
    st = be["dali-cpu"]["stages"]
    assert list(st["stages"]) == list(DALI_STAGES)
    assert "full decode" in st["prefixes"] and st["warp"] == "warp"
    assert all(p["samples_per_s"] > 0 for p in st["prefixes"].values())
    # the synthetic scenes hold several people: more than one per decoded image
    assert st["people_per_read"] > 1.0


@pytest.mark.gpu
def test_smoke_gpu_and_train_step(tiny, tmp_path):
    from dali_pose.tools.bench import main

    out = tmp_path / "bench.json"
    args = ["--smoke", "--quiet", "--json", str(out), "--backends", "dali-gpu,reference",
            "--train-step", "--train-iters", "2"]
    for o in tiny:
        args += ["--set", o]
    assert main(args) == 0
    rep = json.loads(out.read_text())
    assert rep["backends"]["dali-gpu"]["status"] == "ok"
    assert rep["train_step"]["median_samples_per_s"] > 0
    assert "dali-gpu" in rep["train_step"]["loader_over_training"]


# ----------------------------------------------------- reference == DALI (CPU) ------

def assert_crops_close(diffs):
    """|reference - DALI| crop values in intensity levels. OpenCV rounds its crop to uint8
    (<= 0.5 levels); the kernel rounds positions to 1/32 px (OpenCV 5 does not): <= 1/64 px
    per axis, i.e. <= 255/32 levels at a black/white edge, rarely more than one level."""
    assert diffs.max() <= 0.5 + 255 / 32 + 1e-3, diffs.max()
    assert (diffs > 1.0).mean() < 0.01, (diffs > 1.0).mean()  # measured 0.005
    assert diffs.mean() < 0.3, diffs.mean()  # measured 0.245


def test_reference_matches_dali_cpu_on_validation(tiny):
    """Validation applies no randomness: same matrices, keypoints, targets; crops equal
    within the reference's uint8 rounding and the 1/32-px position rounding."""
    cfg = load_config(None, tiny + ["loader.batch_size=4"])
    index = load_index(cfg, "val")
    ref = list(build_reference_loader(cfg, "val", num_workers=0, index=index))
    dali = list(build_loader(cfg, "val", device="cpu", index=index))
    assert len(ref) == len(dali) and len(ref) > 0
    mean = np.array(IMAGENET_MEAN)[:, None, None]
    std = np.array(IMAGENET_STD)[:, None, None]
    diffs = []
    for r, d in zip(ref, dali):
        # the DALI loader pads its last validation batch (rows marked in ``valid``); the
        # classic loader's is short
        d = {k: v[d["valid"]] for k, v in d.items() if k != "valid"}
        assert set(r) == set(d)
        for key in ("image_id", "instance_id", "flipped", "target_weight"):
            assert torch.equal(r[key], d[key]), key
        for key in ("matrix", "center", "scale", "keypoints", "occluded"):
            np.testing.assert_allclose(r[key].numpy(), d[key].numpy(), rtol=1e-6, atol=1e-4,
                                       err_msg=key)
        np.testing.assert_allclose(r["heatmap"].numpy(), d["heatmap"].numpy(), rtol=0,
                                   atol=1e-5)
        for key in ("image", "image_flipped"):
            a = (r[key].numpy() * std + mean) * 255.0
            b = (d[key].numpy() * std + mean) * 255.0
            diffs.append(np.abs(a - b).ravel())
    diffs = np.concatenate(diffs)
    assert_crops_close(diffs)


@pytest.mark.parametrize("target", ["gaussian", "combined"])
def test_numpy_targets_match_the_numba_kernel(target):
    cfg = load_config(None, [f"model.target={target}"])
    k = 17
    t = build_codec(cfg.model).target_op(k)
    rng = np.random.default_rng(3)
    w_in, h_in = cfg.model.input_size
    for trial in range(40):
        kps = np.zeros((k, 3), np.float32)
        kps[:, 0] = rng.uniform(-20, w_in + 20, k)
        kps[:, 1] = rng.uniform(-20, h_in + 20, k)
        kps[:, 2] = rng.integers(0, 3, k)
        kps[0, :2] = (-0.5 * 191 / 47 + 1e-3, 0.0)  # just on the map
        kps[1, :2] = (0.0, h_in - 1 + 0.49 * 255 / 63)
        kps[2, :2] = (np.nan, 10.0)
        if target == "gaussian":
            hm, wt = gaussian_heatmaps(kps, cfg.model.input_size, cfg.model.heatmap_size,
                                       cfg.model.sigma)
        else:
            hm, wt = combined_targets(kps, cfg.model.input_size, cfg.model.heatmap_size)
        hm_k = np.full((1, t.channels, t.hm_size[1], t.hm_size[0]), np.nan, np.float32)
        wt_k = np.full((1, k), np.nan, np.float32)
        t.cpu_kernel(hm_k, wt_k, kps[None], np.zeros((1, 4), np.float32))
        np.testing.assert_array_equal(wt, wt_k[0])
        np.testing.assert_allclose(hm, hm_k[0], rtol=0, atol=1e-6)


def test_reference_matches_dali_cpu_on_training(tiny):
    """Both loaders draw every random number from (seed, epoch, row) (dali_pose.draws): the
    same augmented geometry, flips, targets and AID discs, sample by sample; crops equal up
    to OpenCV's 1/32-px positions and uint8 rounding."""
    cfg = load_config(None, tiny + ["loader.batch_size=4", "aug.rot_prob=0.5",
                                    "occlusion.method=aid", "occlusion.prob=0.5",
                                    "loader.drop_last=false"])
    index = load_index(cfg, "train")
    ref = build_reference_loader(cfg, "train", num_workers=0, index=index)
    dali = build_loader(cfg, "train", device="cpu", index=index)
    diffs = []

    def by_row(loader):  # the loaders batch people in different orders (per-image decoding)
        return {int(row): {k: v[i:i + 1] for k, v in batch.items() if k != "stage_s"}
                for batch in loader for i, row in enumerate(batch["row"].tolist())}

    for epoch in (0, 3):
        ref.set_epoch(epoch)
        dali.set_epoch(epoch)
        ref_rows, dali_rows = by_row(ref), by_row(dali)
        assert set(ref_rows) == set(dali_rows) == set(range(len(index)))
        for row, r in ref_rows.items():
            d = dali_rows[row]
            for key in ("instance_id", "flipped", "target_weight"):
                assert torch.equal(r[key], d[key]), key
            for key in ("matrix", "center", "scale", "keypoints"):
                np.testing.assert_allclose(r[key].numpy(), d[key].numpy(), rtol=1e-6,
                                           atol=1e-4, err_msg=key)
            np.testing.assert_allclose(r["heatmap"].numpy(), d["heatmap"].numpy(), rtol=0,
                                       atol=1e-5)
            std = np.array(IMAGENET_STD)[:, None, None]
            diffs.append(np.abs(r["image"].numpy() - d["image"].numpy()) * std * 255.0)
    assert_crops_close(np.concatenate([x.ravel() for x in diffs]))  # AID discs identical


def test_reference_training_batches_do_not_depend_on_workers(tiny):
    cfg = load_config(None, tiny + ["loader.batch_size=4"])
    index = load_index(cfg, "train")
    a = next(iter(build_reference_loader(cfg, "train", num_workers=0, index=index)))
    loader = build_reference_loader(cfg, "train", num_workers=2, index=index)
    b = next(iter(loader))
    for key in ("image", "heatmap", "keypoints", "matrix", "flipped", "instance_id"):
        assert torch.equal(a[key], b[key]), key
    loader.set_epoch(1)
    c = next(iter(loader))
    assert not torch.equal(b["matrix"], c["matrix"])
    assert b["image"].shape == (4, 3, 256, 192) and b["heatmap"].shape == (4, 17, 64, 48)


def test_reference_augmentation_draws_follow_the_config(tiny):
    """flip_prob=1 flips every crop; flip_prob=0 none; rotations appear with rot_prob=1."""
    index = load_index(load_config(None, tiny), "train")
    for flip, rot in ((1.0, 1.0), (0.0, 0.0)):
        cfg = load_config(None, tiny + [f"aug.flip_prob={flip}", f"aug.rot_prob={rot}"])
        ds = ReferenceDataset(cfg, index, train=True)
        samples = [ds[(0, i)] for i in range(len(ds))]
        assert all(s["flipped"] == bool(flip) for s in samples)
        angles = [math.degrees(math.atan2(s["matrix"][1, 0], abs(s["matrix"][0, 0])))
                  for s in samples]
        assert (max(abs(a) for a in angles) > 1.0) == bool(rot)


def test_hrnet_w32_topology():
    from dali_pose.models.hrnet import hrnet_w32

    model = hrnet_w32(17)
    n = sum(p.numel() for p in model.parameters())
    assert 28.0e6 < n < 29.0e6, n  # HRNet-W32 (pose, 17 joints): 28.5 M
    with torch.no_grad():
        y = model(torch.zeros(1, 3, 128, 96))
    assert y.shape == (1, 17, 32, 24)
