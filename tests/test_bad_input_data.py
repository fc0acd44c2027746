"""Bad data never becomes silently wrong training data or scores (the data half of the
second round of bad input): image sizes of every format, image entries, ids, boxes and
joints far outside, hostile paths and sizes, pool and weight files (every path that loads
weights). Each bad file is made here; none needs a loader build (the file check is the loader's BatchSource.read, called directly)."""
import json
import os
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from dali_pose import load_config
from dali_pose.datasets import (COCO, FAR_BOX, DatasetError, load_coco_style, load_index,
                                load_mpii)
from dali_pose.errors import DaliPoseError
from dali_pose.evaluation import metrics as M
from dali_pose.imagefiles import inspect, read_size
from conftest import png_declaring

W, H = 100, 80
ROOT = Path(__file__).resolve().parents[1]


def _image(path, size=(W, H), params=()):
    img = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    if str(path).endswith((".pgm", ".pbm")):
        img = img[:, :, 0]
    assert cv2.imwrite(str(path), img, list(params))
    return path


def _person(aid, image_id=1, kps=None, bbox=(10, 10, 40, 50), **extra):
    kps = kps if kps is not None else [30, 30, 2] * 17
    return dict({"id": aid, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                 "bbox": list(bbox), "area": 2000.0, "keypoints": kps, "num_keypoints": 17},
                **extra)


def _coco(tmp_path, anns=None, images=None, name="ann.json", make_images=True):
    images = images if images is not None else [
        {"id": 1, "file_name": "a.jpg", "width": W, "height": H}]
    if make_images:
        for im in images:
            if isinstance(im, dict) and isinstance(im.get("file_name"), str) \
                    and not (tmp_path / im["file_name"]).exists() \
                    and "/" not in im["file_name"]:
                _image(tmp_path / im["file_name"])
    p = tmp_path / name
    p.write_text(json.dumps({"images": images, "annotations": anns if anns is not None
                             else [_person(1)], "categories": [{"id": 1, "name": "person"}]}))
    return str(p)


def _load(p, tmp_path, **kw):
    lines = []
    return load_coco_style(p, str(tmp_path), COCO, 0.75, log=lines.append, **kw), lines


def _read_first(index):
    """What the loader does with the first row's file before DALI decodes it."""
    from dali_pose.loader.sources import BatchSource

    return BatchSource(index, train=False, seed=0, log=None).read(0)


# ---------------------------------------------------------------- sizes of every format ---

FORMATS = [(".jpg", ()), (".png", ()), (".bmp", ()), (".webp", ()), (".tif", ()),
           (".ppm", ()), (".pgm", ()), (".jp2", ())]


@pytest.mark.parametrize("ext,params", FORMATS)
def test_every_format_reads_its_size_and_truncation(tmp_path, ext, params):
    p = _image(tmp_path / f"a{ext}", params=params)
    data = p.read_bytes()
    info = inspect(data)
    assert info.problem is None and info.size == (W, H), info
    assert read_size(str(p)) == (W, H)
    cut = inspect(data[:len(data) // 2])
    assert cut.problem is not None and cut.problem.startswith("truncated"), cut


@pytest.mark.parametrize("ext", [".tif", ".ppm", ".jp2", ".png"])
def test_half_size_file_is_named_before_decoding(tmp_path, ext):
    """A half-size TIFF (any format) whose json says full size is an error, not training."""
    _image(tmp_path / f"a{ext}", size=(W // 2, H // 2))
    p = _coco(tmp_path, images=[{"id": 1, "file_name": f"a{ext}", "width": W, "height": H}])
    index, _ = _load(p, tmp_path)
    with pytest.raises(DatasetError, match=rf"a\{ext} .* is 50x40 pixels, the annotations "
                                           rf"say 100x80"):
        _read_first(index)
    _image(tmp_path / f"a{ext}")
    assert _read_first(index)[1] is True


def test_a_format_header_without_a_size_is_a_problem():
    assert inspect(b"II*\x00\x08\x00\x00\x00\x00\x00").problem is not None  # TIFF, no tags
    assert "no image size" in inspect(b"P6\n0 0\n255\n").problem


@pytest.mark.parametrize("width", [-100, None, "missing", "320", float("nan"), 0, True, 12.5])
def test_width_must_be_a_positive_integer(tmp_path, width):
    """A negative, missing, string or NaN width would switch the size check off."""
    img = {"id": 1, "file_name": "a.jpg", "width": width, "height": H}
    if width == "missing":
        del img["width"]
    p = _coco(tmp_path, images=[img])
    with pytest.raises(DatasetError, match=r"ann\.json: image 1 has width .*positive integer"):
        _load(p, tmp_path)


# ---------------------------------------------------------------- ids and image entries ---

@pytest.mark.parametrize("link", [None, "symlink", "hardlink"])
def test_two_image_ids_sharing_one_file(tmp_path, link):
    """Two spellings of one name, or two names of one file (a symbolic or hard link)."""
    second = "./a.jpg"
    if link:
        _image(tmp_path / "a.jpg")
        second = "b.jpg"
        (os.symlink if link == "symlink" else os.link)(tmp_path / "a.jpg", tmp_path / second)
    images = [{"id": 7, "file_name": "a.jpg", "width": W, "height": H},
              {"id": 9, "file_name": second, "width": W, "height": H}]
    p = _coco(tmp_path, [_person(1, 7), _person(2, 9)], images=images)
    with pytest.raises(DatasetError, match=r"image ids 7 and 9 share the file"):
        _load(p, tmp_path)
    det = tmp_path / "det.json"
    det.write_text(json.dumps([{"image_id": i, "category_id": 1, "score": 0.9,
                                "bbox": [10, 10, 40, 50]} for i in (7, 9)]))
    with pytest.raises(DatasetError, match=r"image ids 7 and 9 share the file"):
        _load(p, tmp_path, det_file=str(det))


@pytest.mark.parametrize("ann,needle", [
    (_person(1.5), r"annotation at position 0 has id 1\.5: annotation ids must be integers"),
    (_person("abc"), r"position 0 has id 'abc': annotation ids must be integers"),
    (_person(True), r"position 0 has id True"),
    ({k: v for k, v in _person(1).items() if k != "id"}, r"position 0 has no 'id' field"),
    (_person(1, kps=[30, 30, 2] * 16 + ["abc", 30, 2]), r"annotation 1's keypoints must be a "
                                                        r"list of numbers, has 'abc'"),
    (_person(1, kps=[30, 30, 2] * 16 + ["30", 30, 2]), r"annotation 1's keypoints .* '30'"),
    (_person(1, kps=[[30, 30, 2]] * 17), r"annotation 1 has 17 keypoint values"),
    (_person(1, bbox=("a", 1, 2, 3)), r"annotation 1's bbox must be a list of numbers"),
    (_person(1, area=float("nan")), r"annotation 1 has area nan"),
    (_person(1, area=-5), r"annotation 1 has area -5"),
    (_person(1, area="big"), r"annotation 1 has area 'big'"),
    (_person(1, image_id=[1]), r"annotation 1 refers to unknown image_id \[1\]"),
    (_person(2 ** 70), r"position 0 has id 1180591620717411303424: annotation ids must be "
                       r"integers"),
    (_person(1, iscrowd="no"), r"annotation 1 has iscrowd 'no': expected 0 or 1"),
    (_person(1, category_id="1"), r"annotation 1 has category_id '1': expected an integer"),
])
def test_annotation_errors_are_one_line_for_loader_and_scorer(tmp_path, ann, needle):
    """The loader and the scorer run one check: each refuses what the other refuses."""
    p = _coco(tmp_path, [ann])
    with pytest.raises(DatasetError, match=needle) as e:
        _load(p, tmp_path)
    assert "\n" not in str(e.value)
    with pytest.raises(M.EvaluationError, match=needle):
        M.load_gt(p, "coco")


@pytest.mark.parametrize("key,value", [("id", 2 ** 63), ("width", "320"),
                                       ("width", float("nan")), ("height", -80)])
def test_image_entry_errors_for_loader_and_scorer(tmp_path, key, value):
    """An image id beyond 64 bits, a width or height that is not a positive integer: the
    loader and the scorer refuse them alike (the scorer does not need the sizes, but a
    file that has them wrong is not the file the loader would train on)."""
    img = {"id": 1, "file_name": "a.jpg", "width": W, "height": H, key: value}
    anns = [_person(1, image_id=value if key == "id" else 1)]
    p = _coco(tmp_path, anns, images=[img])
    needle = r"image entry 0 has image id 9223372036854775808: image ids must be integers" \
        if key == "id" else rf"image 1 has {key} .*: expected a positive integer"
    with pytest.raises(DatasetError, match=needle):
        _load(p, tmp_path)
    with pytest.raises(M.EvaluationError, match=needle):
        M.load_gt(p, "coco")


def test_duplicate_annotation_ids_refused_by_loader_and_scorer(tmp_path):
    p = _coco(tmp_path, [_person(3), _person(3)])
    for call in (lambda: _load(p, tmp_path), lambda: M.load_gt(p, "coco")):
        with pytest.raises(DaliPoseError, match=r"annotation id 3 appears twice"):
            call()


def test_two_missing_ids_name_the_first_position(tmp_path):
    anns = [{k: v for k, v in _person(1).items() if k != "id"}] * 2
    p = _coco(tmp_path, anns)
    with pytest.raises(DatasetError) as e:
        _load(p, tmp_path)
    assert "position 0 has no 'id'" in str(e.value) and "?" not in str(e.value)


@pytest.mark.parametrize("doc,needle", [
    ({"images": None, "annotations": []}, "needs 'images' and 'annotations' lists"),
    ({"images": [], "annotations": None}, "needs 'images' and 'annotations' lists"),
    ({"images": [5], "annotations": []}, "image entry 0 has no 'id'"),
    ({"images": [], "annotations": ["x"]}, "annotation at position 0 has no 'id'"),
])
def test_malformed_documents(tmp_path, doc, needle):
    p = tmp_path / "ann.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(DatasetError, match=needle):
        _load(str(p), tmp_path)
    with pytest.raises(M.EvaluationError, match=needle):
        M.load_gt(str(p), "coco")


def test_json_nested_100000_deep(tmp_path):
    p = tmp_path / "deep.json"
    p.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DatasetError, match=r"deep\.json is nested too deeply"):
        _load(str(p), tmp_path)
    with pytest.raises(M.EvaluationError, match=r"deep\.json is nested too deeply"):
        M.load_gt(str(p), "coco")


# ---------------------------------------------------------------- boxes and joints far out ---

def test_coco_box_far_outside_is_set_aside_counted_reported(tmp_path):
    p = _coco(tmp_path, [_person(1), _person(2, bbox=(-1e6, -1e6, 50, 50)),
                         _person(3, bbox=(-1e6, 10, 2e6, 50))])
    index, lines = _load(p, tmp_path)
    assert list(index.instance_id) == [1]
    assert f"2 {FAR_BOX} (annotation 2, annotation 3)" in lines[0]
    assert index.skipped[FAR_BOX] == 2


def test_detection_box_far_outside_is_set_aside(tmp_path):
    p = _coco(tmp_path)
    det = tmp_path / "det.json"
    det.write_text(json.dumps([{"image_id": 1, "category_id": 1, "score": 0.9,
                                "bbox": [10, 10, 40, 50]},
                               {"image_id": 1, "category_id": 1, "score": 0.9,
                                "bbox": [-1e6, -1e6, 40, 50]}]))
    index, lines = _load(p, tmp_path, det_file=str(det))
    assert len(index) == 1 and f"1 detection {FAR_BOX} (detection 1)" in lines[0]


@pytest.mark.parametrize("det,needle", [
    ({"image_id": [1], "score": 0.9, "bbox": [1, 1, 5, 5]}, r"image_id \[1\]"),
    ({"image_id": 1, "score": "0.9", "bbox": [1, 1, 5, 5]}, r"score '0\.9'"),
    ({"image_id": 1, "score": 0.9, "bbox": ["a", 1, 5, 5]}, r"bbox must be a list of num"),
])
def test_detection_file_errors(tmp_path, det, needle):
    p = _coco(tmp_path)
    f = tmp_path / "det.json"
    f.write_text(json.dumps([det]))
    with pytest.raises(DatasetError, match=needle):
        _load(p, tmp_path, det_file=str(f))


def _mpii(tmp_path, people):
    (tmp_path / "img").mkdir(exist_ok=True)
    _image(tmp_path / "img" / "m.jpg", size=(200, 160))
    p = tmp_path / "mpii.json"
    p.write_text(json.dumps(people))
    return str(p), str(tmp_path / "img")


def _mp(joints=None, scale=0.5, center=(100, 70), image="m.jpg"):
    joints = joints or [[100 + j, 60 + j] for j in range(16)]
    return {"image": image, "center": list(center), "scale": scale, "joints": joints,
            "joints_vis": [1] * 16}


def test_mpii_far_outside_joint_and_box_are_set_aside(tmp_path):
    far_joint = [[100 + j, 60 + j] for j in range(16)]
    far_joint[3] = [1e6, 1e6]
    p, img = _mpii(tmp_path, [_mp(), _mp(joints=far_joint), _mp(scale=1e9),
                              _mp(center=(-1e6, -1e6))])
    lines = []
    index = load_mpii(p, img, 1.0, log=lines.append)
    assert list(index.instance_id) == [0, 1]
    assert index.keypoints[1, 3, 2] == 0 and index.unlabelled == 1
    assert (index.keypoints[0, :, 2] == 2).all()
    assert f"2 {FAR_BOX} (annotation 2, annotation 3)" in lines[0]
    assert "1 keypoints far outside their image (set unlabelled) (annotation 1)" in lines[0]
    assert tuple(index.image_size[0]) == (200, 160)  # from the header: the loader checks it


@pytest.mark.parametrize("person,needle", [
    (_mp(scale="1"), r"annotation 0's scale must be a finite number"),
    (_mp(joints=[["abc", 1]] * 16), r"annotation 0's joints must be a list of numbers"),
    (_mp(center=[1, 2, 3]), r"annotation 0 has a malformed center"),
])
def test_mpii_bad_values_are_one_line(tmp_path, person, needle):
    p, img = _mpii(tmp_path, [person])
    with pytest.raises(DatasetError, match=needle):
        load_mpii(p, img, 1.0, log=None)


# ---------------------------------------------------------------- hostile files ---

def test_pixel_cap(tmp_path):
    """A small PNG declaring 30000x30000 is refused before anything decodes it."""
    (tmp_path / "big.png").write_bytes(png_declaring(30000, 30000))
    assert inspect((tmp_path / "big.png").read_bytes()).size == (30000, 30000)
    # the json believes it: refused at load, naming the cap
    p = _coco(tmp_path, images=[{"id": 1, "file_name": "big.png", "width": 30000,
                                 "height": 30000}])
    with pytest.raises(DatasetError, match=r"image 1 \('big\.png'\) is 30000x30000 = "
                                           r"900000000 pixels, above data\.max_image_pixels"):
        _load(p, tmp_path)
    index, _ = _load(p, tmp_path, max_image_pixels=10 ** 9)  # raised on purpose: allowed
    assert len(index) == 1
    # the json says a small size: the header differs, the loader refuses it undecoded
    p = _coco(tmp_path, images=[{"id": 1, "file_name": "big.png", "width": W, "height": H}])
    index, _ = _load(p, tmp_path)
    with pytest.raises(DatasetError, match=r"big\.png .* is 30000x30000 pixels"):
        _read_first(index)
    # MPII (no sizes in its json): the header is read at load
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "m.png").write_bytes(png_declaring(30000, 30000))
    (tmp_path / "mpii.json").write_text(json.dumps([_mp(image="m.png")]))
    with pytest.raises(DatasetError, match=r"m\.png is 30000x30000 .*max_image_pixels"):
        load_mpii(str(tmp_path / "mpii.json"), str(tmp_path / "img"), 1.0)


def test_pixel_cap_is_a_config_key(tmp_path):
    p = _coco(tmp_path, images=[{"id": 1, "file_name": "a.jpg", "width": W, "height": H}])
    cfg = load_config(None, [f"data.train_ann={p}", f"data.train_images={tmp_path}",
                             "data.max_image_pixels=7999"])
    with pytest.raises(DatasetError, match=r"100x80 = 8000 pixels, above "
                                           r"data\.max_image_pixels \(7999\)"):
        load_index(cfg, "train", log=None)
    assert load_config().data.max_image_pixels >= 30_000_000  # every camera photo


@pytest.mark.parametrize("name", ["/etc/passwd", "../outside.jpg", "sub/../../outside.jpg"])
def test_paths_outside_the_image_folder(tmp_path, name):
    inner = tmp_path / "images"
    inner.mkdir()
    _image(tmp_path / "outside.jpg")
    if name == "/etc/passwd":
        name = str(tmp_path / "outside.jpg")  # an absolute path that exists
    p = _coco(inner, images=[{"id": 1, "file_name": name, "width": W, "height": H}],
              make_images=False)
    with pytest.raises(DatasetError, match=r"outside the image folder .*"
                                           r"data\.allow_outside_paths"):
        load_coco_style(p, str(inner), COCO, 0.75, log=None)
    cfg = load_config(None, [f"data.train_ann={p}", f"data.train_images={inner}",
                             "data.allow_outside_paths=true"])
    index = load_index(cfg, "train", log=None)
    assert index.image_paths[0].endswith("outside.jpg")
    # MPII too
    (inner / "m.json").write_text(json.dumps([_mp(image=name)]))
    with pytest.raises(DatasetError, match=r"outside the image folder"):
        load_mpii(str(inner / "m.json"), str(inner), 1.0, log=None)


def test_names_inside_the_folder_still_work(tmp_path):
    (tmp_path / "sub").mkdir()
    _image(tmp_path / "sub" / "b.jpg")
    p = _coco(tmp_path, images=[{"id": 1, "file_name": "sub/./x/../b.jpg", "width": W,
                                 "height": H}])
    index, _ = _load(p, tmp_path)
    assert len(index) == 1


def test_object_array_pool_file_is_one_line(tmp_path):
    from dali_pose.loader.pool import load_pool

    bad = tmp_path / "pool.npz"
    np.savez(bad, settings=np.array([{"version": 1}], dtype=object), rgba=np.zeros(4))
    with pytest.raises(DatasetError, match=r"NODA pool .*pool\.npz is not a pool .*pickled "
                                           r"objects, which are never loaded"):
        load_pool(str(bad))
    np.save(tmp_path / "objects.npy", np.array([{"version": 1}], dtype=object))
    with pytest.raises(DatasetError, match=r"objects\.npy is not a pool .*pickled objects"):
        load_pool(str(tmp_path / "objects.npy"))
    np.save(tmp_path / "plain.npy", np.zeros(3))
    with pytest.raises(DatasetError, match=r"plain\.npy is not a pool .*one array \(an \.npy "
                                           r"file\), not an \.npz archive"):
        load_pool(str(tmp_path / "plain.npy"))
    (tmp_path / "x.npz").write_text("not a zip")
    with pytest.raises(DatasetError, match=r"x\.npz is not a pool"):
        load_pool(str(tmp_path / "x.npz"))
    with pytest.raises(DatasetError, match=r"missing\.npz does not exist"):
        load_pool(str(tmp_path / "missing.npz"))


@pytest.mark.parametrize("fmt,edit,needle", [
    ("coco", lambda d: d["annotations"][0].pop("area"),
     r"annotation 1 has no 'area' field \(COCO scores OKS by it\)"),
    ("crowdpose", lambda d: None, r"image 1 has no valid 'crowdIndex' \(None\)"),
    ("coco", lambda d: d["annotations"][0].__setitem__("keypoints", [0] * 51),
     r"no ground-truth person has labelled keypoints"),
])
def test_validation_split_is_refused_where_the_scorer_would_refuse_it(tmp_path, fmt, edit,
                                                                       needle):
    """A val json the scorer cannot score fails when the index is built, with the scorer's
    message, not at the end of the first epoch; the train split does not need it."""
    k = 17 if fmt == "coco" else 14
    doc = {"images": [{"id": 1, "file_name": "a.jpg", "width": W, "height": H}],
           "annotations": [_person(1, kps=[30, 30, 2] * k)],
           "categories": [{"id": 1, "name": "person"}]}
    _image(tmp_path / "a.jpg")
    edit(doc)
    p = tmp_path / "val.json"
    p.write_text(json.dumps(doc))
    cfg = load_config(None, [f"data.format={fmt}", f"data.val_ann={p}",
                             f"data.val_images={tmp_path}", f"data.train_ann={p}",
                             f"data.train_images={tmp_path}"])
    with pytest.raises(DatasetError, match=needle):
        load_index(cfg, "val", log=None)
    with pytest.raises(M.EvaluationError, match=needle):
        M.load_gt(str(p), fmt)
    if "labelled" not in needle:
        assert len(load_index(cfg, "train", log=None)) == 1


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo owned > /dev/null",))


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_a_plain_malicious_pickle_is_refused_by_name(tmp_path, protocol):
    """Not a torch file but a plain pickle.dump: torch stops at its first unsupported opcode
    (protocol 4 and 5 frame their data); the refusal still names the global it asks for."""
    import pickle

    from dali_pose.models.weights import WeightsError, read_weights_file

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _Evil()}, f, protocol=protocol)
    with pytest.raises(WeightsError) as e:
        read_weights_file(str(path), "model.weights file")
    msg = str(e.value)
    assert "\n" not in msg and "evil.pth is refused: it asks for the global posix.system" in msg
    assert "weights_only" not in msg and "truncated" not in msg
    with open(path, "wb") as f:  # a plain pickle of plain data: not a torch file, not refused
        pickle.dump({"w": [1.0, 2.0]}, f, protocol=protocol)
    if protocol == 5:
        with pytest.raises(WeightsError, match=r"cannot read model\.weights file .*evil\.pth"):
            read_weights_file(str(path), "model.weights file")


def test_a_foreign_global_with_a_huge_name_is_cut_short(tmp_path, monkeypatch):
    """A pickle chooses its global's name: 100,000 characters of it stay out of the message,
    and the file is refused before torch.load sees it (torch's refusal searches its message
    in quadratic time: 4 minutes for this 100 KB file)."""
    import torch

    from dali_pose.models.weights import WeightsError, read_weights_file

    def no_torch_load(*a, **k):
        raise AssertionError("torch.load reached for a file whose globals refuse it")

    monkeypatch.setattr(torch, "load", no_torch_load)

    name = "m" * 100_000
    path = tmp_path / "long.pth"
    # GLOBAL opcode by hand (module and name on their own lines), then STOP
    path.write_bytes(b"\x80\x02c" + name.encode() + b"\nsystem\n." )
    with pytest.raises(WeightsError) as e:
        read_weights_file(str(path), "model.weights file")
    msg = str(e.value)
    assert "long.pth is refused: it asks for the global mmm" in msg and "..." in msg
    assert len(msg) < 600 and "\n" not in msg


@pytest.mark.parametrize("kind", ["torch-prefix", "numpy-prefix", "legacy-format"])
def test_globals_torch_would_refuse_slowly_are_refused_first(tmp_path, monkeypatch, kind):
    """A long global under a prefix tensors use (torch., numpy.) or inside torch's legacy
    (non-zip) format, where the data is the fourth pickle of the file: refused by name before
    torch.load, which would take minutes over it."""
    import pickle

    import torch

    from dali_pose.models.weights import WeightsError, read_weights_file

    path = tmp_path / "f.pt"
    if kind == "legacy-format":
        head = b"".join(pickle.dumps(x, protocol=2) for x in (0x1950A86A20F9469CFC6C, 1001, {}))
        path.write_bytes(head + b"\x80\x02cposix\nsystem\n.")
        name = "posix.system"
    else:
        module = kind.split("-")[0]
        path.write_bytes(b"\x80\x02c" + module.encode() + b"\n" + b"A" * 20_000 + b"\n.")
        name = module + ".AAA"

    def no_torch_load(*a, **k):
        raise AssertionError("torch.load reached")

    monkeypatch.setattr(torch, "load", no_torch_load)
    with pytest.raises(WeightsError, match=f"f.pt is refused: it asks for the global {name}"):
        read_weights_file(str(path), "model.weights file")


def test_plain_data_torch_save_writes_loads(tmp_path):
    """torch.save's protocol 2 names sets, bytearrays and complex numbers by Python 2's
    module (__builtin__), in both of its formats; NumPy arrays and scalars (mmpose's meta)."""
    import numpy as np
    import torch

    from dali_pose.models.weights import read_weights_file

    data = {"s": {1, 2}, "b": bytearray(b"x"), "c": 1j,
            "a": np.arange(3, dtype=np.float32), "n": np.float64(2.5)}
    for zip_format in (True, False):
        path = tmp_path / f"{zip_format}.pt"
        torch.save(data, path, _use_new_zipfile_serialization=zip_format)
        back = read_weights_file(str(path), "model.weights file")
        assert {k: v for k, v in back.items() if k != "a"} == {
            k: v for k, v in data.items() if k != "a"}
        assert back["a"].dtype == np.float32 and back["a"].tolist() == [0.0, 1.0, 2.0]


def test_every_weight_path_refuses_non_finite_and_foreign_globals(tmp_path, capsys):
    """model.weights, model.pretrained, a training checkpoint (--resume), a model file
    (train.init_from) and evaluate.py --checkpoint: a NaN tensor is a load error naming the
    file and the tensor; a pickle asking for posix.system is refused by that name."""
    import sys

    import torch

    from dali_pose import build_model
    from dali_pose.config import to_dict
    from dali_pose.engine.checkpoint import read_model_checkpoint, read_training_checkpoint
    from dali_pose.models.weights import WeightsError

    sys.path.insert(0, str(ROOT))
    import evaluate

    yaml = str(ROOT / "configs" / "synthetic.yaml")
    cfg = load_config(yaml)
    state = build_model(cfg).state_dict()
    name = [k for k, v in state.items() if v.is_floating_point()][2]
    state[name].view(-1)[0] = float("nan")
    nan = tmp_path / "nan.pt"
    torch.save({"model": state, "config": to_dict(cfg), "epoch": 1}, str(nan))
    torch.save(state, str(tmp_path / "nan.pth"))  # a plain state dict (ImageNet files are)
    evil = tmp_path / "evil.pt"
    torch.save({"model": _Evil(), "config": to_dict(cfg), "epoch": 1}, str(evil))
    paths = {
        "model.weights": lambda p: build_model(load_config(yaml, [f"model.weights={p}"])),
        "model.pretrained": lambda p: build_model(load_config(
            yaml, [f"model.pretrained={p}" + ("h" if p == nan else "")])),
        "evaluate.py --checkpoint": lambda p: evaluate.main(["--checkpoint", str(p)]),
    }
    for what, load in paths.items():
        for path, needle in ((nan, rf"nan\.pth?: tensor {re.escape(name)} holds 1 non-finite"),
                             (evil, r"evil\.pt is refused: it asks for the global "
                                    r"posix\.system")):
            try:
                rc = load(path)
                msg = capsys.readouterr().err.strip()
                assert rc == 1 and msg.startswith("error: "), (what, msg)
            except WeightsError as e:
                msg = str(e)
            assert "\n" not in msg and re.search(needle, msg), (what, msg)
    for read in (read_training_checkpoint, read_model_checkpoint):  # --resume, init_from
        with pytest.raises(WeightsError, match=r"evil\.pt is refused: .*posix\.system"):
            read(str(evil))
