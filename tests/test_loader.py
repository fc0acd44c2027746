"""The iterator's epoch/shard semantics, and the whole pipeline on small synthetic data."""
import cv2
import numpy as np
import pytest
import torch

from dali_pose import build_loader, load_config
from dali_pose.datasets import COCO, DatasetError, PoseIndex
from dali_pose.loader import PoseLoader, image_epoch, image_groups
from dali_pose.normalize import IMAGENET_MEAN, IMAGENET_STD, normalize_images

pytest.importorskip("nvidia.dali")


# ---------------------------------------------------------------- plan (pure) ----
def epoch_schedule(n, b, **kw):
    """The plan of ``n`` one-person images: (batches of rows, valid counts)."""
    plan = image_epoch([np.array([i]) for i in range(n)], b, **kw)
    return [plan.batch_rows(k) for k in range(len(plan.batches))], list(plan.valid)


@pytest.mark.parametrize("n,b,shards", [(10, 3, 1), (10, 3, 3), (7, 4, 2), (1, 4, 1),
                                        (32, 8, 4)])
def test_validation_yields_every_instance_once(n, b, shards):
    seen = []
    for r in range(shards):
        batches, valid = epoch_schedule(n, b, train=False, seed=0, epoch=0, shard_id=r,
                                        num_shards=shards)
        assert all(len(x) == b for x in batches)
        seen += [int(i) for x, v in zip(batches, valid) for i in x[:v]]
    assert sorted(seen) == list(range(n))


@pytest.mark.parametrize("drop_last", [True, False])
def test_training_shards_disjoint_and_equal(drop_last):
    n, b, shards = 103, 8, 4
    per = []
    for r in range(shards):
        batches, valid = epoch_schedule(n, b, train=True, seed=1, epoch=2, shard_id=r,
                                        num_shards=shards, drop_last=drop_last)
        assert valid == [b] * len(batches)
        per.append(np.concatenate(batches))
    assert len({len(p) for p in per}) == 1  # every rank the same number of batches
    if drop_last:
        assert len(per[0]) == (n // shards) // b * b
        allrows = np.concatenate(per)
        assert len(set(allrows.tolist())) == len(allrows)  # disjoint
    else:
        assert len(per[0]) == -(-(-(-n // shards)) // b) * b
        assert set(np.concatenate(per).tolist()) == set(range(n))  # nothing lost


def test_epochs_reshuffle_deterministically():
    a = epoch_schedule(50, 5, train=True, seed=0, epoch=0)[0]
    b = epoch_schedule(50, 5, train=True, seed=0, epoch=1)[0]
    c = epoch_schedule(50, 5, train=True, seed=0, epoch=1)[0]
    assert not np.array_equal(np.concatenate(a), np.concatenate(b))
    assert np.array_equal(np.concatenate(b), np.concatenate(c))


# ------------------------------------------------------------ pipeline on dots ----
BLOB_SIGMA = 2.0


def _dot_dataset(tmp_path, n_people=6):
    """Black PNG images with a Gaussian blob at each of 3 labelled joints per person."""
    rng = np.random.default_rng(0)
    k = COCO.num_joints
    paths, centers, scales, kps_all = [], [], [], []
    yy, xx = np.mgrid[0:360, 0:480]
    for p in range(n_people):
        kps = np.zeros((k, 3), np.float32)
        c = np.array([240.0 + rng.uniform(-20, 20), 180.0 + rng.uniform(-20, 20)])
        img = np.zeros((360, 480), np.float64)
        for j, (dx, dy) in zip((0, 9, 16), ((0, -50), (-40, 20), (35, 60))):
            x, y = c[0] + dx + rng.uniform(-0.5, 0.5), c[1] + dy + rng.uniform(-0.5, 0.5)
            kps[j] = [x, y, 2]
            img += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * BLOB_SIGMA ** 2))
        path = tmp_path / f"dots{p}.png"
        img8 = np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)
        cv2.imwrite(str(path), np.dstack([img8] * 3))
        paths.append(str(path))
        centers.append(c)
        scales.append([150.0 * 0.75, 150.0])
        kps_all.append(kps)
    n = n_people
    return PoseIndex(info=COCO, image_paths=np.array(paths, dtype=object),
                     center=np.array(centers), scale=np.array(scales),
                     keypoints=np.array(kps_all), area=np.ones(n, np.float32),
                     image_id=np.arange(n), instance_id=np.arange(n) + 100,
                     score=np.ones(n, np.float32))


def _centroid(gray, x, y, r):
    x0, y0 = int(round(x)) - r, int(round(y)) - r
    win = gray[y0:y0 + 2 * r + 1, x0:x0 + 2 * r + 1].astype(np.float64)
    ys, xs = np.mgrid[y0:y0 + 2 * r + 1, x0:x0 + 2 * r + 1]
    return (win * xs).sum() / win.sum(), (win * ys).sum() / win.sum()


def dot_errors(loader, epochs):
    """Per visible dot: max |centroid - reported keypoint| (crop px); and each crop's flip."""
    mean = np.array(IMAGENET_MEAN)[:, None, None]
    std = np.array(IMAGENET_STD)[:, None, None]
    errs, flips = [], []
    for _ in range(epochs):
        for batch in loader:
            image = normalize_images(batch["image"]).cpu().numpy()  # any loader.image_dtype
            imgs = (image * std + mean)[:, 0]  # red channel, 0..1
            for i in range(imgs.shape[0]):
                flips.append(bool(batch["flipped"][i]))
                k = batch["keypoints"][i].cpu().numpy()
                zoom = float(np.linalg.norm(batch["matrix"][i, 0, :2].cpu().numpy()))
                r = int(np.ceil(4 * BLOB_SIGMA * zoom))
                for j in np.nonzero(k[:, 2] > 0)[0]:
                    x, y = k[j, :2]
                    if r + 1 < x < 191 - r - 1 and r + 1 < y < 255 - r - 1:
                        cx, cy = _centroid(imgs[i], x, y, r)
                        errs.append(max(abs(cx - x), abs(cy - y)))
    return errs, flips


@pytest.mark.parametrize("warp", ["numba", "oracle"])
def test_dot_lands_where_the_loader_says(tmp_path, warp):
    """A keypoint drawn as a dot appears in the crop within 0.05 px of the reported
    keypoint, for random scale, rotation and flip (both warps: the loader's numba warp, and
    DALI's ``warp_affine`` as the oracle graph, one person per image)."""
    from dali_pose.loader.graph import build_graph
    from dali_pose.loader.oracle import oracle_graph

    index = _dot_dataset(tmp_path)
    cfg = load_config(None, ["loader.batch_size=6", "aug.rot_prob=1",
                             "aug.half_body_prob=0", "loader.num_threads=1"])
    loader = PoseLoader(cfg, "train", index, "cpu", 0, 1,
                        graph=oracle_graph if warp == "oracle" else build_graph)
    errs, flips = dot_errors(loader, epochs=3)
    assert len(errs) > 30 and any(flips) and not all(flips)
    # the centroid of a uint8 blob, warped: measured max 0.0128 (numba) and 0.0128 (oracle)
    # crop px over 34 dots; 3.9x margin
    assert max(errs) < 0.05, max(errs)


def test_flip_swaps_joints_and_mirrors(tmp_path):
    index = _dot_dataset(tmp_path, 2)
    base = ["loader.batch_size=2", "aug.rot_prob=0", "aug.scale_factor=0",
            "aug.half_body_prob=0"]
    b0 = next(iter(build_loader(load_config(None, base + ["aug.flip_prob=0"]), "train",
                                index=index)))
    b1 = next(iter(build_loader(load_config(None, base + ["aug.flip_prob=1"]), "train",
                                index=index)))
    order = [int(np.nonzero(b1["instance_id"] == i)[0][0]) for i in b0["instance_id"]]
    img0, img1 = b0["image"], b1["image"][order]
    # float32 source positions could round differently when mirrored; measured 0.0 here (no
    # rotation, no scaling); 1e-5 is 1/1700 of an intensity level (1 / (255 * std))
    torch.testing.assert_close(img1, torch.flip(img0, dims=[3]), atol=1e-5, rtol=0)
    k0, k1 = b0["keypoints"], b1["keypoints"][order]
    fi = torch.as_tensor(COCO.flip_index)
    torch.testing.assert_close(k1[:, fi, 0][k0[..., 2] > 0], (191 - k0[..., 0])[k0[..., 2] > 0])
    # joint 9 (left wrist) of the source becomes joint 10 (right wrist) of the flipped crop
    assert (k1[:, 10, 2] == 2).all() and (k1[:, 9, 2] == 0).all()


def test_validation_batch_keys_and_flip_copy(tmp_path):
    index = _dot_dataset(tmp_path, 5)
    cfg = load_config(None, ["loader.batch_size=2"])
    loader = build_loader(cfg, "val", index=index)
    assert len(loader) == 3
    batches = list(loader)
    assert [b["image"].shape[0] for b in batches] == [2, 2, 2]  # the last one padded
    assert [b["valid"].tolist() for b in batches] == [[True, True]] * 2 + [[True, False]]
    ids = torch.cat([b["instance_id"][b["valid"]] for b in batches]).tolist()
    assert ids == [100, 101, 102, 103, 104]
    b = batches[0]
    assert b["image"].shape == (2, 3, 256, 192) and b["image"].dtype == torch.float32
    assert b["heatmap"].shape == (2, 17, 64, 48) and b["target_weight"].shape == (2, 17)
    assert b["matrix"].shape == (2, 2, 3) and b["keypoints"].shape == (2, 17, 3)
    torch.testing.assert_close(b["image_flipped"], torch.flip(b["image"], dims=[3]))
    assert not b["flipped"].any()
    np.testing.assert_allclose(b["center"].numpy(), index.center[:2], rtol=1e-6)
    # unlabelled joints get weight 0
    assert (b["target_weight"][b["keypoints"][..., 2] == 0] == 0).all()
    # a second pass gives the same batches
    again = list(loader)
    torch.testing.assert_close(again[0]["image"], b["image"])


def test_heatmap_peak_at_keypoint_over_stride(tmp_path):
    index = _dot_dataset(tmp_path, 4)
    cfg = load_config(None, ["loader.batch_size=4", "aug.rot_prob=1"])
    batch = next(iter(build_loader(cfg, "train", index=index)))
    stride = np.array([(192 - 1) / (48 - 1), (256 - 1) / (64 - 1)])
    hm = batch["heatmap"].numpy().astype(np.float64)
    errs = []
    for i in range(4):
        for j in np.nonzero(batch["target_weight"][i].numpy() > 0)[0]:
            h = hm[i, j]
            py, px = np.unravel_index(np.argmax(h), h.shape)
            if not (0 < px < 47 and 0 < py < 63):
                continue
            # A sampled Gaussian: the 3-point log-parabola gives its centre exactly.
            lx = np.log(h[py, px - 1:px + 2])
            ly = np.log(h[py - 1:py + 2, px])
            ex = px + 0.5 * (lx[0] - lx[2]) / (lx[0] - 2 * lx[1] + lx[2])
            ey = py + 0.5 * (ly[0] - ly[2]) / (ly[0] - 2 * ly[1] + ly[2])
            kx, ky = batch["keypoints"][i, j, :2].numpy() / stride
            errs += [abs(ex - kx), abs(ey - ky)]
    # heatmap px: float32 rounding only, measured 1.7e-7 (18 coordinates); 6x margin
    assert len(errs) >= 12 and max(errs) < 1e-6, max(errs)


def test_unreadable_image_names_file_and_instance(tmp_path):
    index = _dot_dataset(tmp_path, 2)
    (tmp_path / "dots1.png").write_bytes(b"this is not an image")
    cfg = load_config(None, ["loader.batch_size=2"])
    with pytest.raises(DatasetError, match=r"dots1.png \(instance 101\) is not an image DALI"):
        list(build_loader(cfg, "val", index=index))


def test_gpu_request_without_cuda_is_a_clear_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("has CUDA")
    from dali_pose.errors import DaliPoseError, NoGpuError
    with pytest.raises(NoGpuError, match="'loader.device': 'gpu', but CUDA is not available") as e:
        build_loader(load_config(), "train", device="gpu", index=_dot_dataset(tmp_path, 1))
    assert isinstance(e.value, DaliPoseError)


def test_fp16_images_and_combined_targets(tmp_path):
    index = _dot_dataset(tmp_path, 2)
    cfg = load_config(None, ["loader.batch_size=2", "loader.image_dtype=float16",
                             "model.target=combined"])
    b16 = next(iter(build_loader(cfg, "val", index=index)))
    b32 = next(iter(build_loader(load_config(None, ["loader.batch_size=2"]), "val",
                                 index=index)))
    assert b16["image"].dtype == torch.float16 and b16["heatmap"].shape == (2, 51, 64, 48)
    # float16 rounding: at most half a step, 2^-11 = 4.9e-4 relative; measured 4.86e-4
    # relative (9.8e-4 absolute at |values| <= 2.58); 2x margin on the relative bound
    torch.testing.assert_close(b16["image"].float(), b32["image"], rtol=1e-3, atol=1e-6)


def test_several_pipelines_give_the_same_validation_batches(tmp_path):
    index = _dot_dataset(tmp_path, 5)
    one = list(build_loader(load_config(None, ["loader.batch_size=2"]), "val", index=index))
    two = list(build_loader(load_config(None, ["loader.batch_size=2", "loader.pipelines=2"]),
                            "val", index=index))
    assert [b["instance_id"].tolist() for b in two] == [b["instance_id"].tolist() for b in one]
    for a, b in zip(one, two):
        torch.testing.assert_close(a["image"], b["image"], rtol=0, atol=0)
        torch.testing.assert_close(a["heatmap"], b["heatmap"], rtol=0, atol=0)
    # training: every lane's runs, in turn, make up the epoch's schedule
    base = ["loader.batch_size=2", "loader.pipelines=2", "loader.drop_last=false"]
    loader = build_loader(load_config(None, base), "train", index=index)
    ids = [b["instance_id"].tolist() for b in loader]
    plan = image_epoch(image_groups(index.image_paths), 2, train=True, seed=0, epoch=0,
                       drop_last=False)
    assert ids == [index.instance_id[plan.batch_rows(b)].tolist()
                   for b in range(len(plan.batches))]


def test_numba_operators_compile_once_per_config(tmp_path, monkeypatch):
    """Lanes and later loaders of the same config reuse the compiled numba operators (1-3 s
    each to compile), and the batches are those of freshly compiled ones."""
    import dali_pose.loader.graph as graph

    built = []

    class Counting(graph.NumbaFunction):
        def __init__(self, *a, **k):
            built.append(k["run_fn"].__name__)
            super().__init__(*a, **k)

    index = _dot_dataset(tmp_path, 4)
    cfg = load_config(None, ["loader.batch_size=2", "loader.pipelines=2",
                             "occlusion.method=aid", "occlusion.prob=1", "loader.seed=5"])
    graph.forget_compiled()
    monkeypatch.setattr(graph, "NumbaFunction", Counting)
    first = list(build_loader(cfg, "train", index=index))
    assert len(built) == 3, built  # crop, warp + AID, targets: once for both lanes
    again = list(build_loader(cfg, "train", index=index))
    assert len(built) == 3, built
    graph.forget_compiled()
    fresh = list(build_loader(cfg, "train", index=index))
    assert len(built) == 6
    assert len(first) == len(again) == len(fresh) == 2
    for a, b, c in zip(first, again, fresh):
        for key in ("image", "heatmap", "keypoints", "matrix"):
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
            torch.testing.assert_close(a[key], c[key], rtol=0, atol=0)
