"""AID and NODA inside the DALI training pipeline, on a tiny synthetic dataset."""
import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("nvidia.dali")
from dali_pose import build_loader, load_config  # noqa: E402
from dali_pose.normalize import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from dali_pose.tools.build_pool import build_pool  # noqa: E402
from dali_pose.tools.synthetic import generate  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("occ")
    generate(str(d), seed=3, num_train=6, num_val=1)
    return d


def _cfg(d, extra):
    return load_config(None, [
        f"data.train_ann={d}/annotations/person_keypoints_train.json",
        f"data.train_images={d}/images/train", "loader.batch_size=8", *extra])


def _black_pixels(image):
    black = torch.tensor([(0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])
    return (image - black[None, :, None, None]).abs().amax(dim=1) < 1e-5


@pytest.fixture(scope="module")
def pool_path(data, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("pool") / "pool.npz")
    np.savez(path, **build_pool(_cfg(data, []), level="cardboard", verbose=False))
    return path


# The information-dropping kernel runs fused into the CPU warp, or as its own operator after
# NODA's paste: NODA in the graph (noda.prob > 0) but gated off until an epoch never reached
# (noda.start_epoch) makes the graph run the separate dropping operator on the CPU while
# nothing is pasted.
@pytest.mark.parametrize("where", ["fused", "separate"])
def test_aid_blacks_out_discs_and_keeps_targets(data, pool_path, where):
    base = ["aug.rot_prob=0", "aug.flip_prob=0", "aug.scale_factor=0",
            "aug.half_body_prob=0"]
    if where == "separate":
        base += ["noda.prob=1", "noda.start_epoch=1000", f"noda.pool={pool_path}"]
    plain = next(iter(build_loader(_cfg(data, base), "train")))
    loader = build_loader(_cfg(data, base + ["occlusion.method=aid", "occlusion.prob=1"]),
                          "train")
    assert loader.spec.dropping is not None
    assert loader.spec.dropping_fused == (where == "fused")  # the op under test
    assert (loader.spec.warp.num_draws > 0) == (where == "fused")
    aid = next(iter(loader))
    assert torch.equal(plain["instance_id"], aid["instance_id"])
    torch.testing.assert_close(aid["heatmap"], plain["heatmap"], rtol=0, atol=0)
    torch.testing.assert_close(aid["keypoints"], plain["keypoints"], rtol=0, atol=0)
    changed = (aid["image"] != plain["image"]).any(dim=1)
    assert changed.flatten(1).any(dim=1).all()  # every crop got an occluder
    assert _black_pixels(aid["image"])[changed].all()  # and only black was written
    # exactly one disc per crop (AID: occlusion.num = 1, radius in [0.1, 0.2] of the crop
    # width): one connected region, no larger than the largest disc up to pixelation
    w = 192
    for m in changed.numpy().astype(np.uint8):
        assert cv2.connectedComponents(m, connectivity=8)[0] == 2  # background + one disc
    area = changed.flatten(1).sum(dim=1).float()
    assert (area <= np.pi * (0.2 * w + 1) ** 2).all()
    # a disc is centred on a labelled joint inside the crop, so at least a quarter of the
    # smallest one is inside (less only where it overlaps the black fill off the image)
    assert (area >= np.pi * (0.1 * w - 1) ** 2 / 4).all(), area


def test_noda_pastes_people_and_reports_covered_joints(data, pool_path):
    cfg = _cfg(data, ["noda.prob=1", f"noda.pool={pool_path}", "loader.pipelines=2"])
    loader = build_loader(cfg, "train")
    pools = [lane[1] for lane in loader._lanes]
    assert len(pools) == 2 and pools[0]._rgba is pools[1]._rgba  # one copy for all lanes
    occluded = []
    for batch in loader:
        occ = batch["occluded"]
        occluded.append(occ)
        assert set(torch.unique(occ).tolist()) <= {0.0, 1.0}
        # covered joints stay supervised
        labelled = batch["keypoints"][..., 2] > 0
        covered = (occ > 0) & labelled
        assert (batch["target_weight"][covered] == 1).all()
    occ = torch.cat(occluded)
    assert occ.sum() > 0
    # COCO head joints (nose, eyes, ears) are never covered
    assert occ[:, :5].sum() == 0


def test_pool_source_is_deterministic_and_never_pastes_the_person_itself(data, tmp_path):
    from dali_pose.datasets import load_index
    from dali_pose.loader import image_epoch, image_groups
    from dali_pose.loader.plan import runs
    from dali_pose.loader.pool import load_pool
    from dali_pose.loader.sources import BatchSource, PoolSource

    cfg = _cfg(data, [])
    pool_path = str(tmp_path / "pool.npz")
    np.savez(pool_path, **build_pool(cfg, level="box", verbose=False))
    pool = load_pool(pool_path)
    index = load_index(cfg, "train")
    main = BatchSource(index, train=True, seed=0)
    plan = image_epoch(image_groups(index.image_paths), 4, train=True, seed=0, epoch=5)
    main.start(runs(plan, 4), 5)  # runs of reads, each an image and its people
    a, b = PoolSource(main, pool), PoolSource(main, pool)
    for run in main.runs:
        rgba, boxes = a()
        assert len(rgba) == len(run)
        for decode, r, bx in zip(run, rgba, boxes):  # one pool person per person
            pick = a.picks(decode)
            np.testing.assert_array_equal(pick, b.picks(decode))
            same = (pool.image_id[pick] == index.image_id[decode]) & \
                (pool.instance_id[pick] == index.instance_id[decode])
            assert not same.any() and len(pick) == len(decode)
            for p, i in enumerate(pick):
                crop, _, box = pool.get(int(i))
                h, w = crop.shape[:2]
                np.testing.assert_array_equal(r[p, :h, :w], crop)
                assert not r[p, h:].any() and not r[p, :, w:].any()  # zero canvas around
                np.testing.assert_array_equal(bx[p, :4], box)
                np.testing.assert_array_equal(bx[p, 4:], [h, w])
    with pytest.raises(StopIteration):
        a()


def _occluded_share(loader, plain, epoch):
    """Share of the epoch's crops that differ from the unoccluded loader's (same draws)."""
    loader.set_epoch(epoch)
    plain.set_epoch(epoch)
    changed = []
    for a, b in zip(loader, plain):
        assert torch.equal(a["instance_id"], b["instance_id"])
        changed.append((a["image"] != b["image"]).flatten(1).any(dim=1))
    return torch.cat(changed).float().mean().item()


def test_occlusion_schedule_is_data_no_recompile_no_rebuild(data, monkeypatch):
    """occlusion.start_epoch and set_prob change the share of occluded crops between epochs
    of one loader (same pipelines); configs differing only in what no operator uses
    (out_dir, train.epochs, occlusion.prob) compile no new operator."""
    import dali_pose.loader.graph as graph
    import dali_pose.loader.iterator as iterator

    base = ["aug.rot_prob=0", "occlusion.method=aid", "occlusion.prob=1"]
    plain = build_loader(_cfg(data, base[:1]), "train")
    built = []

    class Counting(graph.NumbaFunction):
        def __init__(self, *a, **k):
            built.append(k["run_fn"].__name__)
            super().__init__(*a, **k)

    monkeypatch.setattr(graph, "NumbaFunction", Counting)
    loader = build_loader(_cfg(data, base + ["occlusion.start_epoch=1"]), "train")
    n_built = len(built)
    assert n_built <= 1  # at most the warp with AID fused in: crop and targets are plain's
    pipelines = []
    monkeypatch.setattr(iterator, "make_pipeline",
                        lambda *a, **k: pipelines.append(1) or graph.make_pipeline(*a, **k))
    assert _occluded_share(loader, plain, 0) == 0.0
    assert _occluded_share(loader, plain, 1) == 1.0
    loader.set_prob(occlusion=0.0)
    assert _occluded_share(loader, plain, 2) == 0.0
    loader.set_prob(occlusion=0.5)
    share = _occluded_share(loader, plain, 3)
    assert 0.0 < share < 1.0
    assert not pipelines  # the epochs above ran on the pipelines built at first
    for extra in (["out_dir=elsewhere"], ["train.epochs=7"], ["occlusion.prob=0.3"]):
        build_loader(_cfg(data, base + extra), "train")
    assert len(built) == n_built, built
