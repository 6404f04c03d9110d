"""Time stage-1 training steps on real images: images/s of each speed lever, same data, same seed.

Each variant is a set of ``--set`` overrides on the given config (the levers of
docs/PERFORMANCE.md, "Training speed"). For every variant the tool builds the model, loads
batches with the config's data loader and augmentation, and times whole steps (waiting for
data, forward, backward, optimizer step); it reports the median after ``--warmup`` steps, so
start-up and allocator warm-up do not count. Accuracy is not measured here: a lever is adopted
only after a training run shows val AP within noise (docs/PERFORMANCE.md).

Examples:
    python tools/bench_train.py --config configs/seg_hhw.yaml                  # every lever
    python tools/bench_train.py --config configs/seg_hhw.yaml --variants fp32 all --steps 40
    python tools/bench_train.py --config configs/seg_hhw.yaml --json docs/bench_train_cpu.json
    python tools/bench_train.py --smoke        # two steps of a tiny model on synthetic images
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from headseg.config import SegConfig, load_config  # noqa: E402
from headseg.data import HeadDataset, collate, load_coco, train_transforms  # noqa: E402
from headseg.segmentation import autocast_settings, build_segmenter  # noqa: E402
from tools._cli import run  # noqa: E402

# Today's recipe first (fp32, NCHW, torchvision's 512 sampled RoIs, 2 loader processes); each
# later variant changes the levers it names.
FP32 = ["train.amp=false", "train.channels_last=false", "model.box_batch_size_per_image=512"]
VARIANTS: dict[str, list[str]] = {
    "fp32": FP32,
    "bf16": FP32 + ["train.amp=true"],
    "channels_last": FP32 + ["train.channels_last=true"],
    "rois128": FP32 + ["model.box_batch_size_per_image=128"],
    "bf16+cl": FP32 + ["train.amp=true", "train.channels_last=true"],
    "all": ["train.amp=true", "train.channels_last=true", "model.box_batch_size_per_image=128"],
    "all+rois64": ["train.amp=true", "train.channels_last=true", "model.box_batch_size_per_image=64"],
    "all+workers1": ["train.amp=true", "train.channels_last=true",
                     "model.box_batch_size_per_image=128", "data.workers=1"],
    "all+workers0": ["train.amp=true", "train.channels_last=true",
                     "model.box_batch_size_per_image=128", "data.workers=0"],
}
COMPILE = "all+compile"  # torch.compile of the backbone + FPN; not a config field


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="YAML file with data.train_json (configs/seg_*.yaml)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides applied to every variant, e.g. model.min_size=640")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS),
                        help=f"which to time, in order: {', '.join([*VARIANTS, COMPILE])}")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny model, synthetic images, 2 steps: checks the tool runs")
    return parser.parse_args(argv)


def _loader(cfg: SegConfig, seed: int) -> torch.utils.data.DataLoader:
    coco = load_coco(cfg.data.train_json, cfg.data.image_root or None)
    t = cfg.train
    dataset = HeadDataset(coco, train_transforms(t.hflip, t.scale_jitter, t.color_jitter),
                          cfg.data.class_agnostic, cfg.data.derived_mask)
    if len(dataset) == 0:
        raise ValueError(f"{cfg.data.train_json} has no images to time training on")
    generator = torch.Generator().manual_seed(seed)
    sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=10**6,
                                             generator=generator)
    return torch.utils.data.DataLoader(dataset, batch_size=t.batch_size, sampler=sampler,
                                       num_workers=cfg.data.workers, collate_fn=collate)


def time_variant(cfg: SegConfig, device: torch.device, steps: int, warmup: int,
                 compile_backbone: bool = False) -> dict[str, float]:
    """Median seconds per training step of ``cfg`` and what they mean in images/s."""
    torch.manual_seed(cfg.train.seed)
    model = build_segmenter(cfg.model, 1).to(device).train()
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    if compile_backbone:
        model.backbone = torch.compile(model.backbone)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad],
                                lr=cfg.train.lr * 0.1, momentum=cfg.train.momentum)
    autocast = autocast_settings(cfg.train.amp, device, force=True)  # measure bf16 even where it is emulated
    scaler = torch.amp.GradScaler("cuda", enabled=autocast["dtype"] == torch.float16)
    times: list[float] = []
    batches = iter(_loader(cfg, cfg.train.seed))
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        images, targets = next(batches)
        images = [im.to(device) for im in images]
        targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
        with torch.autocast(**autocast):
            loss = sum(model(images, targets).values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip_grad_norm or float("inf"))
        scaler.step(optimizer)
        scaler.update()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= warmup:
            times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return {"seconds_per_step": median, "images_per_second": cfg.train.batch_size / median,
            "loss_last": float(loss.item())}


def _smoke_overrides(folder: Path) -> list[str]:
    """A tiny random-init model on four synthetic 128 px images (the tool's own test)."""
    from datasets.synthetic import SyntheticConfig, make_synthetic_splits  # noqa: PLC0415

    splits = make_synthetic_splits(folder, {"train": 4}, SyntheticConfig.fixed_size(128), seed=0)
    return ["model.weights=none", "model.min_size=128", "model.max_size=128", "model.fpn_channels=32",
            "model.box_head_dim=64", "model.mask_head_layers=[32]", "train.batch_size=2",
            "data.workers=0", f"data.train_json={splits['train']}"]


def main(args: argparse.Namespace) -> list[dict]:
    logging.basicConfig(level=logging.WARNING)
    if args.smoke:
        with tempfile.TemporaryDirectory(prefix="bench_train_") as folder:
            smoke = argparse.Namespace(**{**vars(args), "smoke": False, "steps": 2, "warmup": 0,
                                          "set": _smoke_overrides(Path(folder)) + list(args.set)})
            return main(smoke)
    unknown = [v for v in args.variants if v not in VARIANTS and v != COMPILE]
    if unknown:
        raise ValueError(f"--variants {unknown}: unknown; expected some of {[*VARIANTS, COMPILE]}")
    device = torch.device(args.device)
    rows = []
    print(f"device={device} threads={torch.get_num_threads()} cpu={platform.processor() or platform.machine()}")
    print(f"{'variant':<14}{'img/s':>8}{'s/step':>9}{'vs first':>10}")
    for name in args.variants:
        levers = VARIANTS["all"] if name == COMPILE else VARIANTS[name]
        # The variant's levers override the config; --set overrides both.
        cfg = load_config(SegConfig, args.config, levers + list(args.set))
        if not cfg.data.train_json:
            raise ValueError("no training images: pass --config with data.train_json "
                             "(e.g. configs/seg_hhw.yaml) or --set data.train_json=...")
        result = time_variant(cfg, device, args.steps, args.warmup, compile_backbone=name == COMPILE)
        rows.append({"variant": name, "levers": levers, **result, "batch_size": cfg.train.batch_size,
                     "min_size": cfg.model.min_size, "workers": cfg.data.workers})
        speedup = result["images_per_second"] / rows[0]["images_per_second"]
        print(f"{name:<14}{result['images_per_second']:>8.2f}{result['seconds_per_step']:>9.3f}"
              f"{speedup:>9.2f}x", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {"command": " ".join(sys.argv), "device": str(device), "threads": torch.get_num_threads(),
                  "torch": torch.__version__, "steps": args.steps, "warmup": args.warmup,
                  "config": str(args.config), "set": list(args.set), "results": rows}
        args.json.write_text(json.dumps(record, indent=1))
    return rows


if __name__ == "__main__":
    run(main, parse_args())
