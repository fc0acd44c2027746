"""The GPU backend (nvJPEG window decode, CUDA numba kernels; DALI's warp_affine as the
oracle). Skipped without CUDA.

Run on a GPU machine: ``python -m pytest -q -m gpu tests``.
"""
import pytest
import torch

from dali_pose import build_loader, load_config

pytest.importorskip("nvidia.dali")
pytestmark = pytest.mark.gpu


def _index(tmp_path, n=6):
    from test_loader import _dot_dataset

    return _dot_dataset(tmp_path, n)


def test_gpu_batch_is_cuda_and_matches_cpu_on_validation(tmp_path):
    index = _index(tmp_path)
    cfg = load_config(None, ["loader.batch_size=3"])
    gpu = list(build_loader(cfg, "val", device="gpu", index=index))
    cpu = list(build_loader(cfg, "val", device="cpu", index=index))
    for g, c in zip(gpu, cpu):
        assert g["image"].is_cuda and g["heatmap"].is_cuda and g["matrix"].is_cuda
        for key in ("matrix", "keypoints", "center", "scale", "target_weight"):
            torch.testing.assert_close(g[key].cpu(), c[key], rtol=0, atol=1e-5)
        torch.testing.assert_close(g["heatmap"].cpu(), c["heatmap"], rtol=0, atol=1e-6)
        # the CUDA warp is the CPU's fixed-point arithmetic (float32 output up to FMA
        # contraction); bound: half a grey level, in normalised units
        assert (g["image"].cpu() - c["image"]).abs().max() < 0.6 / (255 * 0.224)


@pytest.mark.parametrize("warp", ["numba", "oracle"])
def test_gpu_dot_test(tmp_path, warp):
    from dali_pose.loader import PoseLoader
    from dali_pose.loader.graph import build_graph
    from dali_pose.loader.oracle import oracle_graph
    from test_loader import dot_errors

    cfg = load_config(None, ["loader.batch_size=6", "aug.rot_prob=1", "aug.half_body_prob=0"])
    loader = PoseLoader(cfg, "train", _index(tmp_path), "gpu", 0, 1,
                        graph=oracle_graph if warp == "oracle" else build_graph)
    errs, _ = dot_errors(loader, 3)
    assert len(errs) > 30 and max(errs) < 0.05, max(errs)


def test_gpu_occlusion_and_combined_targets(tmp_path):
    cfg = load_config(None, ["loader.batch_size=6", "occlusion.method=aid", "occlusion.prob=1",
                             "model.target=combined", "loader.image_dtype=float16"])
    batch = next(iter(build_loader(cfg, "train", device="gpu", index=_index(tmp_path))))
    assert batch["image"].dtype == torch.float16 and batch["heatmap"].shape[1] == 51
