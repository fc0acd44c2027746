"""The loader inside other people's trainers: epochs that advance on every ``iter()``,
``sampler.set_epoch``, mid-epoch resume (``state_dict`` / ``load_state_dict``) that skips
the reads of the batches before it, and validation shards of equal batch counts."""
import itertools

import numpy as np
import pytest

from dali_pose.loader.plan import image_epoch, runs_needed, skip_batches


def groups_of(people):
    """Index rows grouped by image: image i holds people[i] consecutive rows."""
    start = np.concatenate([[0], np.cumsum(people)])
    return [np.arange(start[i], start[i + 1]) for i in range(len(people))]


# ---------------------------------------------------------------- plan (pure) ----
@pytest.mark.parametrize("shards", [1, 2, 3, 4])
@pytest.mark.parametrize("b", [3, 8])
def test_validation_shards_equal_counts_and_every_instance_once(shards, b):
    people = [3, 1, 1, 4, 2, 1, 1, 5, 1, 2, 1]  # 22 people: ranks get unequal shares
    groups = groups_of(people)
    counts, seen = set(), []
    for r in range(shards):
        plan = image_epoch(groups, b, train=False, seed=0, epoch=0, shard_id=r,
                           num_shards=shards)
        counts.add(len(plan.batches))
        for k, v in enumerate(plan.valid):
            rows = plan.batch_rows(k)
            assert len(rows) == b  # every batch full size, padding included
            assert 0 <= v <= b
            seen += rows[:v].tolist()
            # padding rows repeat a real row of this rank (no decode of its own)
            assert set(rows[v:].tolist()) <= set(np.concatenate(plan.reads).tolist())
        assert runs_needed(plan, b)[-1] == -(-len(plan.reads) // b)
    assert len(counts) == 1  # the same number of batches on every rank
    assert sorted(seen) == list(range(sum(people)))  # exactly once among valid rows


@pytest.mark.parametrize("train", [True, False])
def test_skip_batches_is_the_rest_of_the_epoch_without_earlier_reads(train):
    people = [3, 2, 1, 3, 2, 4, 1, 2, 1, 1, 2, 3, 1]
    plan = image_epoch(groups_of(people), 3, train=train, seed=4, epoch=2, buffer=4,
                       drop_last=False)
    n = len(plan.batches)
    for k in range(n + 1):
        rest = skip_batches(plan, k)
        assert len(rest.batches) == n - k
        for j in range(n - k):
            np.testing.assert_array_equal(rest.batch_rows(j), plan.batch_rows(k + j))
        assert rest.valid == plan.valid[k:]
        used = {d for bt in plan.batches[k:] for d in bt[:, 0].tolist()}
        assert [g.tolist() for g in rest.reads] == [plan.reads[d].tolist()
                                                      for d in sorted(used)]
    assert len(skip_batches(plan, n - 1).reads) < len(plan.reads)


# ------------------------------------------------------------------ the loader ----
@pytest.fixture(scope="module")
def train_loader(tmp_path_factory):
    pytest.importorskip("nvidia.dali")
    from test_per_image import crowd_dataset

    from dali_pose import build_loader, load_config

    index = crowd_dataset(tmp_path_factory.mktemp("clients"),
                          people=(3, 2, 1, 3, 2, 4, 1, 2))
    cfg = load_config(None, ["loader.batch_size=3", "loader.shuffle_buffer=4",
                             "loader.drop_last=false", "loader.image_dtype=uint8",
                             "loader.pipelines=1"])
    return build_loader(cfg, "train", index=index, log=None)


def rows_of(batches):
    return [b["row"].tolist() for b in batches]


def plan_rows(loader, epoch):
    plan = loader._plan(epoch)
    return [plan.batch_rows(k).tolist() for k in range(len(plan.batches))]


def test_islice_and_zip_advance_the_epoch(train_loader):
    loader = train_loader
    loader.set_epoch(0)
    n = len(loader)
    seen = [rows_of(itertools.islice(loader, n)) for _ in range(2)]  # no StopIteration
    seen.append(rows_of(b for _, b in zip(range(n), loader)))
    assert seen == [plan_rows(loader, e) for e in (0, 1, 2)]
    assert seen[0] != seen[1]
    assert loader.state_dict()["epoch"] == 3 and loader.state_dict()["batch"] == 0
    it = iter(loader)  # broken off after one batch: the next iter() still moves on
    next(it)
    assert loader.state_dict()["batch"] == 1
    assert rows_of(loader) == plan_rows(loader, 4)
    loader.set_epoch(1)  # set_epoch since the last iter() started: that epoch
    assert rows_of(loader) == plan_rows(loader, 1)


def test_sampler_set_epoch_reaches_the_loader(train_loader):
    loader = train_loader
    loader.sampler.set_epoch(7)  # what Lightning and accelerate call at each epoch start
    assert loader.epoch == 7 and loader.sampler.epoch == 7
    assert len(loader.sampler) == len(loader) == len(plan_rows(loader, 7))
    assert rows_of(loader) == plan_rows(loader, 7)
    loader.sampler.set_epoch(7)  # a restart of the same epoch replays it
    assert rows_of(loader) == plan_rows(loader, 7)


def test_resume_mid_epoch_equals_the_rest_and_skips_earlier_reads(train_loader):
    loader = train_loader
    source = loader._lanes[0][0]
    loader.set_epoch(3)
    before = source.reads_served
    whole = list(loader)
    assert source.reads_served - before == len(loader._plan(3).reads)
    n = len(whole)
    for k in (1, n - 2):
        loader.set_epoch(3)
        it = iter(loader)
        for _ in range(k):
            next(it)
        state = loader.state_dict()
        assert (state["epoch"], state["batch"]) == (3, k)
        loader.set_epoch(0)  # anything in between
        list(loader)
        loader.load_state_dict(state)
        loader.sampler.set_epoch(3)  # Lightning sets the epoch again on restart: kept
        before = source.reads_served
        rest = list(loader)
        assert len(rest) == n - k
        for a, b in zip(rest, whole[k:]):
            for key in a:
                assert a[key].equal(b[key]), key  # bit for bit
        want = len(skip_batches(loader._plan(3), k).reads)
        assert source.reads_served - before == want < len(loader._plan(3).reads)
        assert loader.state_dict()["epoch"] == 4  # the last batch finished the epoch


def test_state_after_the_last_batch_is_the_next_epoch(train_loader):
    loader = train_loader
    loader.set_epoch(5)
    for _ in itertools.islice(loader, len(loader)):
        pass
    assert loader.state_dict()["epoch"] == 6 and loader.state_dict()["batch"] == 0
    # a part-way state of another plan is refused, naming what differs
    other = not loader.cfg.loader.drop_last
    for key, value, name in (("num_shards", 2, "the number of ranks = 2"),
                             ("shuffle_buffer", 7, "loader.shuffle_buffer = 7"),
                             ("drop_last", other, f"loader.drop_last = {other}"),
                             ("people", len(loader.index) + 1, "the index's people")):
        state = dict(loader.state_dict(), epoch=5, batch=1, **{key: value})
        with pytest.raises(ValueError, match=f"with {name}"):
            loader.load_state_dict(state)
    loader.load_state_dict(dict(loader.state_dict(), epoch=5, batch=1))  # the same plan


@pytest.mark.parametrize("shards", [2, 3])
def test_validation_ranks_yield_equal_batches_with_valid_rows(tmp_path, shards):
    pytest.importorskip("nvidia.dali")
    from test_per_image import crowd_dataset

    from dali_pose import build_loader, load_config

    people = (3, 2, 1, 3, 1)
    index = crowd_dataset(tmp_path, people=people)
    cfg = load_config(None, ["loader.batch_size=2", "loader.image_dtype=uint8",
                             "loader.pipelines=1"])
    counts, seen = set(), []
    for r in range(shards):
        batches = list(build_loader(cfg, "val", index=index, shard_id=r, num_shards=shards,
                                    log=None))
        counts.add(len(batches))
        for b in batches:
            assert b["valid"].dtype.is_floating_point is False and len(b["valid"]) == 2
            assert all(len(v) == 2 for v in b.values())
            seen += b["instance_id"][b["valid"]].tolist()
    assert len(counts) == 1
    assert sorted(seen) == sorted(index.instance_id.tolist())


# ------------------------------------------------------------------ memory bound ----
def test_held_memory_of_a_coco_like_epoch_is_the_buffer_plus_a_run():
    """A simulated 20,000-image COCO-like epoch (batch 32, buffer 512): the crops held
    peak at the shuffle buffer plus one run's crops; batches allocated whole at their first
    crop would have held tens of batches (the README states both)."""
    from test_per_image import coco_like_groups

    from dali_pose.loader.plan import held_peak

    groups = coco_like_groups(np.random.default_rng(0), 20000)
    plan = image_epoch(groups, 32, train=True, seed=0, epoch=0, buffer=512)
    crops, open_batches = held_peak(plan, 32)
    biggest_run = max(sum(len(d) for d in plan.reads[s:s + 32])
                      for s in range(0, len(plan.reads), 32))
    assert 512 <= crops <= 512 + biggest_run
    crop_bytes = (3 * 256 * 192 + 17 * 64 * 48) * 4  # float32 crop + its heatmaps
    assert crops * crop_bytes < 0.5 * 2 ** 30  # measured: 610 crops, 0.45 GiB
    assert open_batches * 32 > 3 * crops  # measured: 74 batches, 1.8 GiB


def test_a_paused_epoch_holds_only_the_crops_waiting(train_loader, monkeypatch):
    import dali_pose.loader.iterator as iterator

    made = []

    class Recorded(iterator.Batches):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self)

    monkeypatch.setattr(iterator, "Batches", Recorded)
    loader = train_loader
    loader.set_epoch(2)
    plan = loader._plan(2)
    it = iter(loader)
    next(it)  # paused after one batch, as Lightning pauses for validation
    allocated = sum(len(rows) for parts in made[-1].filling.values() for rows, _ in parts)
    assert allocated == made[-1].held > 0
    assert sum(len(t["image"]) for parts in made[-1].filling.values()
               for _, t in parts) == allocated
    rest = list(it)
    assert made[-1].peak == held_peak_of(plan, loader.batch_size) and not made[-1].filling
    assert len(rest) == len(plan.batches) - 1


def held_peak_of(plan, run_size):
    from dali_pose.loader.plan import held_peak

    return held_peak(plan, run_size)[0]
