"""Train an HRNet on the dali_pose loader, then score it on the validation set.

    python train.py --config configs/synthetic.yaml [--set train.epochs=2 ...] [--max-batches N]

Reads top to bottom: config -> loaders -> model -> epochs of (wait for a batch, forward,
loss, backward, step) -> checkpoint -> flip-test predictions on the val set -> metrics.
Each log line and each epoch report the share of wall time spent waiting for the loader
(``data wait``: time inside ``next(loader)``, the HRNet trainer's ``data_time``) next to the
loss and samples/s. Outputs in ``out_dir``: config.yaml (resolved), model.pt, preview.png,
and for COCO/CrowdPose val_results.json + metrics.json (MPII: val_preds.npy, to score with
``evaluate.py --dataset mpii --ann gt_valid.mat --preds ...``). ``evaluate.py --checkpoint
OUT_DIR/model.pt`` scores the saved model again the same way (``dali_pose.evaluation.inference``).
"""
import argparse
import os
import time

import torch

from dali_pose import build_loader, build_model, load_config, save_config
from dali_pose.config import add_config_args
from dali_pose.evaluation.inference import predict, save_checkpoint, score
from dali_pose.models.losses import pose_loss
from dali_pose.tools.preview import write_preview


def main(argv=None):
    parser = argparse.ArgumentParser(description="dali_pose: train an HRNet, then validate")
    add_config_args(parser)
    parser.add_argument("--max-batches", type=int, default=None,
                        help="stop each epoch (and validation) after N batches")
    args = parser.parse_args(argv)
    if args.max_batches is not None and args.max_batches < 1:
        parser.error("--max-batches must be >= 1")
    cfg = load_config(args.config, args.overrides)
    tc = cfg.train
    os.makedirs(cfg.out_dir, exist_ok=True)
    save_config(cfg, os.path.join(cfg.out_dir, "config.yaml"))
    torch.manual_seed(cfg.loader.seed)

    # ---- data
    t0 = time.perf_counter()
    loader = build_loader(cfg, "train")
    info = loader.info
    print(f"train set: {len(loader.index)} people, {len(loader)} batches of "
          f"{cfg.loader.batch_size} on {loader.device} ({time.perf_counter() - t0:.1f} s to build)")
    cuda = loader.device == "gpu"
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")

    # ---- model and optimiser
    model = build_model(cfg).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    amp = cuda and tc.amp
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(tc.lr_steps), tc.lr_factor)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: HRNet width {cfg.model.width}, {n_params / 1e6:.2f} M parameters, "
          f"{'float16 autocast' if amp else 'float32'} on {device}")

    # ---- train
    for epoch in range(tc.epochs):
        loader.set_epoch(epoch)
        model.train()
        wait = busy = 0.0
        samples, steps = 0, 0
        loss_sum = torch.zeros((), device=device)  # summed on the device: no sync per step
        t_prev = time.perf_counter()
        for step, batch in enumerate(loader):
            t_batch = time.perf_counter()
            wait += t_batch - t_prev
            image = batch["image"]
            if cuda:
                image = image.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                output = model(image)
            loss = pose_loss(output.float(), batch, cfg.model)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            samples += image.shape[0]
            steps += 1
            loss_sum += loss.detach()
            if (step + 1) % tc.log_every == 0 or step == 0:
                value = loss.item()  # synchronises, so the times below are real
                elapsed = wait + busy + time.perf_counter() - t_batch
                print(f"epoch {epoch} step {step + 1}/{len(loader)}  loss {value:.3e}  "
                      f"{samples / elapsed:.0f} samples/s  data wait {100 * wait / elapsed:.1f}%")
            t_prev = time.perf_counter()
            busy += t_prev - t_batch
            if args.max_batches is not None and step + 1 >= args.max_batches:
                break
        sched.step()
        total = wait + busy
        print(f"epoch {epoch}: {steps} steps, mean loss {loss_sum.item() / max(steps, 1):.3e}, "
              f"{samples / total:.0f} samples/s, data wait {100 * wait / total:.1f}% of "
              f"{total:.1f} s, lr {sched.get_last_lr()[0]:.2e}")

    ckpt = os.path.join(cfg.out_dir, "model.pt")
    save_checkpoint(ckpt, model, cfg, tc.epochs)
    print(f"wrote {ckpt} (score it again: python evaluate.py --checkpoint {ckpt})")

    # ---- validate: flip test, back to source pixels, official metrics
    if tc.validate:
        preds = predict(cfg, model, device, args.max_batches)
        score(cfg, preds, cfg.out_dir)

    preview = os.path.join(cfg.out_dir, "preview.png")
    write_preview(cfg, preview, "train", 16, loader=loader)
    print(f"wrote {preview} and {os.path.join(cfg.out_dir, 'config.yaml')}")


if __name__ == "__main__":
    main()
