"""Randomness as data: the per-sample draws and the epoch plans depend on (seed, epoch, row)
and on nothing else (:mod:`dali_pose.draws`, :mod:`dali_pose.loader.plan`)."""
import numpy as np
import pytest

from dali_pose.draws import pool_pick, sample_draws
from dali_pose.loader.plan import image_epoch


def _flat(d):
    """The draws but the gates (a gate is 0 or 1, equal by chance)."""
    return np.concatenate([d.uniform, d.normal, d.occlusion[1:], d.noda[1:]])


def test_draws_follow_the_documented_generator():
    # the module docstring's rule, written out: one generator per (seed, epoch, row), in the
    # order six geometry uniforms, two normals, occlusion, noda, then the seventh uniform
    # (mmpose's shift gate, appended last); the kernels' first draw becomes the gate
    d = sample_draws(7, 3, 11, n_occlusion=4, n_noda=3, occlusion_prob=1.0, noda_prob=0.0)
    rng = np.random.default_rng([7, 3, 11])
    u = rng.random(6, dtype=np.float32)
    n = rng.standard_normal(2, dtype=np.float32)
    occ = rng.random(4, dtype=np.float32)
    nod = rng.random(3, dtype=np.float32)
    u = np.r_[u, rng.random(dtype=np.float32)]
    np.testing.assert_array_equal(d.uniform, u)
    np.testing.assert_array_equal(d.normal, n)
    np.testing.assert_array_equal(d.occlusion, np.r_[1.0, occ[1:]].astype(np.float32))
    np.testing.assert_array_equal(d.noda, np.r_[0.0, nod[1:]].astype(np.float32))
    assert pool_pick(7, 3, 11, 1000) == int(np.random.default_rng([7, 3, 11, 1]).integers(1000))


@pytest.mark.parametrize("change", ["seed", "epoch", "row"])
def test_every_epoch_row_and_seed_gets_its_own_draws(change):
    """Each of seed, epoch and row changes every sample's draws (a generator that ignores
    one of them would give every epoch the same augmentation)."""
    base = dict(seed=1, epoch=2, row=0)
    for row in range(20):
        a = dict(base, row=row)
        b = dict(a, **{change: a[change] + 1})
        da = sample_draws(a["seed"], a["epoch"], a["row"], n_occlusion=3, n_noda=3)
        db = sample_draws(b["seed"], b["epoch"], b["row"], n_occlusion=3, n_noda=3)
        assert not np.any(_flat(da) == _flat(db)), (a, b)
        # and the same key gives the same draws
        np.testing.assert_array_equal(
            _flat(da), _flat(sample_draws(a["seed"], a["epoch"], a["row"], 3, 3)))
    picks_a = [pool_pick(1, 2, r, 10 ** 6) for r in range(20)]
    picks_b = [pool_pick(base["seed"] + (change == "seed"), 2 + (change == "epoch"),
                         r + (change == "row"), 10 ** 6) for r in range(20)]
    assert sum(x == y for x, y in zip(picks_a, picks_b)) == 0


def test_shuffle_buffer_depends_on_the_epoch():
    """One image of 40 people: every epoch decodes it alone, so the batches differ between
    epochs only through the shuffle buffer's generator, which must take the epoch."""
    groups = [np.arange(40)]
    plans = [image_epoch(groups, 8, train=True, seed=0, epoch=e, buffer=40) for e in range(3)]
    orders = [np.concatenate([p.batch_rows(b) for b in range(len(p.batches))]) for p in plans]
    for o in orders:
        assert sorted(o.tolist()) == list(range(40))  # each person once
    assert not np.array_equal(orders[0], orders[1])
    assert not np.array_equal(orders[1], orders[2])
    again = image_epoch(groups, 8, train=True, seed=0, epoch=1, buffer=40)
    np.testing.assert_array_equal(
        np.concatenate([again.batch_rows(b) for b in range(len(again.batches))]), orders[1])
    other_seed = image_epoch(groups, 8, train=True, seed=1, epoch=0, buffer=40)
    assert not np.array_equal(
        np.concatenate([other_seed.batch_rows(b) for b in range(5)]), orders[0])
