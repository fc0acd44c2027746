"""Models and weights: the official architectures and key names, published files in their own
layouts (official, mmpose 1.x, dali_pose), ImageNet initialisation, one-line refusals.

The reference here is a *functional* forward pass written from the published architecture
and driven by the file's key names (conv/BN by name with torch.nn.functional): a file built
for it is a file in the official layout, and dali_pose must give the same output from it.
No download: the tensors are random.
"""
import math

import pytest
import numpy as np
import torch
import torch.nn.functional as F

from dali_pose import build_model, load_config
from dali_pose.models.weights import WeightsError

K = 17


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # identical reductions in both forward passes
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------ the functional reference ---

def _bn(x, st, p):
    return F.batch_norm(x, st[p + ".running_mean"], st[p + ".running_var"],
                        st[p + ".weight"], st[p + ".bias"], False, 0.0, 1e-5)


def _conv(x, st, p, stride=1):
    w = st[p + ".weight"]
    return F.conv2d(x, w, st.get(p + ".bias"), stride, w.shape[-1] // 2)


def _block(x, st, p, stride=1):
    """BasicBlock (conv1/bn1, conv2/bn2) or Bottleneck (+ conv3/bn3), stride on conv2 for
    bottlenecks (ResNet v1.5) and conv1 for basic blocks; downsample.0/.1 when present."""
    bottleneck = p + ".conv3.weight" in st
    out = F.relu(_bn(_conv(x, st, p + ".conv1", 1 if bottleneck else stride), st, p + ".bn1"))
    out = _bn(_conv(out, st, p + ".conv2", stride if bottleneck else 1), st, p + ".bn2")
    if bottleneck:
        out = _bn(_conv(F.relu(out), st, p + ".conv3"), st, p + ".bn3")
    short = x
    if p + ".downsample.0.weight" in st:
        short = _bn(_conv(x, st, p + ".downsample.0", stride), st, p + ".downsample.1")
    return F.relu(out + short)


def _count(st, prefix):
    """How many consecutive children ``prefix.0``, ``prefix.1``, ... the file has."""
    n = 0
    while any(k.startswith(f"{prefix}.{n}.") for k in st):
        n += 1
    return n


def _layer(x, st, p, first_stride=1):
    for b in range(_count(st, p)):
        x = _block(x, st, f"{p}.{b}", first_stride if b == 0 else 1)
    return x


def official_hrnet(st, x):
    """PoseHighResolutionNet's forward (HRNet's lib/models/pose_hrnet.py), by key names."""
    x = F.relu(_bn(_conv(x, st, "conv1", 2), st, "bn1"))
    x = F.relu(_bn(_conv(x, st, "conv2", 2), st, "bn2"))
    xs = [_layer(x, st, "layer1")]
    t = 1
    while any(k.startswith(f"transition{t}.") for k in st):  # stage t + 1: t + 1 branches
        new = []
        for i in range(t + 1):
            p = f"transition{t}.{i}"
            if i < len(xs):
                new.append(F.relu(_bn(_conv(xs[i], st, p + ".0"), st, p + ".1"))
                           if p + ".0.weight" in st else xs[i])
            else:
                y = xs[-1]
                for k in range(_count(st, p)):
                    y = F.relu(_bn(_conv(y, st, f"{p}.{k}.0", 2), st, f"{p}.{k}.1"))
                new.append(y)
        xs = new
        stage = f"stage{t + 1}"
        for m in range(_count(st, stage)):
            p = f"{stage}.{m}"
            xs = [_layer(xb, st, f"{p}.branches.{b}") for b, xb in enumerate(xs)]
            out = []
            for i in range(_count(st, f"{p}.fuse_layers")):
                y = None
                for j, xj in enumerate(xs):
                    q = f"{p}.fuse_layers.{i}.{j}"
                    if j == i:
                        z = xj
                    elif j > i:
                        z = F.interpolate(_bn(_conv(xj, st, q + ".0"), st, q + ".1"),
                                          scale_factor=2 ** (j - i), mode="nearest")
                    else:
                        z = xj
                        for k in range(i - j):
                            z = _bn(_conv(z, st, f"{q}.{k}.0", 2), st, f"{q}.{k}.1")
                            z = F.relu(z) if k < i - j - 1 else z
                    y = z if y is None else y + z
                out.append(F.relu(y))
            xs = out
        t += 1
    return _conv(xs[0], st, "final_layer")


def official_pose_resnet(st, x):
    """PoseResNet's forward (lib/models/pose_resnet.py), by key names."""
    x = F.max_pool2d(F.relu(_bn(_conv(x, st, "conv1", 2), st, "bn1")), 3, 2, 1)
    for i in range(1, 5):
        x = _layer(x, st, f"layer{i}", 1 if i == 1 else 2)
    for d in range(0, 9, 3):
        x = F.conv_transpose2d(x, st[f"deconv_layers.{d}.weight"], None, 2, 1, 0)
        x = F.relu(_bn(x, st, f"deconv_layers.{d + 1}"))
    return _conv(x, st, "final_layer")


def _random_state(model, seed):
    """The model's keys and shapes with random values (running_var > 0)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in model.state_dict().items():
        if v.dtype.is_floating_point:
            r = torch.rand(v.shape, generator=g) * 0.2 - 0.1
            out[k] = r.abs() + 0.5 if k.endswith("running_var") else r
        else:
            out[k] = v.clone()
    return out


def _cfg(*over):
    return load_config(None, ["model.input_size=[64,64]", "model.heatmap_size=[16,16]",
                              *over])


# ------------------------------------------------------------------------------ tests ---

def test_official_parameter_counts():
    hr = build_model(load_config())
    assert sum(p.numel() for p in hr.parameters()) == 28_536_113  # HRNet-W32, 17 joints
    sb = build_model(load_config(None, ["model.arch=simplebaseline", "model.depth=50"]))
    n = sum(p.numel() for p in sb.parameters())
    assert round(n / 1e6, 1) == 34.0, n  # SimpleBaseline R-50 at 256x192: 34.0 M
    keys = set(hr.state_dict())
    for k in ("conv1.weight", "bn2.running_var", "layer1.0.downsample.0.weight",
              "transition1.0.0.weight", "transition1.1.0.0.weight",
              "stage2.0.branches.1.3.conv2.weight", "stage3.3.fuse_layers.2.0.1.0.weight",
              "stage4.0.fuse_layers.3.0.2.1.weight", "stage4.2.fuse_layers.0.3.1.weight",
              "final_layer.bias"):
        assert k in keys, k
    assert not any(k.startswith("stage4.2.fuse_layers.1.") for k in keys)
    w48 = build_model(load_config(None, ["model.width=48"]))
    assert w48.state_dict()["final_layer.weight"].shape == (K, 48, 1, 1)


@pytest.mark.parametrize("layout", ["official", "mmpose", "dali_pose"])
@pytest.mark.parametrize("arch", ["hrnet", "simplebaseline"])
def test_each_layout_loads_and_equals_the_official_forward(tmp_path, arch, layout):
    cfg = _cfg(f"model.arch={arch}", "model.width=32")
    state = _random_state(build_model(cfg), seed=1)
    path = tmp_path / f"{arch}_{layout}.pth"
    if layout == "official":
        torch.save(state, path)
    elif layout == "mmpose":
        head = ("final_layer", "deconv_layers")
        # mmengine keeps the dataset's meta; mmpose's sigmas and joint weights are arrays
        meta = {"mmpose_version": "1.3.0", "dataset_meta": {
            "sigmas": np.full(K, 0.025, np.float32), "dataset_keypoint_weights": np.ones(K),
            "num_keypoints": np.int64(K)}}
        torch.save({"meta": meta, "state_dict": {
            ("head." if k.startswith(head) else "backbone.") + k: v
            for k, v in state.items()}}, path)
    else:
        torch.save({"model": state, "config": {}, "epoch": 3}, path)
    model = build_model(_cfg(f"model.arch={arch}", "model.width=32",
                             f"model.weights={path}")).eval()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    ref = (official_hrnet if arch == "hrnet" else official_pose_resnet)(state, x)
    with torch.no_grad():
        out = model(x)
    assert out.shape == ref.shape == (2, K, 16, 16)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    by_hand = build_model(_cfg(f"model.arch={arch}", "model.width=32")).eval()
    by_hand.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(by_hand(x), out)


def test_a_file_of_another_model_is_refused_in_one_line(tmp_path):
    path = tmp_path / "pose_hrnet_w48_256x192.pth"
    torch.save(build_model(_cfg("model.width=48")).state_dict(), path)
    with pytest.raises(WeightsError) as e:
        build_model(_cfg("model.width=32", f"model.weights={path}"))
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "model.width=32" in msg
    assert "first: conv1.weight" not in msg and "(first: " in msg  # names the first mismatch
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match=r"junk\.pth"):
        build_model(_cfg(f"model.weights={tmp_path / 'junk.pth'}"))
    with pytest.raises(WeightsError, match="does not exist"):
        build_model(_cfg(f"model.weights={tmp_path / 'missing.pth'}"))


def test_imagenet_hrnet_file_initialises_the_backbone(tmp_path):
    """An HRNet ImageNet checkpoint's layout: the pose backbone's names, stage4's last
    module multi-scale, plus classification layers; all backbone tensors load, the rest is
    reported as skipped, the pose head stays as initialised."""
    cfg = _cfg("model.width=32")
    model = build_model(cfg)
    head_before = model.state_dict()["final_layer.weight"].clone()
    state = {k: v for k, v in _random_state(model, 3).items() if not k.startswith("final")}
    state["stage4.2.fuse_layers.1.0.0.0.weight"] = torch.zeros(64, 32, 3, 3)
    state["incre_modules.0.0.conv1.weight"] = torch.zeros(32, 32, 1, 1)
    state["final_layer.0.weight"] = torch.zeros(2048, 1024, 1, 1)
    state["classifier.weight"] = torch.zeros(1000, 2048)
    path = tmp_path / "hrnet_w32-36af842e.pth"
    torch.save(state, path)
    lines = []
    model = build_model(_cfg("model.width=32", f"model.pretrained={path}"), log=lines.append)
    (line,) = lines
    n_backbone = sum(1 for k in model.state_dict()
                     if not k.startswith("final") and "num_batches" not in k)
    assert f"loaded {n_backbone} of the backbone's {n_backbone} tensors" in line
    assert "skipped 4 file tensors (classifier, final_layer, incre_modules, stage4)" in line
    for k, v in model.state_dict().items():
        if not k.startswith("final_layer"):
            assert torch.equal(v, state[k]), k
    assert model.state_dict()["final_layer.weight"].shape == head_before.shape


def test_torchvision_resnet_file_initialises_simplebaseline(tmp_path):
    cfg = _cfg("model.arch=simplebaseline", "model.depth=50")
    model = build_model(cfg)
    state = {k: v for k, v in _random_state(model, 4).items()
             if not k.startswith(("deconv", "final")) and "num_batches" not in k}
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    path = tmp_path / "resnet50-19c8e357.pth"
    torch.save(state, path)  # torchvision's 2017 files have no num_batches_tracked
    lines = []
    model = build_model(_cfg("model.arch=simplebaseline", "model.depth=50",
                             f"model.pretrained={path}"), log=lines.append)
    assert "skipped 2 file tensors (fc)" in lines[0]
    sd = model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in state.items() if k in sd)
    with pytest.raises(WeightsError, match=r"resnet50-19c8e357\.pth: only \d+ of the"):
        build_model(_cfg(f"model.pretrained={path}"))  # a ResNet file for an HRNet


def test_msra_codec_changes_only_the_processing():
    a = build_model(_cfg())
    b = build_model(_cfg("model.codec=msra"))
    assert a.state_dict().keys() == b.state_dict().keys()
    assert math.isclose(sum(p.numel() for p in a.parameters()),
                        sum(p.numel() for p in b.parameters()))
