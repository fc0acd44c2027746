"""``build_loader``: DALI pipelines behind the interface of a torch DataLoader.

The caller never imports DALI. Each batch is a dict of torch tensors, the keys of
:data:`.batch.BATCH`. Epochs and shards: :mod:`.plan`: each image is decoded once per
epoch for all its people and their crops are mixed by a seeded shuffle buffer
(:func:`.plan.image_epoch`); every person comes once per epoch, ranks hold disjoint
people and the same number of batches, and ``len()`` is exact. Augmentation: every random
draw of a training crop is a pure function of (loader.seed, epoch, row)
(:mod:`dali_pose.draws`), so an epoch's batches do not depend on what ran before it, and a
person's crop does not depend on which other people its image has (the crops are the
same bit for bit).

Epochs (the contract trainers rely on): each new ``iter()`` starts the next epoch (the
first: epoch 0), unless :meth:`PoseLoader.set_epoch` was called since the last one started;
then it starts that epoch (a ``set_epoch`` between ``iter()`` and its first batch also
counts: Lightning calls them in that order). So ``itertools.islice(loader, len(loader))``, a trainer that
stops after ``len()`` batches and one that breaks off early all move on, and
``set_epoch(e)`` always wins. An epoch whose last batch was handed out counts as finished
(``state_dict()`` then says the next epoch, batch 0). ``loader.sampler.set_epoch`` is the
same call where Lightning and accelerate look for it. ``state_dict()`` /
``load_state_dict()`` (the stateful-dataloader protocol of Lightning and accelerate): a
loader loaded with the state taken after ``k`` batches of epoch ``e`` yields batches
``k``.. of epoch ``e`` on its next ``iter()`` (unless ``set_epoch`` picks another epoch),
the same bit for bit, decoding only the images those batches read (:func:`.plan.skip_batches`).
Validation: every rank yields the same number of batches of ``batch_size`` rows; the rows
that pad the last ones have ``batch["valid"]`` False. Occlusion and NODA switch on at ``occlusion.start_epoch`` /
``noda.start_epoch`` with their configured probabilities, or as :meth:`PoseLoader.set_prob`
says; the probability reaches the kernels as data, so changing it rebuilds nothing.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ..datasets import DatasetError, PoseIndex, load_index
from ..errors import NoGpuError
from .batch import make_batch
from .failures import run_failure
from .graph import Outputs, build_graph, graph_spec, make_pipeline
from .plan import (ImageEpoch, image_epoch, image_groups, occlusion_probs, runs, runs_needed,
                   skip_batches)
from .scatter import Batches
from .sources import BatchSource, PoolSource, upload_pool


class PoseLoader:
    """Iterable of batch dicts (see the module docstring). ``len()`` = batches per epoch.

    Several DALI pipelines ("lanes") take runs of reads in turn: DALI runs a CPU numba
    operator's samples one after another on one thread, so one lane cannot fill the cores.
    A bad image ends the epoch with a ``DatasetError`` naming it (or is skipped,
    ``data.on_bad_image``); the next ``iter()`` starts a clean epoch on fresh pipelines. A
    new ``iter()`` while an earlier one is unfinished ends the earlier one (its next
    ``next()`` stops). ``graph``: the function defining the DALI graph (default
    :func:`.graph.build_graph`; the tests and the benchmark pass :func:`.oracle.oracle_graph`).
    """

    def __init__(self, cfg, split: str, index: PoseIndex, device: str, shard_id: int,
                 num_shards: int, device_id: Optional[int] = None, log=print,
                 graph=build_graph):
        self.cfg, self.split, self.index = cfg, split, index
        self.info = index.info
        self.train = split == "train"
        self.device = device
        self.shard_id, self.num_shards = shard_id, num_shards
        self.batch_size = cfg.loader.batch_size
        self._next_epoch = 0  # the epoch the next iter() starts
        self._running: Optional[int] = None  # the epoch of an unfinished iteration
        self._handed = 0  # ... and how many of its batches were handed out
        self._resume: Optional[tuple] = None  # (epoch, batch) from load_state_dict
        self._begun = True  # the latest iter() has produced its first batch
        self.sampler = EpochSampler(self)
        self.batch_sampler = None  # Lightning reads it next to sampler (the loader batches)
        self._prob = {}  # set_prob overrides
        self._generation = 0  # which iter() owns the pipelines
        self._dirty = False  # the pipelines hold what an unfinished epoch prefetched
        self._failed = False  # ... and an epoch failed: they are rebuilt
        self._plan_of = (None, None)  # (epoch, its plan)
        self._graph = graph
        gpu = device == "gpu"
        if gpu:
            self._torch_device = torch.device(
                "cuda", torch.cuda.current_device() if device_id is None else device_id)
        else:
            self._torch_device = torch.device("cpu")
        self.spec = graph_spec(cfg, self.info, train=self.train, gpu=gpu)
        # the rows of each image, in index order (val: det boxes of one image share it)
        self._groups = image_groups(np.asarray(index.image_paths))
        self._check_sizes()
        pool = pool_data = None
        if self.spec.noda is not None:
            from .pool import load_pool

            pool = load_pool(cfg.noda.pool, cfg.noda)
            if pool.kps.shape[1] != self.info.num_joints:
                raise DatasetError(f"NODA pool {cfg.noda.pool} has {pool.kps.shape[1]} joints, "
                                   f"the dataset {self.info.num_joints}")
            pool_data = upload_pool(pool, self._torch_device)  # one copy for all lanes
        self._lanes = []
        for _ in range(cfg.loader.pipelines):
            source = BatchSource(index, train=self.train, seed=cfg.loader.seed,
                                 n_occlusion=self.spec.n_occlusion,
                                 n_noda=self.spec.noda.num_draws if pool else 0,
                                 on_bad_image=cfg.data.on_bad_image, log=log)
            pool_source = None if pool is None else PoolSource(source, pool,
                                                               pool_data=pool_data)
            self._lanes.append([source, pool_source, self._pipeline(source, pool_source)])

    def _pipeline(self, source, pool_source):
        c = self.cfg.loader
        return make_pipeline(self.spec, source, pool_source, batch_size=self.batch_size,
                             num_threads=max(1, c.num_threads // c.pipelines),
                             device_id=self._torch_device.index if self.device == "gpu"
                             else None, prefetch=c.prefetch, seed=c.seed, graph=self._graph)

    def _check_sizes(self) -> None:
        n, what = len(self.index), f"{self.split} split ({self.index.source})"
        if self.num_shards > n:
            raise DatasetError(f"{what}: {n} people for {self.num_shards} ranks: every rank "
                               f"needs at least one")
        if self.num_shards > len(self._groups):
            raise DatasetError(f"{what}: {len(self._groups)} images for {self.num_shards} "
                               f"ranks: every rank needs at least one")
        per_rank = n // self.num_shards
        if self.train and self.cfg.loader.drop_last and (
                per_rank < self.batch_size or not self._plan().batches):
            raise DatasetError(f"{what}: {n} people give {per_rank} per rank, fewer than one "
                               f"batch of loader.batch_size={self.batch_size} "
                               f"(loader.drop_last drops it): no training step")

    @property
    def epoch(self) -> int:
        """The epoch of the unfinished iteration, if one is running; else the epoch the
        next ``iter()`` starts."""
        return self._next_epoch if self._running is None else self._running

    def _plan(self, epoch: Optional[int] = None) -> ImageEpoch:
        """``epoch``'s plan for this rank (default :attr:`epoch`; cached: ``len()`` and
        ``iter()`` share it)."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self._plan_of[0] == epoch:
            return self._plan_of[1]
        c = self.cfg.loader
        kw = dict(train=self.train, seed=c.seed, epoch=epoch, shard_id=self.shard_id,
                  num_shards=self.num_shards, drop_last=c.drop_last)
        plan = image_epoch(self._groups, self.batch_size, buffer=c.shuffle_buffer, **kw)
        self._plan_of = (epoch, plan)
        return plan

    def __len__(self) -> int:
        """Batches of :attr:`epoch` (the whole epoch, also when resuming part-way)."""
        return len(self._plan().batches)

    def state_dict(self) -> dict:
        """Where the loader stands: ``epoch`` and ``batch`` (batches of it handed out) of
        the unfinished iteration, else the next epoch and 0; with the seed and shard it
        holds for (a plain dict of ints: save it with the model)."""
        if self._running is not None:
            epoch, batch = self._running, self._handed
        elif self._resume is not None:
            epoch, batch = self._resume
        else:
            epoch, batch = self._next_epoch, 0
        c = self.cfg.loader
        return {"epoch": int(epoch), "batch": int(batch), "seed": int(c.seed),
                "shard_id": self.shard_id, "num_shards": self.num_shards,
                "batch_size": self.batch_size, "shuffle_buffer": int(c.shuffle_buffer),
                "drop_last": bool(c.drop_last), "people": len(self.index)}

    def load_state_dict(self, state: dict) -> None:
        """Continue where ``state`` (from :meth:`state_dict`) stood: the next ``iter()``
        yields batch ``state["batch"]``.. of ``state["epoch"]``. Every rank has the same
        batches per epoch, so a state another rank took (Lightning saves rank 0's for all)
        resumes this rank's shard at the same batch. A part-way state taken with another
        seed, number of shards, batch size, shuffle buffer, ``drop_last`` or number of
        people in the index is a ``ValueError`` (its epoch's plan is another: the rest of
        it cannot be told)."""
        try:
            epoch, batch = int(state["epoch"]), int(state["batch"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"load_state_dict: not a loader state ({e!r})") from None
        if batch:
            mine = self.state_dict()
            names = {"seed": "loader.seed", "num_shards": "the number of ranks",
                     "batch_size": "loader.batch_size",
                     "shuffle_buffer": "loader.shuffle_buffer",
                     "drop_last": "loader.drop_last", "people": "the index's people"}
            for key, name in names.items():
                if key in state and int(state[key]) != int(mine[key]):
                    raise ValueError(
                        f"load_state_dict: the state stopped part-way through epoch {epoch} "
                        f"with {name} = {state[key]}, this loader has {mine[key]}: "
                        f"resume with the same {name}, or from the start of an epoch")
            if batch > len(self._plan(epoch).batches):
                raise ValueError(f"load_state_dict: batch {batch} of epoch {epoch}, which "
                                 f"has {len(self._plan(epoch).batches)}")
            if batch == len(self._plan(epoch).batches):  # that epoch was done
                epoch, batch = epoch + 1, 0
        self._resume = (epoch, batch) if batch else None
        if not self._begun:  # an iter() that has not begun yet resumes there
            self._running, self._next_epoch, self._handed = epoch, epoch + 1, batch
        else:
            self._running, self._next_epoch = None, epoch

    @property
    def skipped_images(self) -> dict:
        """path -> why, for the images skipped so far (``data.on_bad_image: skip``)."""
        return {p: m for source, _, _ in self._lanes for p, m in source.bad.items()}

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle and augmentation of ``epoch`` for the next iteration (like
        DistributedSampler). A part-way state loaded for this very epoch is kept (Lightning
        calls this on a restart too); any other epoch drops it. An unfinished iteration
        counts as abandoned."""
        epoch = int(epoch)
        if self._resume is not None and self._resume[0] != epoch:
            self._resume = None
        if not self._begun:  # an iter() that has not begun takes this epoch (Lightning
            # calls iter() before set_epoch in its first epoch)
            self._running, self._next_epoch = epoch, epoch + 1
            self._handed = self._resume[1] if self._resume else 0
        else:
            self._running = None
            self._next_epoch = epoch

    def set_prob(self, occlusion: Optional[float] = None, noda: Optional[float] = None):
        """Override the scheduled occlusion / NODA probability from the next epoch on
        (None: back to the schedule of the config)."""
        for key, p in (("occlusion", occlusion), ("noda", noda)):
            if p is not None and not 0.0 <= p <= 1.0:
                raise ValueError(f"set_prob: {key} probability {p} is not in [0, 1]")
            self._prob[key] = p

    def prob(self, epoch: Optional[int] = None):
        """(occlusion, NODA) probability of ``epoch`` (default: the next one)."""
        scheduled = occlusion_probs(self.cfg, self.epoch if epoch is None else epoch)
        return tuple(s if self._prob.get(k) is None else self._prob[k]
                     for k, s in zip(("occlusion", "noda"), scheduled))

    def __iter__(self):
        """Start the next epoch (see the module docstring); the batches come from the
        returned generator."""
        self._generation += 1
        epoch = self._next_epoch
        self._next_epoch = epoch + 1
        self._running, self._begun = epoch, False
        self._handed = self._resume[1] if self._resume and self._resume[0] == epoch else 0
        return self._batches(self._generation)

    def _batches(self, generation: int):
        if generation != self._generation:  # a newer iter() came before the first batch
            return
        # the epoch is settled at the first next(): set_epoch may retarget a fresh iter()
        epoch, start, self._begun = self._running, self._handed, True
        self._resume = None
        if self._dirty:  # an earlier iteration was abandoned part-way, or failed
            self._drain()
        plan = self._plan(epoch)
        n_batches = len(plan.batches)
        if start:
            plan = skip_batches(plan, start)
        occlusion, noda = self.prob(epoch)
        n_lanes = len(self._lanes)
        all_runs = runs(plan, self.batch_size)
        for lane, (source, pool_source, _) in enumerate(self._lanes):
            source.start(all_runs[lane::n_lanes], epoch, occlusion, noda)
            if pool_source is not None:
                pool_source.start()
        self._dirty = True
        # each crop of a run goes to its batch; a batch is handed out once its runs are done
        filling = Batches(plan, self._torch_device)
        need = runs_needed(plan, self.batch_size)
        flip_test = not self.train and self.cfg.loader.flip_test
        done = 0
        try:
            for b in range(len(plan.valid)):
                if generation != self._generation:  # a newer iter() took the pipelines over
                    return
                while done < need[b]:
                    filling.put(self._run(done), done * self.batch_size)
                    done += 1
                batch = make_batch(filling.take(b), self.index, flip_test,
                                   valid=plan.valid[b])
                if generation == self._generation:  # count it before the caller has it
                    self._handed = start + b + 1
                    if self._handed == n_batches:  # the last batch: the epoch is done
                        self._running = None
                yield batch
        finally:  # an abandoned or failed epoch: free the batches it was filling
            filling.clear()
        if generation == self._generation:
            self._drain()

    def _run(self, k: int) -> Outputs:
        """The outputs of run ``k`` of the epoch (its lane's next); a failure ends the
        epoch with a ``DatasetError`` naming the run's files."""
        n_lanes = len(self._lanes)
        source, _, pipe = self._lanes[k % n_lanes]
        try:
            return Outputs._make(pipe.run())  # the graph returns the Outputs fields in order
        except DatasetError:
            self._failed = True
            raise
        except Exception as e:  # DALI's own failure: name the files of the run
            self._failed = True
            rows = [d[0] for d in source.runs[k // n_lanes]]
            raise run_failure(e, self.split, (self.index.image_paths[r] for r in rows)) from e

    def _drain(self) -> None:
        """End the epoch in every pipeline: run it into its source's StopIteration (what it
        prefetched) and reset it; a pipeline that failed is built anew."""
        for lane in self._lanes:
            source, pool_source, pipe = lane
            source.finish()
            if pool_source is not None:
                pool_source.finish()
            try:
                while True:
                    pipe.run()
            except StopIteration:
                pipe.reset()
            except Exception:  # a bad file among the prefetched batches
                self._failed = True
            if self._failed:
                lane[2] = self._pipeline(source, pool_source)
        self._failed = self._dirty = False


class EpochSampler:
    """``loader.sampler``: where Lightning and accelerate look for ``set_epoch`` (they call
    it at every epoch start, restarts included); it sets the loader's epoch. ``len()``: the
    loader's batches; ``epoch``: the loader's."""

    def __init__(self, loader: PoseLoader):
        self._loader = loader

    def set_epoch(self, epoch: int) -> None:
        self._loader.set_epoch(epoch)

    @property
    def epoch(self) -> int:
        return self._loader.epoch

    def __len__(self) -> int:
        return len(self._loader)


def build_loader(cfg, split: str, *, device: Optional[str] = None, shard_id: int = 0,
                 num_shards: int = 1, index: Optional[PoseIndex] = None,
                 device_id: Optional[int] = None, log=print) -> PoseLoader:
    """A drop-in DataLoader for ``split`` ('train' or 'val').

    ``device`` overrides ``cfg.loader.device`` ('gpu' needs CUDA; 'cpu' runs DALI's CPU
    backend); ``device_id`` picks the GPU (default: torch's current device). ``index`` lets
    a caller pass a prebuilt dataset index. ``log`` receives the lines that report what the
    index left out and which images were skipped (None: quiet, e.g. on ranks > 0).
    """
    device = device or cfg.loader.device
    if device not in ("gpu", "cpu"):
        raise ValueError(f"device must be 'gpu' or 'cpu', got {device!r}")
    if device == "gpu" and not torch.cuda.is_available():
        raise NoGpuError()
    if index is None:
        index = load_index(cfg, split, log)
    return PoseLoader(cfg, split, index, device, shard_id, num_shards, device_id, log)
