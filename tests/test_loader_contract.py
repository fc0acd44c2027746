"""The loader's contract: the README's batch table is the schema in code, a loader's batch
has exactly the schema's keys with their shapes and dtypes, and the removed loader modes
are a one-line error naming the change."""
from pathlib import Path

import pytest
import torch

from dali_pose.loader.batch import BATCH

ROOT = Path(__file__).resolve().parents[1]


def readme_batch_table():
    """(key, shape, dtype, meaning) rows of the README table headed ``| key | shape |``."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    start = lines.index("| key | shape | dtype | meaning |")
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        assert len(cells) == 4, line
        rows.append((cells[0].strip("`"), *cells[1:]))
    return rows


def test_readme_batch_table_is_the_schema():
    assert readme_batch_table() == [(k.name, k.shape, k.dtype, k.meaning) for k in BATCH]


@pytest.mark.parametrize("split", ["train", "val"])
def test_batch_keys_shapes_dtypes_follow_the_schema(tmp_path, split):
    pytest.importorskip("nvidia.dali")
    from dali_pose import build_loader, load_config
    from test_loader import _dot_dataset

    cfg = load_config(None, ["loader.batch_size=2", "loader.image_dtype=uint8"])
    batch = next(iter(build_loader(cfg, split, index=_dot_dataset(tmp_path, 3))))
    want = [k.name for k in BATCH if k.name != "image_flipped" or split == "val"]
    assert list(batch) == want
    n, k, (w, h) = 2, 17, cfg.model.input_size
    sizes = {"N": n, "K": k, "C": k, "H": h, "W": w, "h": h // 4, "w": w // 4}
    for key in BATCH:
        if key.name not in batch:
            continue
        t = batch[key.name]
        shape = tuple(sizes[d] if d in sizes else int(d)
                      for d in key.shape.strip("()").split(",") if d)
        assert tuple(t.shape) == shape, key.name
        dtype = "uint8" if key.dtype in ("float32 / float16 / uint8", "as `image`") \
            else key.dtype
        assert t.dtype == getattr(torch, dtype if dtype != "bool" else "bool"), key.name


@pytest.mark.parametrize("key", ["fast_cpu", "decode_per_image"])
def test_removed_loader_modes_are_an_error_naming_the_change(key):
    from dali_pose.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=f"'loader.{key}' was removed: .*delete the key"):
        load_config(None, [f"loader.{key}=true"])


def test_output_shapes_come_from_the_ports():
    """Every operator's DALI ``setup`` writes the shapes its output ports declare (P read
    from input 0), for samples of 1 and 3 people."""
    pytest.importorskip("nvidia.dali")
    import numpy as np

    from dali_pose import load_config
    from dali_pose.datasets import COCO
    from dali_pose.kernels.op import PEOPLE
    from dali_pose.loader.graph import graph_spec

    cfg = load_config(None, ["occlusion.method=aid", "occlusion.prob=1", "noda.prob=1",
                             "noda.pool=unused.npz"])
    spec = graph_spec(cfg, COCO, train=True, gpu=False)
    ops = [spec.crop, spec.warp, spec.dropping, spec.noda, spec.targets]
    assert not spec.dropping_fused  # NODA pastes between the warp and the dropping
    for op in ops:
        for people in (1, 3):
            ins = [[np.array([people if d == PEOPLE else (d or 7) for d in p.shape],
                             np.int64)] for p in op.inputs]
            outs = [[np.full(p.ndim, -5, np.int64)] for p in op.outputs]
            op.setup(outs, ins)
            for p, o in zip(op.outputs, outs):
                want = tuple(people if d == PEOPLE else d for d in p.shape)
                assert tuple(o[0]) == want, (op.name, p.name)
    w, h = cfg.model.input_size
    assert spec.warp.outputs[0].shape == (PEOPLE, 3, h, w)
    assert [p.shape for p in spec.noda.outputs] == [(PEOPLE, 3, h, w), (PEOPLE, 17)]
    assert spec.crop.outputs[-1].name == "window" and spec.crop.outputs[-1].shape == (4,)
