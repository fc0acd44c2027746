"""Config input, second round: float spellings, finite floats, --set values YAML cannot
scan (one line naming --set), the network's input sizes, seeds, and values too large to
print (a YAML anchor bomb)."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dali_pose.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("text,value", [("1e-3", 1e-3), ("1E-3", 1e-3), ("+1e-3", 1e-3),
                                        (".5e-3", 5e-4), ("2e2", 200.0), ("1_0e-1", 1.0),
                                        ("0.001", 1e-3), ("3", 3.0), ("'1e-3'", 1e-3),
                                        ("1.e-3", 1e-3), ("5e-4", 5e-4), ("1e3", 1e3),
                                        ("1e+3", 1e3), ("1.0e3", 1e3), (".5", 0.5),
                                        ("+.5", 0.5), ("1_000.0", 1e3), ("1_e-3", 1e-3)])
def test_every_float_spelling_in_files_and_set(tmp_path, text, value):
    p = tmp_path / "c.yaml"
    p.write_text(f"train:\n  lr: {text}\ndata:\n  padding: {text}\n")
    cfg = load_config(str(p))
    assert cfg.train.lr == pytest.approx(value) and isinstance(cfg.train.lr, float)
    assert cfg.data.padding == pytest.approx(value)
    cfg = load_config(None, [f"train.lr={text}", f"occlusion.radius=[{text}, 1000]"])
    assert cfg.train.lr == pytest.approx(value) and cfg.occlusion.radius[0] == pytest.approx(
        value)


@pytest.mark.parametrize("text,value", [("-1e-3", -1e-3), ("-.5", -0.5), ("-5E-1", -0.5),
                                        ("-2", -2.0)])
def test_negative_float_spellings(tmp_path, text, value):
    p = tmp_path / "c.yaml"
    p.write_text(f"data:\n  det_score_min: {text}\n")
    assert load_config(str(p)).data.det_score_min == pytest.approx(value)
    assert load_config(None, [f"data.det_score_min={text}"]).data.det_score_min == \
        pytest.approx(value)


@pytest.mark.parametrize("text", ["1e-3_", "1,5", "1e", "e3", "1e-3e3", "_1e3", "inf"])
def test_number_like_strings_that_are_no_number_are_one_line(tmp_path, text):
    with pytest.raises(ConfigError, match=rf"^--set 'train\.lr=.*': config key 'train\.lr': "
                                          r"(expected a number|must be a finite)"):
        load_config(None, [f"train.lr={text}"])


def test_float_spellings_stay_strings_for_string_keys():
    assert load_config(None, ["out_dir=1e-3"]).out_dir == "1e-3"


@pytest.mark.parametrize("key,text", [("train.lr", ".inf"), ("train.lr", "-.inf"),
                                      ("train.lr", ".nan"), ("train.lr", "1e400"),
                                      ("data.padding", ".inf"), ("data.det_score_min", ".nan"),
                                      ("occlusion.radius", "[0.1, .inf]")])
def test_config_floats_must_be_finite(tmp_path, key, text):
    with pytest.raises(ConfigError, match=rf"--set '{key}=.*': config key '{key}.*finite"):
        load_config(None, [f"{key}={text}"])
    section, name = key.split(".")
    p = tmp_path / "c.yaml"
    p.write_text(f"{section}:\n  {name}: {text}\n")
    with pytest.raises(ConfigError, match=rf"c\.yaml: config key '{key}.*finite"):
        load_config(str(p))


@pytest.mark.parametrize("item", ["out_dir=@x", "out_dir=%x", "out_dir=`x", "model.input_size=[64,",
                                  "out_dir=!!python/object/apply:os.system ['true']",
                                  "out_dir=!!python/name:os.system", "loader.seed={a: [1"])
def test_set_values_yaml_cannot_scan_are_one_line(item):
    with pytest.raises(ConfigError) as e:
        load_config(None, [item])
    msg = str(e.value)
    assert msg.startswith(f"--set {item!r}: the value is not valid YAML") and "\n" not in msg
    assert "quote" in msg


def test_quoted_set_values_still_work():
    assert load_config(None, ["out_dir='@x'"]).out_dir == "@x"
    assert load_config(None, ['out_dir="%x"']).out_dir == "%x"


def test_set_errors_name_set_not_the_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  epochs: 3\n")
    with pytest.raises(ConfigError, match=r"^--set 'train\.epoch=3': unknown config key "
                                          r"'train\.epoch'"):
        load_config(str(p), ["train.epoch=3"])
    with pytest.raises(ConfigError, match=r"^--set 'loader\.batch_size=abc': config key "):
        load_config(str(p), ["loader.batch_size=abc"])
    with pytest.raises(ConfigError, match=r"^--set 'model\.input_size=\[1, 2, 3\]'"):
        load_config(str(p), ["model.input_size=[1, 2, 3]"])
    with pytest.raises(ConfigError, match=r"^--set 'aug=3'"):
        load_config(str(p), ["aug=3"])
    # the file's own mistakes still name the file, even with --set given
    p.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown config key 'train\.epoch'"):
        load_config(str(p), ["loader.batch_size=2"])


@pytest.mark.parametrize("overrides,ok", [
    (["model.input_size=[48, 64]"], False),
    (["model.input_size=[80, 96]"], False),
    (["model.input_size=[96, 128]"], True),
    (["model.input_size=[288, 384]"], True),
    (["model.stage_modules=[1]", "model.input_size=[24, 16]"], True),
    (["model.stage_modules=[1, 1]", "model.input_size=[24, 16]"], False),
    (["model.arch=simplebaseline", "model.input_size=[48, 64]"], False),
    (["model.arch=simplebaseline", "model.input_size=[64, 64]"], True),
])
def test_input_sizes_the_network_cannot_take_are_refused_at_load(overrides, ok):
    """The rule matches the networks (checked by building them in test_network_rule)."""
    w, h = json.loads(overrides[-1].split("=")[1])
    overrides = overrides + [f"model.heatmap_size=[{max(2, w // 4)}, {max(2, h // 4)}]"]
    if ok:
        load_config(None, overrides)
    else:
        with pytest.raises(ConfigError, match=r"config key 'model\.input_size': .* cannot go "
                                              r"through the .* network: each size must be a "
                                              r"multiple of"):
            load_config(None, overrides)


@pytest.mark.parametrize("arch,modules,size", [("hrnet", "[1, 1, 1]", [48, 64]),
                                                ("hrnet", "[1, 1, 1]", [32, 64]),
                                                ("hrnet", "[1]", [24, 16]),
                                                ("simplebaseline", "[1]", [48, 64]),
                                                ("simplebaseline", "[1]", [32, 64])])
def test_network_rule(arch, modules, size):
    """What the config accepts, a tiny network of that architecture runs to input / 4."""
    torch = pytest.importorskip("torch")
    from dali_pose.models import build_model

    base = ["model.width=4", "model.stem_width=8", "model.num_blocks=1",
            f"model.stage_modules={modules}", f"model.arch={arch}"]
    try:
        load_config(None, base + [f"model.input_size={size}",
                                  f"model.heatmap_size={[v // 4 for v in size]}"])
        accepted = True
    except ConfigError:
        accepted = False
    cfg = load_config(None, base)  # default input size: build, then feed the tested size
    net = build_model(cfg).eval()
    try:
        with torch.no_grad():
            out = net(torch.zeros(1, 3, size[1], size[0]))
        runs = tuple(out.shape[-2:]) == (size[1] // 4, size[0] // 4)
    except RuntimeError:
        runs = False
    assert accepted == runs


@pytest.mark.parametrize("arch", ["hrnet", "simplebaseline"])
def test_heatmap_size_must_be_the_networks_output(arch):
    """Both networks output a quarter of the crop: build_model refuses another
    model.heatmap_size in one line (it was a traceback in the loss at the first step), before
    building anything; the config itself takes it (a user's own network with the loader)."""
    from dali_pose import build_model

    a = f"model.arch={arch}"
    cfg = load_config(None, [a, "model.input_size=[128, 160]"])
    assert cfg.model.heatmap_size == (48, 64)
    with pytest.raises(ConfigError, match=r"^config key 'model\.heatmap_size': \[48, 64\] .*"
                                          r"model\.input_size \[128, 160\].*\[32, 40\]"):
        build_model(cfg)
    cfg = load_config(None, [a, "model.input_size=[128, 160]", "model.heatmap_size=[32, 40]"])
    assert cfg.model.heatmap_size == (32, 40)
    assert build_model(cfg)(torch.zeros(1, 3, 160, 128)).shape[-2:] == (40, 32)


@pytest.mark.parametrize("item", ["loader.seed=1e20", "loader.seed=100000000000000000000",
                                  "loader.seed=4294967296", "loader.batch_size=1e3"])
def test_seed_and_large_integers_are_one_line(item):
    with pytest.raises(ConfigError, match=r"^--set .*config key 'loader\.(seed|batch_size)'"):
        load_config(None, [item])
    assert load_config(None, ["loader.seed=2147483647"]).loader.seed == 2 ** 31 - 1


def _bomb_value(levels=9):
    """YAML flow text of [[a0, a1, ..., a8], *a8]: a_i is ten references to a_(i-1), so a8
    stands for 10**9 strings while the file is a few hundred bytes."""
    defs = ["&a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        defs.append(f"&a{i} [{', '.join([f'*a{i - 1}'] * 10)}]")
    return f"[[{', '.join(defs)}], *a{levels - 1}]"


@pytest.mark.parametrize("section,key", [("train", "lr_steps"), ("train", "lr"),
                                         (None, "out_dir"), ("model", "input_size"),
                                         (None, "data"), ("loader", "device"), (None, "base"),
                                         ("aug", "recipe"), ("train", "optimizer")])
def test_anchor_bomb_value_is_not_expanded_in_the_message(tmp_path, section, key):
    """A value of a billion items (shared references) reaching an error message is shown
    cut short: quickly, in one short line."""
    p = tmp_path / "bomb.yaml"
    text = f"{key}: {_bomb_value()}\n"
    p.write_text(text if section is None else f"{section}:\n  {text}")
    assert p.stat().st_size < 1000
    t = time.perf_counter()
    with pytest.raises(ConfigError, match=rf"config key '{key if section is None else section + '.' + key}") as e:
        load_config(str(p))
    assert time.perf_counter() - t < 5.0
    assert len(str(e.value)) < 400 and "\n" not in str(e.value), str(e.value)


def test_anchor_bomb_under_an_unknown_key_names_the_key(tmp_path):
    p = tmp_path / "bomb.yaml"
    p.write_text(f"train:\n  lr: 0.001\n  nosuch: {_bomb_value()}\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.nosuch'") as e:
        load_config(str(p))
    assert len(str(e.value)) < 400
    with pytest.raises(ConfigError, match=r"^--set 'nosuch=.*unknown config key 'nosuch'"):
        load_config(None, [f"nosuch={_bomb_value()}"])


@pytest.mark.parametrize("key,value", [
    (key, "x" * 5000) for key in ("aug.recipe", "occlusion.method", "train.optimizer",
                                  "train.lr_schedule", "train.amp_dtype", "data.format",
                                  "data.on_bad_image", "loader.device", "loader.image_dtype",
                                  "model.arch", "model.codec")] + [
    ("train.lr_steps", list(range(5000, 0, -1))), ("occlusion.grid_sizes", [-1] * 5000),
    ("model.stage_modules", [0] * 5000), ("aug.recipe", [1, 2])],
    ids=lambda v: v if isinstance(v, str) and len(v) < 40 else type(v).__name__)
def test_long_values_are_cut_short_in_messages(key, value):
    """A long string or list in any checked key: the message stays one short line."""
    with pytest.raises(ConfigError, match=rf"config key '{key}'") as e:
        load_config(None, [f"{key}={value}"])
    assert len(str(e.value)) < 400 and "\n" not in str(e.value), str(e.value)[:500]


def test_config_that_refers_to_itself_is_one_line(tmp_path):
    """Recursive anchors in a config and its base: a ConfigError, not a RecursionError."""
    (tmp_path / "base.yaml").write_text("train: &b\n  train: *b\n")
    p = tmp_path / "c.yaml"
    p.write_text("base: base.yaml\ntrain: &a\n  train: *a\n")
    with pytest.raises(ConfigError, match=r"c\.yaml"):
        load_config(str(p))


def test_checkpoint_epoch_bomb_is_cut_short(tmp_path):
    """A checkpoint's pickle shares references as YAML anchors do: a billion-item 'epoch'
    in a training checkpoint is named in a short line (engine/checkpoint.py's message)."""
    torch = pytest.importorskip("torch")
    from dali_pose.engine.checkpoint import read_training_checkpoint
    from dali_pose.errors import WeightsError

    a = ["x"] * 10
    for _ in range(8):
        a = [a] * 10
    path = tmp_path / "last.pt"
    torch.save({"model": {}, "optimizer": {}, "scheduler": {}, "scaler": {}, "epoch": [a, a],
                "config": {}}, path)
    t = time.perf_counter()
    with pytest.raises(WeightsError, match="'epoch' is") as e:
        read_training_checkpoint(str(path))
    assert time.perf_counter() - t < 5.0 and len(str(e.value)) < 400


def test_config_error_is_one_line_on_the_command_line(tmp_path):
    """evaluate.py's model mode (a config path that loads nothing else first) prints one
    line for an unscannable --set and for a non-finite float, exit 1."""
    for item, needle in (("out_dir=@x", "--set 'out_dir=@x': the value is not valid YAML"),
                         ("train.lr=.inf", "config key 'train.lr': must be a finite")):
        r = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--config",
                            str(ROOT / "configs" / "synthetic.yaml"), "--set", item],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert r.returncode == 1, r.stderr
        assert r.stderr.strip().startswith("error: ") and needle in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.parametrize("text", ["9" * 5000, "2001-13-45"], ids=["long_int", "bad_date"])
def test_values_yaml_reads_but_python_cannot_make_are_one_line(tmp_path, text):
    """An integer of more than 4300 digits, a date with month 13: YAML's constructors raise
    a plain ValueError; a ConfigError naming the file or the --set item."""
    p = tmp_path / "c.yaml"
    p.write_text(f"loader:\n  seed: {text}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml is not valid YAML: ") as e:
        load_config(str(p))
    assert len(str(e.value)) < 400
    with pytest.raises(ConfigError, match=r"^--set 'out_dir=.*': the value is not valid YAML"):
        load_config(None, [f"out_dir={text}"])


def test_yaml_nested_too_deeply_is_one_line(tmp_path):
    deep = "[" * 500 + "]" * 500  # past the recursion limit (a few frames a level)
    p = tmp_path / "deep.yaml"
    p.write_text(f"out_dir: {deep}\n")
    with pytest.raises(ConfigError, match=r"deep\.yaml is nested too deeply"):
        load_config(str(p))
    with pytest.raises(ConfigError, match=r"^--set 'out_dir=\[\[.*not valid YAML \(nested "
                                          r"too deeply\)") as e:
        load_config(None, [f"out_dir={deep}"])
    assert len(str(e.value)) < 400


def test_bad_yaml_file_is_one_line_with_its_place(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  lr: 1\nloader: [1, 2\n")
    with pytest.raises(ConfigError, match=r"c\.yaml is not valid YAML: .* \(line 4, column 1\)"
                       ) as e:
        load_config(str(p))
    assert "\n" not in str(e.value)
