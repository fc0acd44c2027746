"""Decoding each image once per epoch for all its people.

The plan (pure): every person once per epoch, disjoint equal shards, exact ``len()``,
batches mixed by the shuffle buffer. The loader: dots land where the loader says on the
per-image path (unrotated and rotated crops; float32 and uint8), the
crops are bit for bit those of per-person decoding, validation yields every instance once.
"""
import itertools

import cv2
import numpy as np
import pytest
import torch

from dali_pose import build_loader, load_config
from dali_pose.datasets import COCO, PoseIndex
from dali_pose.loader.plan import image_epoch, runs_needed

from test_loader import BLOB_SIGMA, dot_errors  # the dots are drawn alike

pytest.importorskip("nvidia.dali")

JOINTS = ((0, (0, -50)), (9, (-40, 20)), (16, (35, 60)))  # (joint, offset from the centre)


def crowd_dataset(tmp_path, people=(3, 2, 1, 3, 2)):
    """Black PNGs, image i holding people[i] people 130 px apart, each a Gaussian dot at 3
    labelled joints: one dataset row per person, rows of an image consecutive."""
    rng = np.random.default_rng(0)
    k = COCO.num_joints
    yy, xx = np.mgrid[0:360, 0:560]
    rows = {"paths": [], "centers": [], "kps": [], "image_id": []}
    for i, n in enumerate(people):
        img = np.zeros((360, 560), np.float64)
        path = tmp_path / f"crowd{i}.png"
        for p in range(n):
            c = np.array([140.0 + 130.0 * p + rng.uniform(-5, 5), 180.0 + rng.uniform(-10, 10)])
            kps = np.zeros((k, 3), np.float32)
            for j, (dx, dy) in JOINTS:
                x, y = c[0] + dx + rng.uniform(-0.5, 0.5), c[1] + dy + rng.uniform(-0.5, 0.5)
                kps[j] = [x, y, 2]
                img += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * BLOB_SIGMA ** 2))
            rows["paths"].append(str(path))
            rows["centers"].append(c)
            rows["kps"].append(kps)
            rows["image_id"].append(i)
        img8 = np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)
        cv2.imwrite(str(path), np.dstack([img8] * 3))
    n = len(rows["paths"])
    return PoseIndex(info=COCO, image_paths=np.array(rows["paths"], dtype=object),
                     center=np.array(rows["centers"]),
                     scale=np.tile([[150.0 * 0.75, 150.0]], (n, 1)),
                     keypoints=np.array(rows["kps"]), area=np.ones(n, np.float32),
                     image_id=np.array(rows["image_id"]), instance_id=np.arange(n) + 100,
                     score=np.ones(n, np.float32))


# ------------------------------------------------------------------------ the plan ----

def coco_like_groups(rng, n_images):
    """Rows per image with COCO train's spread (mean ~2.65 people, up to 13)."""
    sizes = np.minimum(1 + rng.geometric(0.6, n_images) - 1 + rng.poisson(0.98, n_images), 13)
    start = np.concatenate([[0], np.cumsum(sizes)])
    return [np.arange(start[i], start[i + 1]) for i in range(n_images)]


@pytest.mark.parametrize("shards,drop_last", [(1, True), (3, True), (3, False), (4, False)])
def test_train_plan_every_person_once_disjoint_equal(shards, drop_last):
    groups = coco_like_groups(np.random.default_rng(1), 300)
    n = int(sum(len(g) for g in groups))
    plans = [image_epoch(groups, 16, train=True, seed=3, epoch=2, shard_id=s,
                         num_shards=shards, drop_last=drop_last, buffer=64)
             for s in range(shards)]
    counts = np.zeros(n, np.int64)
    for plan in plans:
        assert len(plan.batches) == len(plans[0].batches) > 0  # every rank steps together
        rows = np.concatenate([plan.batch_rows(b) for b in range(len(plan.batches))])
        assert all(len(b) == 16 for b in plan.batches)
        counts[rows] += 1
        # reads: whole images; a crop is used at most once from its read
        items = np.concatenate(plan.batches)
        assert len({tuple(i) for i in items.tolist()}) == len(items)
        images = {tuple(g) for g in groups}
        assert all(tuple(d) in images for d in plan.reads)
    if drop_last:
        assert counts.max() == 1  # nobody twice
        # dropped: under one batch per rank, plus the dealing's imbalance (< one image)
        assert (counts == 0).sum() < shards * (16 + 13)
    else:
        assert counts.min() >= 1 and counts.max() <= 2  # everybody; a few again to fill
    # a pure function of (seed, epoch, shard)
    again = image_epoch(groups, 16, train=True, seed=3, epoch=2, shard_id=0,
                        num_shards=shards, drop_last=drop_last, buffer=64)
    assert all(np.array_equal(a, b) for a, b in zip(again.batches, plans[0].batches))
    other = image_epoch(groups, 16, train=True, seed=3, epoch=3, shard_id=0,
                        num_shards=shards, drop_last=drop_last, buffer=64)
    assert not np.array_equal(other.batch_rows(0), plans[0].batch_rows(0))


def test_train_plan_shards_hold_disjoint_images():
    groups = coco_like_groups(np.random.default_rng(2), 200)
    seen = {}
    for s in range(3):
        plan = image_epoch(groups, 8, train=True, seed=0, epoch=0, shard_id=s, num_shards=3)
        for d in plan.reads:
            assert seen.setdefault(int(d[0]), s) == s


@pytest.mark.parametrize("shards", [1, 2, 3])
def test_val_plan_every_instance_exactly_once(shards):
    groups = coco_like_groups(np.random.default_rng(3), 41)
    n = int(sum(len(g) for g in groups))
    got = []
    for s in range(shards):
        plan = image_epoch(groups, 8, train=False, seed=0, epoch=0, shard_id=s,
                           num_shards=shards)
        for b in range(len(plan.batches)):
            got.extend(plan.batch_rows(b)[:plan.valid[b]].tolist())
    assert sorted(got) == list(range(n))


def same_image_pair_share(plan, image_of):
    """Share of the pairs of crops within a batch that come from one image."""
    same = total = 0
    for b in range(len(plan.batches)):
        img = image_of[plan.batch_rows(b)]
        _, c = np.unique(img, return_counts=True)
        same += int((c * (c - 1) // 2).sum())
        total += len(img) * (len(img) - 1) // 2
    return same / total


def test_shuffle_buffer_mixes_batches():
    """With COCO's people per image, batch 32 and the default buffer of 512 crops, about 1
    pair in 400 of a batch shares an image (measured 24 in 10^4: ~1.2 of a batch's 496
    pairs; a plain shuffle of these 4,000 images: 2 in 10^4); a buffer of one batch makes a
    batch of a few photos' people."""
    groups = coco_like_groups(np.random.default_rng(4), 4000)
    image_of = np.concatenate([np.full(len(g), i) for i, g in enumerate(groups)])
    mixed = same_image_pair_share(image_epoch(groups, 32, train=True, seed=0, epoch=0,
                                              buffer=512), image_of)
    clumped = same_image_pair_share(image_epoch(groups, 32, train=True, seed=0, epoch=0,
                                                buffer=32), image_of)
    sizes = np.array([len(g) for g in groups])
    plain = float((sizes * (sizes - 1)).sum()) / (sizes.sum() * (sizes.sum() - 1))
    assert plain < 1e-3
    # at most the share of a random sample of the buffer's size, (E[n^2]/E[n] - 1) / 512:
    # a crop's image-mates enter the buffer with it, and some leave before it is drawn
    sample = float((sizes ** 2).sum() / sizes.sum() - 1) / 512
    assert 0.25 * sample < mixed < sample, (mixed, sample)
    assert clumped > 5 * mixed


def crops_held(plan, run_size):
    """The most crops read and not yet handed out in a batch, when each batch is handed
    out as soon as the runs of ``run_size`` reads holding its crops are done."""
    sizes = np.array([len(d) for d in plan.reads], np.int64)
    per_run = np.add.reduceat(sizes, np.arange(0, len(sizes), run_size))
    held = peak = done = 0
    for b, need in enumerate(runs_needed(plan, run_size)):
        while done < need:
            held += int(per_run[done])
            done += 1
        peak = max(peak, held)
        held -= plan.valid[b]
    return peak


def test_runs_cover_the_plan_and_bound_memory():
    groups = coco_like_groups(np.random.default_rng(5), 120)
    plan = image_epoch(groups, 8, train=True, seed=0, epoch=0, buffer=40)
    need = runs_needed(plan, 8)
    assert (np.diff(need) >= 0).all()
    for b in range(len(plan.batches)):  # a batch's reads are in its runs
        assert plan.batches[b][:, 0].max() < need[b] * 8
    # the buffer, plus the crops of the run that tops it up (<= 8 images of <= 13 people)
    assert 40 <= crops_held(plan, 8) <= 40 + 8 * 13 + 8


# ---------------------------------------------------------------------- the loader ----

@pytest.mark.parametrize("rot_prob,dtype", [(0, "float32"), (1, "float32"), (1, "uint8")])
def test_dot_lands_where_the_loader_says_per_image(tmp_path, rot_prob, dtype):
    """Per-image decoding: a keypoint drawn as a dot appears in the crop within 0.05 px of
    the reported keypoint (unrotated and rotated crops), crops cut from one decode of the
    union of their windows."""
    index = crowd_dataset(tmp_path)
    cfg = load_config(None, ["loader.batch_size=4", f"aug.rot_prob={rot_prob}",
                             "aug.half_body_prob=0", f"loader.image_dtype={dtype}",
                             "loader.shuffle_buffer=4"])
    loader = build_loader(cfg, "train", index=index)
    assert max(len(d) for d in loader._plan().reads) == 3
    errs, _ = dot_errors(loader, epochs=3)
    assert len(errs) > 40
    # uint8 rounds each intensity to an integer: a centroid moves by < 0.02 px
    assert max(errs) < 0.05, max(errs)


def _crops_by_row(cfg, index, epochs=(0, 1)):
    loader = build_loader(cfg, "train", index=index)
    out = {}
    for epoch in epochs:
        loader.set_epoch(epoch)
        for batch in loader:
            for i, r in enumerate(batch["row"].tolist()):
                out[(epoch, r)] = {k: batch[k][i] for k in ("image", "heatmap", "keypoints",
                                                             "matrix", "target_weight",
                                                             "flipped", "occluded")}
    return out


def alone(index, tmp_path):
    """``index`` with each person's image a file of its own (a copy): one person per decode."""
    import dataclasses
    import shutil

    paths = []
    for r, p in enumerate(index.image_paths):
        copy = tmp_path / f"alone{r}.png"
        shutil.copyfile(p, copy)
        paths.append(str(copy))
    return dataclasses.replace(index, image_paths=np.array(paths, dtype=object))


@pytest.mark.parametrize("dtype", ["float32", "uint8"])
def test_crops_identical_with_and_without_per_image(tmp_path, dtype):
    """The same seed and epoch give the same crop of a person, bit for bit, whether its
    image is decoded for it alone or once for all its people (rotation, flip, AID)."""
    index = crowd_dataset(tmp_path)
    base = ["loader.batch_size=3", "aug.rot_prob=0.5", "occlusion.method=aid",
            "occlusion.prob=0.5", "loader.drop_last=false", f"loader.image_dtype={dtype}"]
    per_image = _crops_by_row(load_config(None, base), index)
    per_person = _crops_by_row(load_config(None, base), alone(index, tmp_path))
    assert set(per_image) == set(per_person) == set(itertools.product((0, 1), range(11)))
    for key, a in per_image.items():
        for name, t in a.items():
            assert torch.equal(t, per_person[key][name]), (key, name)


@pytest.mark.parametrize("shards", [1, 2])
def test_loader_val_every_instance_once_and_train_every_person(tmp_path, shards):
    index = crowd_dataset(tmp_path)
    cfg = load_config(None, ["loader.batch_size=4", "loader.pipelines=2"])
    ids = []
    for s in range(shards):
        loader = build_loader(cfg, "val", index=index, shard_id=s, num_shards=shards)
        batches = list(loader)
        assert len(batches) == len(loader)
        for b in batches:
            ids += b["instance_id"][b["valid"]].tolist()  # padding rows repeat a real one
            # validation crops: the annotated box, unaugmented
            np.testing.assert_allclose(b["center"].numpy(),
                                       index.center[b["row"].numpy()], rtol=1e-6)
    assert sorted(ids) == list(range(100, 111))
    rows, steps = [], []
    for s in range(shards):
        loader = build_loader(load_config(None, ["loader.batch_size=2"]), "train",
                              index=index, shard_id=s, num_shards=shards)
        batches = list(loader)
        steps.append(len(batches))
        assert len(batches) == len(loader) and all(len(b["row"]) == 2 for b in batches)
        rows += [r for b in batches for r in b["row"].tolist()]
    assert len(set(steps)) == 1 and len(rows) == len(set(rows))  # disjoint, in step
    # images go to the rank with the fewest people so far, so the ranks' loads differ by at
    # most the largest image (3); each rank makes min(load) // batch whole batches of 2
    min_load = (11 - 3 * (shards - 1)) // shards
    assert len(rows) >= shards * 2 * (min_load // 2)  # 10 of 11 at one shard, 8 at two


def test_each_crop_goes_straight_to_its_batch(tmp_path, monkeypatch):
    """Per image, a run's crops are copied to the batches the plan puts them in: every
    batch complete when handed out, and no more crops held than the plan needs."""
    index = crowd_dataset(tmp_path, people=(3, 2, 1, 3, 2, 4, 1, 2))
    cfg = load_config(None, ["loader.batch_size=3", "loader.shuffle_buffer=4",
                             "loader.drop_last=false"])
    import dali_pose.loader.iterator as iterator

    made = []

    class Recorded(iterator.Batches):  # the epoch's batches being filled, to look into
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self)

    monkeypatch.setattr(iterator, "Batches", Recorded)
    loader = build_loader(cfg, "train", index=index)
    plan = loader._plan()  # epoch 0's (iterating moves the loader on to epoch 1)
    batches = list(loader)
    for b, batch in enumerate(batches):
        np.testing.assert_array_equal(batch["row"].numpy(), plan.batch_rows(b)[:plan.valid[b]])
    assert made[-1].held == 0 and not made[-1].filling
    assert made[-1].peak == crops_held(plan, 3) > 3
    it = iter(loader)  # an epoch abandoned after one batch frees what it was filling
    next(it)
    assert made[-1].filling
    it.close()
    assert not made[-1].filling


def test_skipped_image_drops_all_its_people(tmp_path):
    index = crowd_dataset(tmp_path)
    (tmp_path / "crowd0.png").write_bytes(b"not an image")
    cfg = load_config(None, ["loader.batch_size=4", "data.on_bad_image=skip"])
    loader = build_loader(cfg, "val", index=index, log=None)
    ids = [i for b in loader for i in b["instance_id"][b["valid"]].tolist()]
    assert sorted(ids) == list(range(103, 111))  # image 0 held instances 100..102
    assert list(loader.skipped_images) == [str(tmp_path / "crowd0.png")]
