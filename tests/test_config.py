import dataclasses

import pytest
import yaml

from dali_pose.config import ConfigError, load_config, save_config


def test_defaults_and_overrides():
    cfg = load_config(None, ["loader.batch_size=16", "model.input_size=[288, 384]",
                             "model.heatmap_size=[72, 96]", "data.det_file=dets.json",
                             "aug.flip_prob=0"])
    assert cfg.loader.batch_size == 16
    assert cfg.model.input_size == (288, 384)
    assert cfg.model.heatmap_size == (72, 96)
    assert cfg.data.det_file == "dets.json"
    assert cfg.aug.flip_prob == 0.0 and isinstance(cfg.aug.flip_prob, float)


def test_yaml_file_roundtrip(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data:\n  format: mpii\nloader:\n  seed: 3\n")
    cfg = load_config(str(p), ["loader.seed=4"])
    assert cfg.data.format == "mpii" and cfg.loader.seed == 4
    out = tmp_path / "run" / "config.yaml"
    save_config(cfg, str(out))
    again = load_config(str(out))
    assert again == cfg


def test_frozen():
    cfg = load_config()
    with pytest.raises(dataclasses.FrozenInstanceError, match="batch_size"):
        cfg.loader.batch_size = 3


@pytest.mark.parametrize("override,needle", [
    ("loader.batchsize=3", "loader.batchsize"),
    ("nosuch.key=1", "nosuch"),
    ("loader.batch_size=abc", "loader.batch_size"),
    ("loader.batch_size=2.5", "loader.batch_size"),
    ("model.input_size=[1, 2, 3]", "model.input_size"),
    ("data.format=kitti", "data.format"),
    ("loader.device=tpu", "loader.device"),
    ("aug.flip_prob=2", "aug.flip_prob"),
    ("loader.fp16=yes please", "loader.fp16"),
])
def test_bad_values_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(None, [override])


def test_bad_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("loader: [1, 2\n")
    with pytest.raises(ConfigError, match="c.yaml"):
        load_config(str(p))
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_config(str(tmp_path / "missing.yaml"))
    p.write_text(yaml.safe_dump({"loader": {"unknown_key": 1}}))
    with pytest.raises(ConfigError, match="loader.unknown_key"):
        load_config(str(p))


def test_shipped_configs_load():
    from pathlib import Path

    for p in sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml")):
        load_config(str(p))
