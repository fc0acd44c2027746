"""``data.root``: one key moves a dataset; the four path keys still work for odd layouts."""
import glob

import pytest

from dali_pose.config import ConfigError, config_from_dict, load_config, read_tree, to_dict

PATHS = ("train_ann", "train_images", "val_ann", "val_images", "det_file", "val_gt")


@pytest.mark.parametrize("path", sorted(glob.glob("configs/**/*.yaml", recursive=True)))
def test_root_moves_every_path_of_a_shipped_config(path):
    here = load_config(path).data
    moved = load_config(path, ["data.root=/mnt/datasets/x"]).data
    root = read_tree(path)["data"]["root"]  # the file's, or its base's
    for key in PATHS:
        a, b = getattr(here, key), getattr(moved, key)
        if a is None:
            assert b is None, key
            continue
        assert a.startswith(root + "/"), (key, a)  # as before data.root: under data/<name>/
        assert b == "/mnt/datasets/x/" + a[len(root) + 1:], key
    assert moved.root is None  # resolved once: a saved config reloads the same
    assert config_from_dict(to_dict(load_config(path, ["data.root=/r"]))).data \
        == load_config(path, ["data.root=/r"]).data


def test_four_keys_still_override_and_absolute_paths_stay():
    d = load_config(None, ["data.root=/data/coco", "data.train_ann=/elsewhere/train.json",
                           "data.val_images=images/val2017", "data.det_file=dets.json"]).data
    assert d.train_ann == "/elsewhere/train.json"  # absolute: as written
    assert d.val_images == "/data/coco/images/val2017"
    assert d.det_file == "/data/coco/dets.json"
    assert d.val_gt is None
    nothing = load_config(None, ["data.val_images=images/val2017"]).data  # no root: as written
    assert nothing.val_images == "images/val2017"


def test_root_must_be_a_string():
    with pytest.raises(ConfigError, match="'data.root': expected a string"):
        load_config(None, ["data.root=5"])
