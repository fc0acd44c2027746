"""Train entry point. Until the HRNet trainer lands, this runs the data loader over one
epoch of the configured training set, prints samples/s, and writes a preview grid.

    python train.py --config configs/synthetic.yaml [--set loader.batch_size=16 ...]

Outputs go to ``out_dir``: the resolved config (config.yaml) and preview.png.
"""
import argparse
import os
import time

from dali_pose import build_loader, load_config, save_config
from dali_pose.config import add_config_args
from dali_pose.loader import measure
from dali_pose.preview import write_preview


def main(argv=None):
    parser = argparse.ArgumentParser(description="dali_pose: run the loader for one epoch")
    add_config_args(parser)
    parser.add_argument("--max-batches", type=int, default=None, help="stop early")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    os.makedirs(cfg.out_dir, exist_ok=True)
    save_config(cfg, os.path.join(cfg.out_dir, "config.yaml"))

    t0 = time.perf_counter()
    loader = build_loader(cfg, "train")
    print(f"train set: {len(loader.index)} people, {len(loader)} batches of "
          f"{cfg.loader.batch_size} on {loader.device} ({time.perf_counter() - t0:.1f} s to build)")

    m = measure(loader, args.max_batches)
    print(f"epoch: {m['samples']} samples after warm-up in {m['seconds']:.2f} s = "
          f"{m['samples_per_s']:.0f} samples/s")

    preview = os.path.join(cfg.out_dir, "preview.png")
    write_preview(cfg, preview, "train", 16, loader=loader)
    print(f"wrote {preview} and {os.path.join(cfg.out_dir, 'config.yaml')}")


if __name__ == "__main__":
    main()
