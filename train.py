"""Train a pose network on the dali_pose loader; validate, checkpoint and log every epoch.

    python train.py --config CFG [--set train.epochs=...] [--resume auto|PATH] [--max-batches N]
    torchrun --nproc_per_node 4 train.py --config CFG          # DDP, one GPU per process

Reads top to bottom: config -> processes and devices -> loaders -> model, optimiser and
schedule (or the state of a checkpoint) -> epochs of (wait for a batch, forward, loss,
backward, step), each ending with validation, ``last.pt`` / ``best.pt`` and a line of
``metrics.jsonl`` -> the final ``model.pt``. ``loader.batch_size`` is per process.

Only rank 0 prints and writes files. Outputs in ``out_dir``: config.yaml (resolved),
last.pt, best.pt (the best validation AP, or PCKh@0.5 Mean for MPII), model.pt (the final
weights, for ``evaluate.py --checkpoint``), metrics.jsonl, val_results.json (MPII:
val_preds.npy) + metrics.json of the last validation, preview.png, tb/ (with tensorboard).
A run killed at any moment continues with ``--resume auto`` and ends with the same
weights, bit for bit on the CPU, as the run that was never stopped.
"""
import argparse
import math
import os
import sys
import time

import torch

from dali_pose import build_loader, build_model, load_config, save_config
from dali_pose.config import add_config_args, changed_keys, config_from_dict, to_dict
from dali_pose.errors import DaliPoseError
from dali_pose.engine import distributed
from dali_pose.engine.checkpoint import read_training_checkpoint, resume_path, save_atomic
from dali_pose.engine.preflight import check_run
from dali_pose.engine.progress import Progress
from dali_pose.engine.schedule import build_scheduler
from dali_pose.evaluation.inference import merge, predict, score
from dali_pose.models import describe_model
from dali_pose.models.losses import pose_loss
from dali_pose.models.weights import WeightsError, load_state, read_weights_file, save_model
from dali_pose.normalize import normalize_images


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="dali_pose: train a pose network")
    add_config_args(parser)
    parser.add_argument("--resume", metavar="auto|PATH", default=None,
                        help="continue a run: 'auto' = out_dir/last.pt when it exists")
    parser.add_argument("--max-batches", type=int, default=None,
                        help="stop each epoch (and validation) after N batches")
    parser.add_argument("--verbose", action="store_true", help="full tracebacks on errors")
    args = parser.parse_args(argv)
    if args.max_batches is not None and args.max_batches < 1:
        parser.error("--max-batches must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        train(args)
    except (DaliPoseError, OSError) as e:
        if args.verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def train(args) -> None:
    cfg = load_config(args.config, args.overrides)
    tc = cfg.train
    gpu = cfg.loader.device == "gpu"
    dist = distributed.setup(gpu, tc.cpu_threads)
    log = print if dist.main else None  # the other ranks are quiet
    say = log or (lambda *a, **k: None)
    device = dist.device
    check_run(cfg, validate=tc.validate, write=dist.main)  # before anything takes time
    state = None
    ckpt = resume_path(args.resume, cfg.out_dir)
    if ckpt is not None:
        state = read_training_checkpoint(ckpt)
        changed = changed_keys(config_from_dict(state["config"], source=ckpt), cfg)
        say(f"resuming {ckpt} after epoch {state['epoch']}"
            + (f" (config now differs in: {', '.join(changed)})" if changed else ""))
    if dist.main:
        os.makedirs(cfg.out_dir, exist_ok=True)
        save_config(cfg, os.path.join(cfg.out_dir, "config.yaml"))
    torch.manual_seed(cfg.loader.seed)

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

    # ---- model, optimiser, schedule
    model = build_model(cfg, log=log)
    if tc.init_from and state is None:
        load_state(model, _model_state(tc.init_from), tc.init_from, describe_model(cfg))
        say(f"initialised from {tc.init_from}")
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
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = build_scheduler(opt, tc, steps)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    start_epoch, best = 0, None
    if state is not None:
        load_state(model, state["model"], ckpt, describe_model(cfg))
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        if gpu and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        start_epoch, best = int(state["epoch"]), state["best"]
    net = model
    if dist.distributed:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dist.local_rank] if gpu else None)
    if tc.compile:
        net = torch.compile(net)
    say(f"model: {describe_model(cfg)}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f} "
        f"M parameters, {amp or torch.float32} on {device}; effective batch "
        f"{cfg.loader.batch_size * dist.world_size}, lr {lr:.2e}; "
        f"{torch.get_num_threads()} torch thread(s) per rank")

    # ---- train
    progress = Progress(dist.main, cfg.out_dir, tc.log_every)
    for epoch in range(start_epoch, tc.epochs):
        loader.set_epoch(epoch)
        net.train()
        progress.start_epoch(epoch, steps)
        wait = 0.0
        samples, done_steps, rows = 0, 0, []
        loss_sum = torch.zeros((), device=device)  # summed on the device: no sync per step
        t_epoch = t_prev = time.perf_counter()
        for step, batch in enumerate(loader):
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
            loss_sum += loss.detach()
            log_now = done_steps % tc.log_every == 0 or done_steps == 1
            t_prev = time.perf_counter()
            elapsed = t_prev - t_epoch
            progress.step(done_steps, loss.item() if log_now else math.nan,
                          sched.get_last_lr()[0], samples / elapsed, wait / elapsed)
            if done_steps >= steps:
                break
        seconds = time.perf_counter() - t_epoch
        distributed.sync_buffers(dist, model)
        record = {"epoch": epoch, "steps": done_steps, "loss": _mean_over_ranks(
                      dist, loss_sum.item(), done_steps),
                  "lr": sched.get_last_lr()[0], "samples_per_s": samples / seconds,
                  "data_wait": wait / seconds, "world_size": dist.world_size,
                  "seconds": seconds}
        record.update(_epoch_audit(dist, model, rows))

        # ---- validate, checkpoint, log
        if val_loader is not None and ((epoch + 1) % tc.val_every == 0
                                       or epoch + 1 == tc.epochs):
            metrics, record["val_instances"] = validate(cfg, model, val_loader, dist,
                                                        args.max_batches)
            if metrics is not None:
                record.update({f"val/{k}": v for k, v in metrics.items()})
                name = "PCKh@0.5/Mean" if cfg.data.format == "mpii" else "AP"
                if best is None or metrics[name] > best["value"]:
                    best = {"metric": name, "value": float(metrics[name]), "epoch": epoch}
                    record["best"] = True
        if dist.main:
            ckpt_state = {
                "model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
                "epoch": epoch + 1, "best": best, "config": to_dict(cfg),
                "loader": {"epoch": epoch + 1}, "torch_rng": torch.get_rng_state()}
            if gpu:
                ckpt_state["cuda_rng"] = torch.cuda.get_rng_state(device)
            save_atomic(ckpt_state, os.path.join(cfg.out_dir, "last.pt"))
            if record.get("best"):
                save_atomic(ckpt_state, os.path.join(cfg.out_dir, "best.pt"))
        progress.end_epoch(record)
    progress.close()

    # ---- the final model, a look at the training crops
    if dist.main:
        final = os.path.join(cfg.out_dir, "model.pt")
        save_model(final, model, cfg, tc.epochs)
        say(f"wrote {final} (score it again: python evaluate.py --checkpoint {final})")
        from dali_pose.tools.preview import write_preview

        preview = os.path.join(cfg.out_dir, "preview.png")
        write_preview(cfg, preview, "train", 16, loader=loader)
        say(f"wrote {preview}, metrics.jsonl and config.yaml in {cfg.out_dir}")
    distributed.cleanup(dist)


def validate(cfg, model, loader, dist, max_batches=None):
    """Each rank predicts its shard with the flip test; rank 0 gathers every instance
    exactly once, writes the predictions and returns (their metrics, how many instances were
    predicted); the other ranks return (None, None)."""
    part = predict(cfg, model, dist.device, max_batches, loader=loader)
    parts = distributed.gather(dist, part)
    if not dist.main:
        return None, None
    preds = merge(parts)
    return score(cfg, preds, cfg.out_dir), int(preds.done.sum())


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


def _model_state(path: str) -> dict:
    """The model state dict in a dali_pose checkpoint (``train.init_from``)."""
    ckpt = read_weights_file(path, "train.init_from checkpoint")
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise WeightsError(f"train.init_from {path}: not a dali_pose checkpoint (no 'model')")
    return ckpt["model"]


if __name__ == "__main__":
    sys.exit(main())
