"""Pack trained checkpoints for shipping: weights only (no optimizer state), stored as fp16.

The weights are cast back to fp32 when loaded, so inference runs as trained; the only cost is
fp16 rounding of each weight (measure it with tools/eval_seg.py and tools/eval_cls.py on val).

A segmenter's inference settings can be changed as it is packed (``--set``, fields in
``headseg.segmentation.INFERENCE_FIELDS``), e.g. a test-time input size or proposal count
chosen on val. A classifier's values can be weighted (``--value-weight attribute/value=w``:
``log w`` added to the value's logit, ``headseg.classification.weight_values``), e.g. a
value that balanced sampling taught to be called more often than it should be.

Example (the bundled default model; settings chosen on facemask val, docs/PERFORMANCE.md):
    python tools/pack_model.py runs/seg_facemask/best.pt headseg/assets/segmenter.pt \
        --set min_size=640 max_size=1066 rpn_pre_nms_top_n_test=1000 rpn_post_nms_top_n_test=1000
    python tools/pack_model.py runs/cls_facemask/best.pt headseg/assets/classifier.pt
    # a two-attribute classifier with not_visible called half as readily (docs/RESULTS.md,
    # "`not_visible` weighed after training", measures what that trades)
    python tools/pack_model.py runs/cls_novis_clean/best.pt runs/cls_novis_clean/packed_nv05.pt \
        --value-weight face_mask/not_visible=0.5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from headseg.classification import weight_values  # noqa: E402
from headseg.config import parse_overrides  # noqa: E402
from headseg.segmentation import INFERENCE_FIELDS, with_inference_overrides  # noqa: E402
from headseg.engine import save_checkpoint  # noqa: E402
from tools._cli import run  # noqa: E402

# Everything a checkpoint needs at inference; optimizer, scheduler and RNG states are dropped.
KEEP = ("kind", "version", "model", "config", "class_names", "schema", "epoch", "metrics", "preprocessing",
        "input_size", "mean", "std", "crop", "value_weights")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="best.pt of train_seg.py or train_cls.py")
    parser.add_argument("out", type=Path, help="packed file")
    parser.add_argument("--fp32", action="store_true", help="keep fp32 weights")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help=f"segmenter inference settings to store: {', '.join(INFERENCE_FIELDS)}")
    parser.add_argument("--value-weight", nargs="*", default=[], metavar="VALUE=W",
                        help="classifier: multiply a value's share of its attribute's softmax by W "
                             "(attribute/value=W; the value alone for a single-attribute classifier)")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> Path:
    try:
        state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged or unsafe file
        raise ValueError(f"{args.checkpoint} cannot be read as a checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or not str(state.get("kind", "")).startswith("headseg-"):
        raise ValueError(f"{args.checkpoint} is not a headseg checkpoint")
    packed = {k: v for k, v in state.items() if k in KEEP}
    if args.set:
        if state["kind"] != "headseg-segmenter":
            raise ValueError(f"--set changes segmenter settings; {args.checkpoint} is a {state['kind']}")
        packed["config"] = with_inference_overrides(state["config"], parse_overrides(args.set))
    if args.value_weight:
        if state["kind"] != "headseg-classifier":
            raise ValueError(f"--value-weight weighs a classifier's values; {args.checkpoint} is a {state['kind']}")
        packed = weight_values(packed, parse_overrides(args.value_weight, prefix=""))
    if not args.fp32:
        packed["model"] = {k: v.half() if v.is_floating_point() else v for k, v in packed["model"].items()}
    save_checkpoint(args.out, packed)
    before, after = args.checkpoint.stat().st_size / 2**20, args.out.stat().st_size / 2**20
    print(f"{args.out}: {after:.1f} MB (from {before:.1f} MB)")
    return args.out


if __name__ == "__main__":
    run(main, parse_args())
