"""train.py says once how it set the learning rate when the run's total batch is not the
recipe's (train.base_batch_size), and says nothing when it is."""
import pytest

from conftest import SMALL_LOADER, run_train, synthetic_data, train_argv


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return synthetic_data(tmp_path_factory, num_train=4, num_val=1)


def _train(d, out, base):
    r = run_train(train_argv(d, out, *SMALL_LOADER, "train.epochs=1", "train.validate=false",
                             "train.lr=0.002", f"train.base_batch_size={base}", val=False)
                  + ["--max-batches", "1"], timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return r.stdout + r.stderr


@pytest.mark.slow
def test_total_batch_line(tiny, tmp_path):
    out = _train(tiny, tmp_path / "a", 8)
    lines = [x for x in out.splitlines() if "base_batch_size" in x]
    assert len(lines) == 1, out[-2000:]
    assert "total batch 4 (1 x 4)" in lines[0] and "0.002 x 4/8 = 0.001" in lines[0]
    assert "base_batch_size" not in _train(tiny, tmp_path / "b", 4)
