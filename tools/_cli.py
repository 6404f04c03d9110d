"""What every tool does on the command line: a user error ends with one line, not a traceback."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from collections.abc import Callable
from typing import Any, NoReturn

DEBUG_VARIABLE = "HEADSEG_DEBUG"


def run(main: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> NoReturn:
    """Call ``main(args)`` and exit: with its status when it returns an int, else 0.

    A bad input (a missing file, an unknown ``--set`` key, a malformed JSON...) raises
    ``OSError``, ``ValueError`` or ``TypeError`` with a sentence saying what was wrong and how
    to fix it; so does an optional extra that is not installed (``ModuleNotFoundError`` from
    an import inside ``main``, such as ``ray`` for ``predict_ray.py``). That sentence is
    printed as ``error: ...`` and the exit status is 2. Set ``HEADSEG_DEBUG=1`` (or pass
    ``--debug`` where a tool has it) for the traceback.
    """
    try:
        status = main(args)
    except (OSError, ValueError, TypeError, ModuleNotFoundError) as error:
        if getattr(args, "debug", False) or os.environ.get(DEBUG_VARIABLE, "") not in ("", "0"):
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    sys.exit(status if isinstance(status, int) and not isinstance(status, bool) else 0)


def load_pipeline(args: argparse.Namespace, **kwargs: Any) -> Any:
    """``HeadwearPipeline`` from ``--seg``/``--cls`` (both, or neither: the bundled ``--model``) and ``--device``."""
    from headseg.pipeline import load_pipeline as load  # noqa: PLC0415

    if bool(args.seg) != bool(args.cls):
        raise ValueError("got only one of --seg and --cls; give both checkpoints, or neither "
                         "for the bundled model")
    return load(args.seg, args.cls, args.model, args.device, flip=args.flip, **kwargs)


def add_train_args(parser: argparse.ArgumentParser, configs: str, example: str) -> None:
    """What both training tools take: ``--config`` (``configs``, e.g. ``configs/seg_*.yaml``),
    ``--set`` overrides (``example`` shows two), ``--out``, ``--resume``, ``--device``, ``--no-progress``."""
    parser.add_argument("--config", type=Path, help=f"YAML file ({configs})")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help=f"overrides, e.g. {example}")
    parser.add_argument("--out", type=Path, required=True, help="run folder for checkpoints and logs")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """``--seg``/``--cls`` (trained checkpoints) or ``--model`` (a bundled one), and ``--flip``, as :func:`load_pipeline` reads them."""
    from headseg.pipeline import DEFAULT_MODEL, PRETRAINED  # noqa: PLC0415

    parser.add_argument("--seg", type=Path, help="segmenter checkpoint (default: the bundled --model)")
    parser.add_argument("--cls", type=Path, nargs="+",
                        help="classifier checkpoint; several: their ensemble (default: the bundled --model)")
    parser.add_argument("--model", choices=sorted(PRETRAINED), default=DEFAULT_MODEL,
                        help="bundled model, when --seg/--cls are not given (docs/MODEL_CARD.md)")
    add_flip_arg(parser)


def add_flip_arg(parser: argparse.ArgumentParser) -> None:
    """``--flip``/``--no-flip``: the classifier's test-time flip (``HeadwearPipeline``'s ``flip``);
    None when neither is given: the bundled model's own choice, none for checkpoints."""
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction,
                        help="classify each head crop and its mirror image, average the probabilities "
                             "(twice the classifier's work; default: on for the bundled default model, "
                             "off for checkpoints; docs/RESULTS.md)")


def add_tracker_args(parser: argparse.ArgumentParser) -> None:
    """``--score-thresh``, ``--track-thresh`` and ``--lost-s``, as :func:`tracker_config` reads them."""
    add_score_arg(parser)
    parser.add_argument("--track-thresh", type=float,
                        help="heads this sure start and extend tracks; those between --score-thresh and this "
                             "only extend them (ByteTrack's second round) (default: --score-thresh)")
    parser.add_argument("--lost-s", type=float, default=1.0, help="seconds a hidden head keeps its id")


def add_score_arg(parser: argparse.ArgumentParser) -> None:
    """``--score-thresh``; unset, the bundled model's operating point or the checkpoint's own."""
    parser.add_argument("--score-thresh", type=float,
                        help="lowest score of a head the pipeline keeps (default: the bundled model's "
                             "operating point, docs/MODEL_CARD.md; 0.5 with --seg/--cls)")


def add_head_rule_arg(parser: argparse.ArgumentParser) -> None:
    """``--head-rule WIDTH TOP BOTTOM``: the face-to-head geometry, as :func:`head_rule` reads it."""
    parser.add_argument("--head-rule", type=float, nargs=3, metavar=("WIDTH", "TOP", "BOTTOM"),
                        help="face boxes grow into head boxes WIDTH face widths wide, TOP face heights "
                             "above and BOTTOM below the face (default: headseg.attributes.FaceToHead's; "
                             "tools/fit_face_to_head.py measures one)")


def head_rule(args: argparse.Namespace) -> Any:
    """The ``FaceToHead`` rule :func:`add_head_rule_arg`'s option names, or the default one."""
    from headseg.attributes import FaceToHead  # noqa: PLC0415

    if args.head_rule is None:
        return FaceToHead()
    width, top, bottom = args.head_rule
    if width <= 0 or top + bottom <= -1:
        raise ValueError(f"--head-rule {width:g} {top:g} {bottom:g} gives an empty head box; expected "
                         "WIDTH > 0 and TOP + BOTTOM > -1 (e.g. 1.56 0.65 0.2)")
    return FaceToHead(width, top, bottom)


def tracker_config(args: argparse.Namespace, score_thresh: float) -> Any:
    """``ByteTrackConfig`` from :func:`add_tracker_args`' options; ``score_thresh``: the pipeline's."""
    from headseg.tracking import ByteTrackConfig  # noqa: PLC0415

    high = score_thresh if args.track_thresh is None else args.track_thresh
    if high < score_thresh:
        raise ValueError(f"--track-thresh {high} is below the pipeline's score threshold {score_thresh}; "
                         "it drops heads under that, so expected --track-thresh >= --score-thresh")
    return ByteTrackConfig(lost_s=args.lost_s, activation_thresh=high, high_thresh=high)
