"""Bad input never becomes silently wrong training data: every case ends in a one-line error
naming the file / annotation id / key, or in a skip that is counted and reported by name.
The faulty files are made here from a tiny synthetic dataset."""
import json
import shutil
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from dali_pose import load_config
from dali_pose.config import ConfigError
from dali_pose.datasets import COCO, DatasetError, load_coco_style
from dali_pose.imagefiles import inspect

pytest.importorskip("nvidia.dali")
from dali_pose import build_loader  # noqa: E402
from conftest import data_overrides, run_train, synthetic_data, train_argv  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    return synthetic_data(tmp_path_factory, num_train=3, num_val=2, seed=2)


def _copy(syn, tmp_path) -> Path:
    d = tmp_path / "data"
    shutil.copytree(syn, d)
    return d


def _cfg(d, *extra):
    return load_config(None, [*data_overrides(d), "loader.batch_size=2", *extra])


def _first_image(d, split="val"):
    ann = json.loads((d / "annotations" / f"person_keypoints_{split}.json").read_text())
    return d / "images" / split / ann["images"][0]["file_name"], ann


def _with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """The JPEG with an EXIF APP1 segment (Orientation tag) right after its SOI marker."""
    tiff = (b"MM\x00\x2a\x00\x00\x00\x08" + b"\x00\x01"
            + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + b"\x00\x00\x00\x00")
    payload = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


# ------------------------------------------------------------------------------ images ---

# Every decoder a loader can take: the production graph's region-of-interest decode
# (``decoders.image_slice`` + the numba warp) for validation and for training with NODA (each
# image decoded once for its people and their pool picks), and the oracle graph's full-image
# decode (``decoders.image`` + DALI's ``warp_affine``, one person per image).
EXIF_CASES = {"val": ("val", False, False), "train_noda": ("train", True, False),
              "oracle": ("val", False, True)}


def _exif_loader(cfg, split, oracle):
    if not oracle:
        return build_loader(cfg, split)
    from dali_pose.datasets import load_index
    from dali_pose.loader import PoseLoader
    from dali_pose.loader.oracle import one_person_per_image, oracle_graph

    index = one_person_per_image(load_index(cfg, split, None))
    return PoseLoader(cfg, split, index, "cpu", 0, 1, graph=oracle_graph)


@pytest.mark.parametrize("case", list(EXIF_CASES))
def test_exif_orientation_is_ignored(syn, tmp_path, case):
    from dali_pose.tools.build_pool import build_pool

    split, noda, oracle = EXIF_CASES[case]
    d = _copy(syn, tmp_path)
    extra = []
    if noda:
        pool = tmp_path / "pool.npz"
        np.savez(pool, **build_pool(_cfg(d), level="box", verbose=False))
        extra = ["noda.prob=1", "loader.drop_last=false", f"noda.pool={pool}"]
    cfg = _cfg(d, *extra)
    path, _ = _first_image(d, split)
    loader = _exif_loader(cfg, split, oracle)
    assert (loader.spec.noda is not None) == noda  # the graph under test
    plain = list(loader)
    tagged = _with_exif_orientation(path.read_bytes(), 6)
    path.write_bytes(tagged)
    # the tag is real: a decoder that applies it turns the picture (OpenCV does by default)
    shape = cv2.imdecode(np.frombuffer(tagged, np.uint8), cv2.IMREAD_COLOR).shape
    assert shape[:2] == (640, 480)
    again = list(_exif_loader(cfg, split, oracle))
    assert len(plain) == len(again) > 0
    for a, b in zip(plain, again):
        for key in ("image", "heatmap", "matrix", "keypoints"):
            assert torch.equal(a[key], b[key]), key


def test_truncated_jpeg_is_named_and_the_loader_recovers(syn, tmp_path):
    d = _copy(syn, tmp_path)
    path, ann = _first_image(d)
    whole = path.read_bytes()
    path.write_bytes(whole[:len(whole) * 6 // 10])
    assert inspect(path.read_bytes()).problem.startswith("truncated")
    loader = build_loader(_cfg(d), "val")
    with pytest.raises(DatasetError, match=rf"{path.name} \(instance \d+\) is truncated"):
        list(loader)
    path.write_bytes(whole)  # the file mended: the same loader works for the next epoch
    n = sum(int(b["valid"].sum()) for b in loader)  # rows padding the last batch not counted
    assert n == len(loader.index)


def test_skipping_bad_images_counts_and_names_them(syn, tmp_path, capsys):
    d = _copy(syn, tmp_path)
    path, ann = _first_image(d)
    path.write_bytes(path.read_bytes()[:5000])
    loader = build_loader(_cfg(d, "data.on_bad_image=skip"), "val")
    people = sum(1 for a in ann["annotations"] if a["image_id"] == ann["images"][0]["id"]
                 and a["num_keypoints"] > 0)
    seen = [int(i) for b in loader for i in b["instance_id"][b["valid"]]]
    assert len(seen) == len(loader.index) - people  # that image's people, and only those
    assert list(loader.skipped_images) == [str(path)]
    out = capsys.readouterr().out
    assert f"skipped: image {path}" in out and "truncated" in out
    assert len(list(loader)) == len(loader)  # next epoch: skipped again, said once


def test_resized_copy_and_empty_file_are_named(syn, tmp_path):
    d = _copy(syn, tmp_path)
    path, _ = _first_image(d)
    img = cv2.imread(str(path))
    cv2.imwrite(str(path), cv2.resize(img, (320, 240)))
    with pytest.raises(DatasetError, match=rf"{path.name} .* is 320x240 pixels, the "
                                           rf"annotations say 640x480"):
        list(build_loader(_cfg(d), "val"))
    path.write_bytes(b"")
    with pytest.raises(DatasetError, match=rf"{path.name} .* is empty"):
        list(build_loader(_cfg(d), "val"))


@pytest.mark.parametrize("ext,params", [(".bmp", []), (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101])])
def test_other_formats_dali_decodes_are_accepted(syn, tmp_path, ext, params):
    """BMP and lossless WebP copies of the images give the crops of PNG copies exactly."""
    d = _copy(syn, tmp_path)
    ann = json.loads((d / "annotations" / "person_keypoints_val.json").read_text())
    crops = {}
    for kind, kind_params in ((".png", []), (ext, params)):
        for im in ann["images"]:
            src = d / "images" / "val" / im["file_name"]
            im["file_name"] = Path(im["file_name"]).stem + kind
            cv2.imwrite(str(d / "images" / "val" / im["file_name"]), cv2.imread(str(src)),
                        kind_params)
        alt = d / "annotations" / f"val{kind}.json"
        alt.write_text(json.dumps(ann))
        crops[kind] = torch.cat([b["image"] for b in build_loader(
            _cfg(d, f"data.val_ann={alt}"), "val")])
        for im in ann["images"]:  # back to the JPEG names for the next copy
            im["file_name"] = Path(im["file_name"]).stem + ".jpg"
    assert inspect(next((d / "images" / "val").glob(f"*{ext}")).read_bytes()).kind == ext[1:]
    assert torch.equal(crops[".png"], crops[ext])


# ------------------------------------------------------------------------- annotations ---

def _coco(tmp_path, anns, images=None):
    images = images or [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 80}]
    for im in images:
        (tmp_path / str(im["file_name"])).write_bytes(b"\xff\xd8")
    p = tmp_path / "ann.json"
    p.write_text(json.dumps({"images": images, "annotations": anns,
                             "categories": [{"id": 1, "name": "person"}]}))
    return str(p)


def _person(aid, kps=None, bbox=(10, 10, 40, 60)):
    kps = kps or [20, 20, 2] * 17
    return {"id": aid, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": list(bbox),
            "keypoints": kps, "num_keypoints": 17}


def test_duplicate_ids_are_errors(tmp_path):
    p = _coco(tmp_path, [_person(5), _person(5)])
    with pytest.raises(DatasetError, match=r"ann\.json: annotation id 5 appears twice"):
        load_coco_style(p, str(tmp_path), COCO, 0.75)
    p = _coco(tmp_path, [_person(5)], images=[{"id": 1, "file_name": "a.jpg"},
                                               {"id": 1, "file_name": "b.jpg"}])
    with pytest.raises(DatasetError, match=r"ann\.json: image id 1 appears twice"):
        load_coco_style(p, str(tmp_path), COCO, 0.75)


def test_non_integer_image_ids_and_binary_json(tmp_path):
    p = _coco(tmp_path, [], images=[{"id": "000001", "file_name": "a.jpg"}])
    with pytest.raises(DatasetError, match=r"image id '000001': image ids must be integers"):
        load_coco_style(p, str(tmp_path), COCO, 0.75)
    mat = tmp_path / "gt_valid.mat"
    mat.write_bytes(b"MATLAB 5.0 MAT-file\x00\x01\xff\xfe\x00\x9c binary")
    with pytest.raises(DatasetError, match=r"gt_valid\.mat is not a JSON text file") as e:
        load_coco_style(str(mat), str(tmp_path), COCO, 0.75)
    assert "\n" not in str(e.value)
    import evaluate

    rc = evaluate.main(["--dataset", "coco", "--ann", str(mat), "--preds", str(mat)])
    assert rc == 1


def test_keypoints_far_outside_the_image_become_unlabelled(tmp_path):
    kps = [20, 20, 2] * 17
    kps[0:3] = [900, 20, 2]  # far right of a 100-px-wide image
    kps[3:6] = [101, 20, 2]  # just outside: within the margin, kept
    lines = []
    index = load_coco_style(_coco(tmp_path, [_person(3, kps)]), str(tmp_path), COCO, 0.75,
                            log=lines.append)
    assert index.keypoints[0, 0, 2] == 0 and index.keypoints[0, 1, 2] == 2
    assert index.unlabelled == 1
    assert "1 keypoints far outside their image (set unlabelled) (annotation 3)" in lines[0]


def test_detection_boxes_are_used_as_given(tmp_path):
    p = _coco(tmp_path, [_person(1)])
    det = tmp_path / "det.json"
    det.write_text(json.dumps([{"image_id": 1, "category_id": 1, "score": 0.9,
                                "bbox": [-20.0, 30.0, 40.0, 90.0]}]))  # partly off the image
    index = load_coco_style(p, str(tmp_path), COCO, 0.75, det_file=str(det))
    np.testing.assert_allclose(index.center[0], [0.0, 75.0])  # x + w/2, y + h/2: no clipping
    np.testing.assert_allclose(index.scale[0], [90 * 0.75 * 1.25, 90 * 1.25])


# -------------------------------------------------------------------------------- runs ---

def test_a_train_split_too_small_for_a_batch_or_the_ranks(syn, tmp_path):
    d = _copy(syn, tmp_path)
    with pytest.raises(DatasetError, match=r"train split .*: \d+ people give \d+ per rank, "
                                           r"fewer than one batch of loader.batch_size=64"):
        build_loader(_cfg(d, "loader.batch_size=64"), "train")
    with pytest.raises(DatasetError, match=r"val split .*: \d+ people for 1000 ranks"):
        build_loader(_cfg(d), "val", shard_id=0, num_shards=1000)


@pytest.mark.parametrize("override,key", [
    ("model.sigma=0", "model.sigma"), ("data.padding=0", "data.padding"),
    ("loader.seed=-1", "loader.seed"), ("occlusion.prob=1.5", "occlusion.prob"),
    ("noda.prob=-0.1", "noda.prob"), ("aug.rot_prob=2", "aug.rot_prob"),
    ("loader.prefetch=0", "loader.prefetch"), ("occlusion.radius=[0.3, 0.1]",
                                                "occlusion.radius"),
    ("noda.scale_range=[1.2, 0.8]", "noda.scale_range"), ("train.lr_steps=[5, 3]",
                                                           "train.lr_steps"),
    ("data.on_bad_image=ignore", "data.on_bad_image"), ("model.codec=classic", "model.codec"),
])
def test_impossible_config_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_train_checks_every_input_before_the_first_step(syn, tmp_path):
    d = _copy(syn, tmp_path)
    base = train_argv(d, tmp_path / "run")
    p = run_train(base + ["--set", f"data.det_file={tmp_path / 'dets.json'}"])
    assert p.returncode == 1 and "epoch" not in p.stdout
    assert p.stderr.strip().splitlines() == [
        f"error: config key 'data.det_file': the file {tmp_path / 'dets.json'} does not exist "
        f"(see the README's Datasets section for where each dataset's files go)"]
    p = run_train(base + ["--set", "model.pretrained=models/nope.pth", "--verbose"])
    assert p.returncode != 0 and "Traceback" in p.stderr  # --verbose: the whole story
    p = run_train(base + ["--set", "loader.device=gpu"])
    if not torch.cuda.is_available():
        assert p.returncode == 1 and "--set loader.device=cpu" in p.stderr


def test_a_second_iterator_ends_the_first(syn, tmp_path):
    loader = build_loader(_cfg(_copy(syn, tmp_path)), "val")
    first = iter(loader)
    next(first)
    second = list(loader)
    assert sum(int(b["valid"].sum()) for b in second) == len(loader.index)
    with pytest.raises(StopIteration):
        next(first)
    assert len(list(loader)) == len(loader)


def test_gpu_launches_fill_the_device():
    from dali_pose.kernels.dropping import dropping_op
    from dali_pose.kernels.noda import noda_op

    for op in (dropping_op("aid", (192, 256)),
               noda_op((192, 256), COCO.joints, (0.8, 1.2), 10)):
        blocks, threads = op.launch(132)  # an H200: 132 multiprocessors
        assert blocks[0] >= 132 and threads == (256, 1, 1)
