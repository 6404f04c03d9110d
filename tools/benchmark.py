"""Inference speed, side by side on the same images: torchvision default vs naive vs headseg.

Systems, each timed in a fresh subprocess (so peak memory is its own):

* ``tv_default``: torchvision's default Mask R-CNN settings (800/1333 px, 1000 proposals,
  256-channel FPN, 1024-d box head, 4x256 mask head) on the same MobileNetV2-FPN backbone,
  segmentation only;
* ``naive``: the trained segmenter at torchvision's default inference settings (800/1333 px,
  1000/1000 proposals), then NumPy crops (:func:`headseg.crops.crop_head`) and one
  classifier call per head scoring >= 0.5: what a first script around the two models does;
* ``headseg``: :class:`HeadwearPipeline` as shipped (its checkpoint's settings), end to end,
  with the split between segmentation and classification;
* ``backbone``: the lower bound, headseg's resize + normalise and backbone + FPN alone, as the
  pipeline runs them (BatchNorm folded, channels-last), on the same batches (no RPN, heads,
  masks or classifier): the network's own cost, which the pipeline's rate is measured against.

Warm-up first, then the median of ``--repeats`` passes over the images. Prints a table and
writes JSON. ``naive`` and ``headseg`` run the same trained weights; ``tv_default``'s larger
heads are random-initialised (the timing concerns the work, and with ``box_score_thresh`` 0.05
random heads still return detections to paste).

Examples:
    python tools/benchmark.py --images docs/samples --repeats 3 --out docs/benchmark_cpu.json
    python tools/benchmark.py --images docs/samples --resize 640x480 --num-images 64 \
        --device cuda --batch-size 8 --repeats 10 --profile --out docs/benchmark_gpu.json
    python tools/benchmark.py --systems headseg --seg-set min_size=800 max_size=1333   # one lever
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing as mp
import platform
import resource
import statistics
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tools._cli import run  # noqa: E402

SYSTEMS = ("tv_default", "naive", "headseg", "backbone")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=Path("docs/samples"), help="folder of images")
    parser.add_argument("--resize", metavar="WxH", help="resize every image to W x H pixels, e.g. 640x480")
    parser.add_argument("--num-images", type=int, default=0,
                        help="use this many images, cycling through the folder (0: each once)")
    parser.add_argument("--seg", type=Path, help="segmenter checkpoint (default: bundled)")
    parser.add_argument("--cls", type=Path, help="classifier checkpoint (default: bundled)")
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument("--profile", action="store_true", help="also time headseg stage by stage")
    parser.add_argument("--seg-set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="headseg's segmenter inference fields, e.g. min_size=800 (one lever at a time)")
    parser.add_argument("--out", type=Path, help="JSON report")
    return parser.parse_args(argv)


def _load_images(args: argparse.Namespace) -> list[np.ndarray]:
    """The benchmark's images: the folder's, resized and cycled as asked."""
    import cv2

    from headseg.io import IMAGE_EXTENSIONS, read_image

    paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {args.images}")
    images = [read_image(p) for p in paths]
    if args.resize:
        try:
            w, h = (int(v) for v in args.resize.lower().split("x"))
        except ValueError:
            raise ValueError(f"--resize {args.resize!r}; expected WxH in pixels, e.g. 640x480") from None
        images = [cv2.resize(im, (w, h), interpolation=cv2.INTER_AREA) for im in images]
    if args.num_images:
        images = [images[i % len(images)] for i in range(args.num_images)]
    return images


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _run(system: str, args: argparse.Namespace, queue: mp.Queue) -> None:
    """Time one system in this (child) process and put its numbers on ``queue``."""
    from headseg.config import SegModelConfig, parse_overrides
    from headseg.crops import crop_head
    from headseg.pipeline import ASSETS, HeadwearPipeline
    from headseg.segmentation import build_segmenter, load_segmenter

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    seg, cls = args.seg or ASSETS / "segmenter.pt", args.cls or ASSETS / "classifier.pt"
    overrides = parse_overrides(args.seg_set)
    # The pipeline's service threshold, as for every number in docs/PERFORMANCE.md (a checkpoint's
    # own box_score_thresh is COCO evaluation's 0.05).
    pipe = HeadwearPipeline.from_checkpoint(seg, cls, device, score_thresh=0.5, batch_size=args.batch_size,
                                            seg_overrides=overrides if system in ("headseg", "backbone") else None)
    images = _load_images(args)
    timings = {"seg": 0.0, "cls": 0.0}

    if system == "headseg":
        # Time stage 1 inside the pipeline; the rest is cropping + classification.
        segment = pipe._segment

        def timed_segment(tensors):
            t0 = time.perf_counter()
            out = segment(tensors)
            _sync(device)
            timings["seg"] += time.perf_counter() - t0
            return out

        pipe._segment = timed_segment
    elif system == "backbone":
        tv = pipe.segmenter
    elif system == "naive":
        tv, _, _ = load_segmenter(seg, device, min_size=800, max_size=1333, rpn_pre_nms_top_n_test=1000,
                                  rpn_post_nms_top_n_test=1000, box_from_mask=False)
    else:
        torch.manual_seed(0)  # the random heads decide how many detections get pasted: fix them
        tv = build_segmenter(SegModelConfig(weights="none", min_size=800, max_size=1333,
                                            rpn_pre_nms_top_n_test=1000, rpn_post_nms_top_n_test=1000,
                                            fpn_channels=256, box_head_dim=1024,
                                            mask_head_layers=(256, 256, 256, 256)), 1).eval().to(device)

    @torch.inference_mode()
    def one_pass() -> int:
        heads = 0
        for start in range(0, len(images), args.batch_size):
            batch = images[start:start + args.batch_size]
            if system == "headseg":
                heads += sum(len(r) for r in pipe(batch))
                continue
            t0 = time.perf_counter()
            tensors = [torch.from_numpy(im).to(device).permute(2, 0, 1).float() / 255 for im in batch]
            if system == "backbone":
                with torch.autocast(device.type, enabled=pipe.amp):
                    pipe._backbone(tv.transform(tensors)[0].tensors)
                _sync(device)
                timings["seg"] += time.perf_counter() - t0
                continue
            outs = tv(tensors)
            _sync(device)
            t1 = time.perf_counter()
            timings["seg"] += t1 - t0
            if system == "naive":
                for im, out in zip(batch, outs):
                    keep = out["scores"] >= 0.5
                    for box, mask in zip(out["boxes"][keep].cpu().numpy(),
                                         (out["masks"][keep, 0] > 0.5).cpu().numpy()):
                        if mask.any():
                            crop = crop_head(im, mask, box, pipe.cls_config.crop.size)
                            x = torch.from_numpy(crop).to(device).permute(2, 0, 1)[None].float() / 255
                            pipe.classifier((x - pipe.mean) / pipe.std).softmax(1).cpu()
                            heads += 1
                timings["cls"] += time.perf_counter() - t1
        _sync(device)
        return heads

    one_pass()  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, heads = [], 0
    for _ in range(args.repeats):
        timings.update(seg=0.0, cls=0.0)
        t0 = time.perf_counter()
        heads = one_pass()
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    result = {"system": system, "images": len(images), "heads_per_pass": heads,
              "images_per_second": len(images) / median, "ms_per_image": 1000 * median / len(images),
              "peak_cpu_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if system == "naive":
        result["classification_fraction"] = timings["cls"] / max(timings["seg"] + timings["cls"], 1e-9)
    if system == "headseg":
        result["classification_fraction"] = 1.0 - timings["seg"] / times[-1]
    if device.type == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    if system == "headseg" and args.profile:
        result["profile_ms_per_image"] = _profile(pipe, images, device)
    queue.put(result)


@torch.inference_mode()
def _profile(pipe, images: list[np.ndarray], device: torch.device) -> dict[str, float]:
    """Milliseconds per image in each stage of the pipeline, one image at a time.

    Stage 1 runs under the pipeline's autocast, and one untimed pass comes first: the batch-1
    shapes are new after the batched timing, and on CUDA their first pass is kernel selection.
    """
    from torchvision.models.detection.transform import resize_boxes

    from headseg.segmentation import paste_masks

    model, stages = pipe.segmenter, {}
    autocast = functools.partial(torch.autocast, device.type, enabled=pipe.amp)

    def tick(name: str, t0: float) -> float:
        _sync(device)
        now = time.perf_counter()
        stages[name] = stages.get(name, 0.0) + (now - t0) * 1000 / len(images)
        return now

    def one(image: np.ndarray) -> None:
        t = time.perf_counter()
        x = [torch.from_numpy(image).to(device).permute(2, 0, 1).float().div_(255)]
        t = tick("to_tensor", t)
        with autocast():  # as headseg.segmentation.detect runs it
            image_list, _ = model.transform(x)
        t = tick("resize_normalize", t)
        with autocast():
            features = pipe._backbone(image_list.tensors)
        t = tick("backbone_fpn", t)
        with autocast():
            proposals, _ = model.rpn(image_list, features)
        t = tick("rpn", t)
        with autocast():
            dets, _ = model.roi_heads(features, proposals, image_list.image_sizes)
        t = tick("roi_heads_box_mask", t)
        det = dets[0]
        boxes = resize_boxes(det["boxes"].float(), image_list.image_sizes[0], image.shape[:2])
        masks = paste_masks(det["masks"], boxes, image.shape[:2])[:, 0] > pipe.mask_thresh
        t = tick("paste_masks", t)
        keep = masks.flatten(1).any(1)
        pipe._finish(x, [(boxes[keep], det["scores"][keep].float(), masks[keep])], [image], [None])
        tick("crops_classify_results", t)

    one(images[0])  # untimed
    stages.clear()
    for image in images:
        one(image)
    return stages


def _result_of(proc: mp.Process, queue: mp.Queue, system: str) -> dict:
    """The child's numbers; a clear error, not a hang, when it dies first."""
    import queue as queue_module

    while True:
        try:
            return queue.get(timeout=1.0)
        except queue_module.Empty:
            if not proc.is_alive() and queue.empty():
                raise RuntimeError(f"benchmark of {system!r} exited with code {proc.exitcode} before "
                                   "reporting; its error is printed above") from None


def main(args: argparse.Namespace) -> list[dict]:
    _load_images(args)  # bad --images or --resize: one clear error here, not one per child
    ctx = mp.get_context("spawn")
    results = []
    for system in args.systems:
        queue = ctx.Queue()
        proc = ctx.Process(target=_run, args=(system, args, queue))
        proc.start()
        results.append(_result_of(proc, queue, system))
        proc.join()
        queue.close()
        queue.join_thread()
    base = next((r["images_per_second"] for r in results if r["system"] == "tv_default"), None)
    lower = next((r["images_per_second"] for r in results if r["system"] == "backbone"), None)
    print(f"device={args.device} batch={args.batch_size} images={results[0]['images']} "
          f"threads={args.threads or torch.get_num_threads()}")
    print(f"{'system':<12}{'img/s':>9}{'ms/img':>9}{'vs tv':>8}{'peak MB':>10}{'heads':>7}")
    for r in results:
        ratio = f"{r['images_per_second'] / base:.2f}x" if base else "-"
        peak = r.get("peak_gpu_mb", r["peak_cpu_rss_mb"])
        print(f"{r['system']:<12}{r['images_per_second']:>9.2f}{r['ms_per_image']:>9.1f}{ratio:>8}"
              f"{peak:>10.0f}{r['heads_per_pass']:>7}")
    for r in results:
        if r["system"] == "headseg" and lower:
            print(f"headseg runs at {100 * r['images_per_second'] / lower:.0f}% of the backbone-only rate")
        if "classification_fraction" in r:
            print(f"{r['system']}: crops + classification = {100 * r['classification_fraction']:.1f}% of time")
        for stage, ms in r.get("profile_ms_per_image", {}).items():
            print(f"  {stage:<24}{ms:>9.1f} ms/img")
    if args.out:
        report = {"date": date.today().isoformat(), "machine": platform.platform(),
                  "processor": platform.processor(), "device": args.device,
                  "cuda": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
                  "torch": torch.__version__, "args": {k: str(v) for k, v in vars(args).items()},
                  "results": results}
        args.out.write_text(json.dumps(report, indent=2))
    return results


if __name__ == "__main__":
    run(main, parse_args())
