"""Train a pose network on the dali_pose loader; validate, checkpoint and log every epoch.

    python train.py --config CFG [--set train.epochs=...] [--resume auto|PATH] [--overwrite]
                    [--max-batches N]
    torchrun --nproc_per_node 4 train.py --config CFG          # DDP, one GPU per process

Reads top to bottom: config -> processes and devices -> out_dir (locked; a run already
there is continued with ``--resume`` or replaced with ``--overwrite``, never mixed with) ->
model (or the state of a checkpoint) -> loaders -> optimiser and schedule -> epochs of
(wait for a batch, forward, loss, backward, step), each ending with validation,
``last.pt`` / ``best.pt`` and a line of ``metrics.jsonl`` -> the final ``model.pt``.
``loader.batch_size`` is per process. Epochs are numbered from 0 everywhere (printed, in
metrics.jsonl, in messages).

Only rank 0 prints and writes files. Outputs in ``out_dir``: config.yaml (resolved),
train.log (what was printed), last.pt, best.pt (the best validation AP, or PCKh@0.5 Mean
for MPII), model.pt (the final weights, for ``evaluate.py --checkpoint``), metrics.jsonl,
val_results.json (MPII: val_preds.npy) + metrics.json of the last validation, preview.png,
tb/ (with tensorboard); metrics.superseded.jsonl when a resume from an older checkpoint
trains epochs again (their old lines). A run killed at any moment continues with ``--resume auto`` and
ends with the same weights, bit for bit on the CPU, as the run that was never stopped.
SIGTERM or SIGINT (Ctrl-C, a cluster's preemption): the current step finishes, ``last.pt``
gets the state part-way through the epoch (the loader's epoch and batch with it), one line
says where ``--resume auto`` continues (the next step of that epoch), exit 0 (see
``dali_pose.engine.stopping``); ``train.ckpt_every_steps`` also writes that part-way
``last.pt`` every N steps, so a SIGKILL loses at most N steps. Errors of input, of the
disk, and a loss that becomes NaN are one line (``error: ...``) and exit 1.
"""
import os
import signal
import sys

if __name__ == "__main__":  # Ctrl-C during the imports below: a quiet exit, no traceback
    signal.signal(signal.SIGINT, lambda signum, frame: os._exit(128 + signum))

import argparse  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from dali_pose import build_loader, build_model, load_config, save_config  # noqa: E402
from dali_pose.config import add_config_args, changed_keys, config_from_dict  # noqa: E402
from dali_pose.errors import ConfigError, DaliPoseError  # noqa: E402
from dali_pose.engine import checkpoint, distributed, outdir  # noqa: E402
from dali_pose.engine.preflight import check_run  # noqa: E402
from dali_pose.engine.progress import Progress, RunLog  # noqa: E402
from dali_pose.engine.schedule import build_optimizer, build_scheduler  # noqa: E402
from dali_pose.engine.stopping import NonFiniteLoss, StopRequest  # noqa: E402
from dali_pose.evaluation.inference import predict, score  # noqa: E402
from dali_pose.integrations.gather import gather_predictions  # noqa: E402
from dali_pose.models import describe_model  # noqa: E402
from dali_pose.models.losses import pose_loss  # noqa: E402
from dali_pose.models.weights import load_state  # noqa: E402
from dali_pose.normalize import normalize_images  # noqa: E402

CONFIG_HINT = ("e.g. --config configs/synthetic.yaml (the small main job) or "
               "--config configs/coco_w32_256x192.yaml (HRNet-W32 on COCO, 210 epochs)")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="dali_pose: train a pose network")
    add_config_args(parser, default="none, it is required")
    parser.add_argument("--resume", metavar="auto|PATH", default=None,
                        help="continue a run: 'auto' = out_dir/last.pt when it exists")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete the outputs of a run already in out_dir and start afresh")
    parser.add_argument("--max-batches", type=int, default=None,
                        help="stop each epoch (and validation) after N batches")
    parser.add_argument("--verbose", action="store_true", help="full tracebacks on errors")
    args = parser.parse_args(argv)
    if args.config is None:
        parser.error(f"--config is required ({CONFIG_HINT})")
    if args.max_batches is not None and args.max_batches < 1:
        parser.error("--max-batches must be >= 1")
    if args.overwrite and args.resume is not None:
        parser.error("--overwrite starts the run afresh; it cannot go with --resume")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        with StopRequest() as stop:
            train(args, stop)
    except (DaliPoseError, OSError) as e:
        if args.verbose:
            raise
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


def train(args, stop: StopRequest) -> None:
    cfg = load_config(args.config, args.overrides)
    tc = cfg.train
    gpu = cfg.loader.device == "gpu"
    dist = distributed.setup(gpu, tc.cpu_threads)
    check_run(cfg, validate=tc.validate, write=dist.main)  # before anything takes time
    ckpt = checkpoint.resume_path(args.resume, cfg.out_dir)
    lock, run_log = None, None
    if dist.main:
        lock = outdir.lock(cfg.out_dir)  # held until this process ends
        deleted = []
        if ckpt is None:
            deleted = outdir.check_fresh(cfg.out_dir, args.resume, args.overwrite)
        else:
            outdir.check_resume_from(cfg.out_dir, ckpt)
        removed = checkpoint.remove_temp_files(cfg.out_dir)
        run_log = RunLog(os.path.join(cfg.out_dir, "train.log"), fresh=ckpt is None)
        if deleted:
            run_log(f"--overwrite: deleted {', '.join(deleted)} in {cfg.out_dir}")
        if removed:
            run_log(f"removed {len(removed)} temporary file(s) of a killed checkpoint "
                    f"write: {', '.join(removed)}")
    try:
        _train(args, stop, cfg, dist, ckpt, run_log)
    except (DaliPoseError, OSError) as e:
        if run_log is not None:
            run_log.write(f"error: {e}")  # main() prints it on stderr
        raise
    finally:
        if run_log is not None:
            run_log.close()
        if lock is not None:
            lock.close()


def _train(args, stop, cfg, dist, ckpt, log) -> None:
    tc = cfg.train
    gpu = cfg.loader.device == "gpu"
    say = log or (lambda *a, **k: None)  # the other ranks are quiet
    device = dist.device
    state = None
    if ckpt is not None:
        state = checkpoint.read_training_checkpoint(ckpt)
        _check_epochs(state, tc.epochs, ckpt)
        changed = changed_keys(config_from_dict(state["config"], source=ckpt), cfg)
        say(f"resuming {ckpt}: {_resume_point(state, tc.epochs)}")
        if changed:
            say(f"  (the config now differs in: {', '.join(changed)})")
    if dist.main:
        save_config(cfg, os.path.join(cfg.out_dir, "config.yaml"))
    torch.manual_seed(cfg.loader.seed)

    # ---- the model first: a weight file that does not fit fails before the loaders build
    model = build_model(cfg, log=log)
    if tc.init_from and state is None:
        init = checkpoint.read_model_checkpoint(tc.init_from)
        load_state(model, init["model"], tc.init_from, describe_model(cfg))
        say(f"initialised from {tc.init_from}")
    if state is not None:
        load_state(model, state["model"], ckpt, describe_model(cfg))

    # ---- data: each rank its own shard and device
    t0 = time.perf_counter()
    device_id = dist.local_rank if gpu else None
    loader = build_loader(cfg, "train", shard_id=dist.rank, num_shards=dist.world_size,
                          device_id=device_id, log=log)
    val_loader = (build_loader(cfg, "val", shard_id=dist.rank, num_shards=dist.world_size,
                               device_id=device_id, log=log) if tc.validate else None)
    steps = len(loader) if args.max_batches is None else min(len(loader), args.max_batches)
    say(f"train set: {len(loader.index)} people, {len(loader)} batches of "
        f"{cfg.loader.batch_size} per rank x {dist.world_size} rank(s) on {loader.device} "
        f"({time.perf_counter() - t0:.1f} s to build)")

    # ---- optimiser, schedule
    if tc.sync_bn and dist.distributed:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    if gpu and tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    amp = _amp_dtype(tc) if gpu and tc.amp else None
    lr = tc.lr
    if tc.base_batch_size:
        total = cfg.loader.batch_size * dist.world_size
        lr *= total / tc.base_batch_size
        if total != tc.base_batch_size:  # another recipe than the config's: say so once
            say(f"total batch {total} ({dist.world_size} x {cfg.loader.batch_size}) differs "
                f"from the recipe's train.base_batch_size {tc.base_batch_size}: lr "
                f"{tc.lr:g} x {total}/{tc.base_batch_size} = {lr:g} (linear scaling)")
    opt = build_optimizer(model.parameters(), tc, lr)
    sched = build_scheduler(opt, tc, steps)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    start_epoch, best, partial = 0, None, None
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        if gpu and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        start_epoch, best = int(state["epoch"]), state["best"]
        if start_epoch < tc.epochs and state.get("partial") is not None:
            partial = state["partial"]  # stopped part-way through epoch start_epoch
            _resume_loader(loader, state, dist, ckpt)
    net = model
    if dist.distributed:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dist.local_rank] if gpu else None)
    if tc.compile:
        net = torch.compile(net)
    say(f"model: {describe_model(cfg)}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f} "
        f"M parameters, {amp or torch.float32} on {device}; effective batch "
        f"{cfg.loader.batch_size * dist.world_size}, {tc.optimizer} lr {lr:.2e} "
        f"({tc.lr_schedule}); {torch.get_num_threads()} torch thread(s) per rank")

    # ---- train
    progress = Progress(dist.main, cfg.out_dir, tc.log_every, tc.epochs, log=say)
    if state is not None and dist.main:
        checkpoint.complete_epoch(state, cfg.out_dir, progress.path, say)
    stopped = None  # (epoch, steps done in it, its steps) when a signal stopped the run
    # (epoch, step) of what last.pt holds (step 0: the end of epoch - 1); None: no last.pt
    saved = None if state is None else (start_epoch, int(partial["steps"]) if partial else 0)
    for epoch in range(start_epoch, tc.epochs):
        loader.set_epoch(epoch)  # keeps a part-way state _resume_loader loaded for it
        # with several ranks the batches per epoch vary a little (each epoch's plan gives
        # every rank as many as its smallest share allows): ``steps`` is epoch 0's
        epoch_steps = len(loader) if args.max_batches is None else min(len(loader),
                                                                         args.max_batches)
        if stop.requested(dist):
            # a part-way last.pt of this epoch is already on disk when resumed from one
            stopped = (epoch, int(partial["steps"]) if partial else 0, epoch_steps)
            break
        net.train()
        progress.start_epoch(epoch, epoch_steps)
        # the epoch's running sums; a resumed epoch starts from those of its checkpoint
        wait, seconds_before, samples, done_steps, rows = 0.0, 0.0, 0, 0, []
        loss_sum = torch.zeros((), device=device)  # summed on the device: no sync per step
        if partial is not None:
            mine = partial["ranks"][dist.rank]
            done_steps, samples = int(partial["steps"]), int(mine["samples"])
            wait, seconds_before = float(partial["data_wait"]), float(partial["seconds"])
            rows = [torch.tensor(mine["rows"], dtype=torch.int64)]
            # a float32 sum saved as a Python float: restored exactly
            loss_sum = torch.tensor(mine["loss_sum"], dtype=loss_sum.dtype, device=device)
            partial = None
        # the first step whose loss is not finite, and that loss, kept on the device too
        bad_step = torch.full((), -1, dtype=torch.int64, device=device)
        bad_loss = torch.zeros((), device=device)
        t_epoch = time.perf_counter() - seconds_before
        t_prev = time.perf_counter()
        for batch in (loader if done_steps < epoch_steps else ()):
            t_batch = time.perf_counter()
            wait += t_batch - t_prev
            # uint8 crops (loader.image_dtype) travel 4x lighter and are normalised here
            image = normalize_images(batch["image"].to(device, non_blocking=True))
            if gpu and tc.channels_last:
                image = image.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                output = net(image)
            loss = pose_loss(output.float(), {k: batch[k].to(device) for k in
                                              ("heatmap", "target_weight")}, cfg.model)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if tc.grad_clip > 0:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            scaler.step(opt)
            scaler.update()
            sched.step()
            samples += image.shape[0]
            done_steps += 1
            rows.append(batch["row"].cpu())
            loss = loss.detach()
            loss_sum += loss
            first = (bad_step < 0) & ~torch.isfinite(loss)
            bad_step = torch.where(first, done_steps, bad_step)
            bad_loss = torch.where(first, loss, bad_loss)
            log_now = done_steps % tc.log_every == 0 or done_steps == 1
            last_step = done_steps >= epoch_steps
            if log_now or last_step:  # a sync point anyway (loss.item() below)
                _check_loss(dist, bad_step, bad_loss, epoch, epoch_steps, cfg.out_dir, saved)
            t_prev = time.perf_counter()
            elapsed = t_prev - t_epoch
            progress.step(done_steps, loss.item() if log_now else math.nan,
                          sched.get_last_lr()[0], samples * dist.world_size / elapsed,
                          wait / elapsed, iteration=epoch * steps + done_steps - 1)
            # (epoch 0's ``steps`` as the epoch's length in the run's step count: the same
            # count whether the run was resumed or not)
            stop_now = stop.requested(dist)  # a collective: every rank agrees
            every = tc.ckpt_every_steps
            if stop_now or (every and (epoch * steps + done_steps) % every == 0):
                # never save a NaN
                _check_loss(dist, bad_step, bad_loss, epoch, epoch_steps, cfg.out_dir, saved)
                sums = {"loss_sum": loss_sum.item(), "samples": samples,
                        "rows": torch.cat(rows).tolist()}
                ranks = distributed.gather(dist, sums)
                if dist.main:
                    where = {**loader.state_dict(), "epoch": epoch, "batch": done_steps}
                    partial_sums = {"steps": done_steps, "epoch_steps": epoch_steps,
                                    "seconds": elapsed,
                                    "data_wait": wait, "ranks": ranks}
                    checkpoint.save_training(checkpoint.training_state(
                        model, opt, sched, scaler, epoch, best, cfg, {},
                        cuda_device=device if gpu else None, loader=where,
                        partial=partial_sums), cfg.out_dir)
                saved = (epoch, done_steps)
            if stop_now:
                stopped = (epoch, done_steps, epoch_steps)
                break
            if last_step:
                break
        progress.end_steps()  # the bar is gone before validation prints
        if stopped:
            break
        _check_loss(dist, bad_step, bad_loss, epoch, epoch_steps, cfg.out_dir, saved)
        seconds = time.perf_counter() - t_epoch
        distributed.sync_buffers(dist, model)
        record = {"epoch": epoch, "steps": done_steps, "loss": _mean_over_ranks(
                      dist, loss_sum.item(), done_steps),
                  "lr": sched.get_last_lr()[0], "samples_per_s": None,
                  "samples_per_s_rank0": samples / seconds,
                  "data_wait": wait / seconds, "world_size": dist.world_size,
                  "seconds": seconds}
        record.update(_epoch_audit(dist, model, rows))
        record["samples_per_s"] = record["samples"] / seconds  # all ranks (rank 0's clock)

        # ---- validate, checkpoint, log (in the order checkpoint.complete_epoch relies on)
        if val_loader is not None and ((epoch + 1) % tc.val_every == 0
                                       or epoch + 1 == tc.epochs):
            metrics, record["val_instances"] = validate(cfg, model, val_loader, dist,
                                                        args.max_batches, say)
            if metrics is not None:
                record.update({f"val/{k}": v for k, v in metrics.items()})
                name = "PCKh@0.5/Mean" if cfg.data.format == "mpii" else "AP"
                if best is None or metrics[name] > best["value"]:
                    best = {"metric": name, "value": float(metrics[name]), "epoch": epoch}
                    record["best"] = True
        if dist.main:
            checkpoint.save_training(checkpoint.training_state(
                model, opt, sched, scaler, epoch + 1, best, cfg, record,
                cuda_device=device if gpu else None), cfg.out_dir)
        saved = (epoch + 1, 0)
        progress.end_epoch(record, time.perf_counter() - t_epoch)
    progress.close()

    if stopped:
        epoch, done, epoch_steps = stopped
        last = os.path.join(cfg.out_dir, "last.pt")
        if done:
            nxt = (f"epoch {epoch} step {done + 1}" if done < epoch_steps
                   else f"the end of epoch {epoch} (its validation)")
            where = f"at epoch {epoch} step {done} of {epoch_steps}"
            resume = f"{last} holds it: --resume auto continues with {nxt}"
        else:
            where = f"before epoch {epoch}"
            resume = (f"{last} holds epochs 0-{epoch - 1}: --resume auto continues with "
                      f"epoch {epoch}" if epoch > 0 else
                      "no step had run, so there is no last.pt: the same command starts "
                      "afresh")
        say(f"stopped by {stop.signal_name} {where}; {resume}")
        distributed.cleanup(dist)
        return

    # ---- the final model, a look at the training crops
    if dist.main:
        final = os.path.join(cfg.out_dir, "model.pt")
        checkpoint.save_model(final, model, cfg, tc.epochs)
        say(f"wrote {final} (score it again: python evaluate.py --checkpoint {final})")
        from dali_pose.tools.preview import write_preview

        preview = os.path.join(cfg.out_dir, "preview.png")
        write_preview(cfg, preview, "train", 16, loader=loader)
        say(f"wrote {preview}, metrics.jsonl, train.log and config.yaml in {cfg.out_dir}")
    distributed.cleanup(dist)


def validate(cfg, model, loader, dist, max_batches=None, log=print):
    """Each rank predicts its shard with the flip test; rank 0 gathers every instance
    exactly once, writes the predictions and returns (their metrics, how many instances were
    predicted); the other ranks return (None, None)."""
    # the loader pads every shard to the same batches; predict keeps the valid rows
    preds = gather_predictions(predict(cfg, model, dist.device, max_batches, loader=loader))
    if not dist.main:
        return None, None
    return score(cfg, preds, cfg.out_dir, log=log), int(preds.done.sum())


def _check_epochs(state: dict, epochs: int, ckpt: str) -> None:
    """A ``train.epochs`` too small for what checkpoint ``state`` holds is a ConfigError
    (fewer epochs than it finished, or its part-way epoch left out)."""
    done = int(state["epoch"])
    if done > epochs:
        raise ConfigError(f"config key 'train.epochs': {epochs}, but {ckpt} already holds "
                          f"{done} epochs (0-{done - 1}); set train.epochs >= {done} to "
                          f"continue it")
    if done == epochs and state.get("partial") is not None:
        raise ConfigError(f"config key 'train.epochs': {epochs}, but {ckpt} was stopped "
                          f"part-way through epoch {done}; set train.epochs >= {done + 1} "
                          f"to continue it")


def _resume_point(state: dict, epochs: int) -> str:
    """Where a run resumed from checkpoint ``state`` continues, in words."""
    done, partial = int(state["epoch"]), state.get("partial")
    if done >= epochs:
        return f"all {done} epochs are done"
    finished = f"epochs 0-{done - 1} done" if done else "no epoch done"
    if partial is None:
        return f"{finished}, continuing with epoch {done}"
    k = int(partial["steps"])
    if k >= int(partial.get("epoch_steps", k + 1)):
        return f"{finished} and all {k} steps of epoch {done}, continuing with its end"
    return (f"{finished} and {k} steps of epoch {done}, continuing with epoch {done} step "
            f"{k + 1}")


def _resume_loader(loader, state: dict, dist, ckpt: str) -> None:
    """Give ``loader`` the part-way state of ``state`` (rank 0's: every rank continues its
    own shard at that batch; the next ``iter()`` of that epoch yields the batches after the
    saved ones, decoding none of those before). The rest of the epoch is a function of the
    seed, batch size and ranks: other ones are a one-line error."""
    saved = dict(state["loader"])
    epoch, k = int(saved["epoch"]), int(saved["batch"])
    n = len(state["partial"]["ranks"])
    if n != dist.world_size:
        raise ConfigError(f"{ckpt} was stopped part-way through epoch {epoch} (after step "
                          f"{k}) with {n} rank(s); continue it with {n} (torchrun "
                          f"--nproc_per_node {n}), or resume from a checkpoint of an "
                          f"epoch's end")
    try:
        loader.load_state_dict(saved)
    except ValueError as e:
        raise ConfigError(f"{ckpt}: {e}") from None


def _check_loss(dist, bad_step, bad_loss, epoch: int, steps: int, out_dir: str,
                saved) -> None:
    """Raise :class:`NonFiniteLoss` when any rank's loss was NaN or infinite this epoch,
    before anything of the epoch is saved. ``saved``: (epoch, step) of the state ``last.pt``
    holds (step 0: the end of epoch - 1), None when there is none."""
    step = int(bad_step.item())
    if dist.distributed:
        gathered = distributed.gather(dist, (step, float(bad_loss.item())))
        bad = [(s, v) for s, v in gathered if s >= 0]
        step, value = min(bad) if bad else (-1, 0.0)
    else:
        value = float(bad_loss.item())
    if step < 0:
        return
    last = os.path.join(out_dir, "last.pt")
    if saved is None:
        kept = "no checkpoint was written yet"
    elif saved[1]:
        kept = f"{last} (at epoch {saved[0]} step {saved[1]}) is kept"
    else:
        kept = f"{last} (after epoch {saved[0] - 1}) is kept"
    raise NonFiniteLoss(value, epoch, step, steps, kept)


def _epoch_audit(dist, model, rows) -> dict:
    """Samples trained on by all ranks this epoch (and how many distinct), and whether every
    rank holds the same weights."""
    mine = torch.cat(rows).numpy() if rows else []
    gathered = distributed.gather(dist, (list(map(int, mine)),
                                         distributed.weights_digest(model)
                                         if dist.distributed else ""))
    all_rows = [r for rs, _ in gathered for r in rs]
    return {"samples": len(all_rows), "unique_samples": len(set(all_rows)),
            "ranks_in_sync": len({digest for _, digest in gathered}) == 1}


def _mean_over_ranks(dist, total: float, steps: int) -> float:
    sums = distributed.gather(dist, (total, steps))
    n = sum(s for _, s in sums)
    return sum(t for t, _ in sums) / max(n, 1)


def _amp_dtype(tc):
    if tc.amp_dtype == "bfloat16" or (tc.amp_dtype == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


if __name__ == "__main__":
    sys.exit(main())
