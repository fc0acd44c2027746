"""The GPU backend (nvJPEG window decode, CUDA numba kernels; DALI's warp_affine as the
oracle). Skipped without CUDA.

Run on a GPU machine: ``python -m pytest -q -m gpu tests``.
"""
import pytest
import torch

from dali_pose import build_loader, load_config

pytest.importorskip("nvidia.dali")

# The configs the GPU tests build: loaded, and their GPU graphs specified, on the CPU too
# (``test_gpu_configs_load_here``), so that a key the config no longer takes fails here
# rather than only on a GPU machine.
CONFIGS = {
    "val": ["loader.batch_size=3"],
    "dots": ["loader.batch_size=6", "aug.rot_prob=1", "aug.half_body_prob=0"],
    "occlusion": ["loader.batch_size=6", "occlusion.method=aid", "occlusion.prob=1",
                  "model.target=combined", "loader.image_dtype=float16"],
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_gpu_configs_load_here(name):
    from dali_pose.datasets import COCO
    from dali_pose.loader.graph import graph_spec

    cfg = load_config(None, CONFIGS[name])
    for train in (True, False):
        spec = graph_spec(cfg, COCO, train=train, gpu=True)
        assert spec.gpu and spec.warp is not None  # the GPU's default: our CUDA warp


def _index(tmp_path, n=6):
    from test_loader import _dot_dataset

    return _dot_dataset(tmp_path, n)


@pytest.mark.gpu
def test_gpu_batch_is_cuda_and_matches_cpu_on_validation(tmp_path):
    index = _index(tmp_path)
    cfg = load_config(None, CONFIGS["val"])
    gpu = list(build_loader(cfg, "val", device="gpu", index=index))
    cpu = list(build_loader(cfg, "val", device="cpu", index=index))
    for g, c in zip(gpu, cpu):
        assert g["image"].is_cuda and g["heatmap"].is_cuda and g["matrix"].is_cuda
        for key in ("matrix", "keypoints", "center", "scale", "target_weight"):
            torch.testing.assert_close(g[key].cpu(), c[key], rtol=0, atol=1e-5)
        torch.testing.assert_close(g["heatmap"].cpu(), c["heatmap"], rtol=0, atol=1e-6)
        # the same fixed-point numba warp, CUDA vs CPU: float32 rounding only (1e-6 under
        # numba's CUDA simulator). 1e-4 in normalised units is about 1/170 of a grey level;
        # DALI's uint8 warp_affine would be off by up to half of one. Tighten from a GPU run.
        assert (g["image"].cpu() - c["image"]).abs().max() < 1e-4


@pytest.mark.gpu
@pytest.mark.parametrize("warp", ["numba", "oracle"])
def test_gpu_dot_test(tmp_path, warp):
    from dali_pose.loader import PoseLoader
    from dali_pose.loader.graph import build_graph
    from dali_pose.loader.oracle import oracle_graph
    from test_loader import dot_errors

    cfg = load_config(None, CONFIGS["dots"])
    loader = PoseLoader(cfg, "train", _index(tmp_path), "gpu", 0, 1,
                        graph=oracle_graph if warp == "oracle" else build_graph)
    errs, _ = dot_errors(loader, 3)
    assert len(errs) > 30 and max(errs) < 0.05, max(errs)


@pytest.mark.gpu
def test_gpu_occlusion_and_combined_targets(tmp_path):
    cfg = load_config(None, CONFIGS["occlusion"])
    batch = next(iter(build_loader(cfg, "train", device="gpu", index=_index(tmp_path))))
    assert batch["image"].dtype == torch.float16 and batch["heatmap"].shape[1] == 51
