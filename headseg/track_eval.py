"""Tracking and per-person attire, judged on synthetic clips made from annotated photos.

Tracking metrics (MOTA, IDF1, ID switches) come from ``trackeval`` (the MOTChallenge code,
``CLEAR`` and ``Identity``), fed in memory; IoU from torchvision. Attire is scored twice: per
frame (each detected head's own label) and per person (the track's vote over its frames,
:mod:`headseg.events`), each against the photo's label of the ground-truth head it matches.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_iou
from tqdm import tqdm

from headseg.attributes import AttributeSchema
from headseg.clips import ClipFrame, clip_boxes_from_coco, make_clip
from headseg.events import EventLog
from headseg.io import read_image
from headseg.tracking import ByteTrackConfig, ByteTracker, FrameResult
from headseg.video import Frame, track_frames

if TYPE_CHECKING:
    from headseg.data import CocoHeads
    from headseg.pipeline import HeadwearPipeline


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(N, M)`` IoU of ``(N, 4)`` and ``(M, 4)`` xyxy boxes (torchvision's ``box_iou``)."""
    return box_iou(torch.as_tensor(a, dtype=torch.float64).reshape(-1, 4),
                   torch.as_tensor(b, dtype=torch.float64).reshape(-1, 4)).numpy()


@dataclass(frozen=True, eq=False)
class SequenceTracks:
    """Ground truth and predictions of one clip, frame by frame (ids are any ints).

    Attributes:
        gt_ids, gt_boxes: Per frame ``(K,)`` ids and ``(K, 4)`` xyxy boxes.
        pred_ids, pred_boxes: Per frame, the same for the tracker's output.
        ignored: Predictions left out, matched to heads only partly in frame (:func:`score_clip`).
    """

    gt_ids: list[np.ndarray]
    gt_boxes: list[np.ndarray]
    pred_ids: list[np.ndarray]
    pred_boxes: list[np.ndarray]
    ignored: int = 0


def _trackeval_data(seq: SequenceTracks) -> dict[str, Any]:
    """The dict trackeval's metrics read: ids relabelled 0..n-1, IoU per frame."""
    gt_map = {v: i for i, v in enumerate(sorted({int(x) for ids in seq.gt_ids for x in ids}))}
    pr_map = {v: i for i, v in enumerate(sorted({int(x) for ids in seq.pred_ids for x in ids}))}
    return {"num_timesteps": len(seq.gt_ids), "num_gt_ids": len(gt_map), "num_tracker_ids": len(pr_map),
            "num_gt_dets": int(sum(len(i) for i in seq.gt_ids)),
            "num_tracker_dets": int(sum(len(i) for i in seq.pred_ids)),
            "gt_ids": [np.array([gt_map[int(x)] for x in ids], int) for ids in seq.gt_ids],
            "tracker_ids": [np.array([pr_map[int(x)] for x in ids], int) for ids in seq.pred_ids],
            "similarity_scores": [iou_matrix(g, p) for g, p in zip(seq.gt_boxes, seq.pred_boxes)]}


def tracking_metrics(sequences: dict[str, SequenceTracks], iou_thresh: float = 0.5) -> dict[str, float]:
    """MOTA, IDF1, ID switches and counts over clips, by ``trackeval`` (CLEAR, Identity).

    Args:
        sequences: Clip name -> its ground truth and predictions.
        iou_thresh: A prediction matches ground truth at this IoU or more.

    Returns:
        ``MOTA``, ``MOTP``, ``IDF1``, ``IDSW``, ``TP``, ``FP``, ``FN``, ``frag``, combined over clips,
        and ``ignored`` (predictions on heads only partly in frame, in none of the others).
    """
    from trackeval.metrics import CLEAR, Identity  # noqa: PLC0415

    config = {"THRESHOLD": iou_thresh, "PRINT_CONFIG": False}
    with contextlib.redirect_stdout(io.StringIO()):
        clear, ident = CLEAR(config), Identity(config)
    per_clear, per_id = {}, {}
    for name, seq in sequences.items():
        data = _trackeval_data(seq)
        per_clear[name], per_id[name] = clear.eval_sequence(data), ident.eval_sequence(data)
    c, i = clear.combine_sequences(per_clear), ident.combine_sequences(per_id)
    return {"MOTA": float(c["MOTA"]), "MOTP": float(c["MOTP"]), "IDF1": float(i["IDF1"]),
            "IDSW": int(c["IDSW"]), "TP": int(c["CLR_TP"]), "FP": int(c["CLR_FP"]),
            "FN": int(c["CLR_FN"]), "frag": int(c["Frag"]),
            "ignored": sum(seq.ignored for seq in sequences.values())}


@dataclass
class AttireTally:
    """Counts behind per-frame and per-person attire accuracy."""

    frame_correct: int = 0
    frame_total: int = 0
    person_correct: int = 0
    person_total: int = 0  # ground-truth people matched by a decided track
    people: int = 0  # ground-truth people in all clips
    confusion: Counter = field(default_factory=Counter)  # (truth, predicted) per person

    def to_json(self) -> dict[str, Any]:
        ratio = lambda a, b: round(a / b, 4) if b else None  # noqa: E731
        return {"per_frame_accuracy": ratio(self.frame_correct, self.frame_total),
                "frames_matched": self.frame_total,
                "per_person_accuracy": ratio(self.person_correct, self.person_total),
                "people_decided": self.person_total, "people": self.people,
                "person_confusion": {f"{t}->{p}": n for (t, p), n in sorted(self.confusion.items())}}


def _match(gt_boxes: np.ndarray, pred_boxes: np.ndarray, iou_thresh: float) -> list[tuple[int, int]]:
    """Optimal one-to-one ground-truth/prediction pairs with IoU >= ``iou_thresh`` (scipy)."""
    if not len(gt_boxes) or not len(pred_boxes):
        return []
    iou = iou_matrix(gt_boxes, pred_boxes)
    rows, cols = linear_sum_assignment(iou, maximize=True)
    return [(r, c) for r, c in zip(rows, cols) if iou[r, c] >= iou_thresh]


def _not_ignored(frame: ClipFrame, boxes: np.ndarray, iou_thresh: float) -> np.ndarray:
    """``(N,)`` bool: predictions not matched to a head that is only partly in frame.

    Ground truth and ignored heads are matched to the predictions together, and a prediction
    whose partner is an ignored head is dropped, as MOTChallenge drops its distractors' matches.
    """
    keep = np.ones(len(boxes), bool)
    if len(frame.ignore_xyxy):
        both = np.concatenate([frame.boxes_xyxy.reshape(-1, 4), frame.ignore_xyxy])
        for r, c in _match(both, boxes, iou_thresh):
            keep[c] = r < len(frame.boxes_xyxy)
    return keep


def score_clip(gt: list[ClipFrame], gt_labels: Sequence[tuple[str, str] | None], results: list[FrameResult],
               log: EventLog, tally: AttireTally, iou_thresh: float = 0.5) -> SequenceTracks:
    """Tally one clip's attire into ``tally``; return its tracks for :func:`tracking_metrics`.

    Args:
        gt: The clip's frames (their images may have been dropped: only boxes and ids are read).
        gt_labels: ``(attribute, value)`` of each photo head (index = ``ClipFrame.ids`` value), or
            None where the photo's category is none of the model's (left out of attire).
        results: The tracker's output, one per frame.
        log: The :class:`EventLog` that saw ``results`` and was finished: per-person decisions.
        tally: Updated in place.
        iou_thresh: Match threshold.
    """
    decided = {p.track_id: {a: d.value for a, d in p.decisions.items()} for p in log.people}
    votes: dict[int, Counter] = {}
    seq, ignored = SequenceTracks([], [], [], []), 0
    for frame, result in zip(gt, results):
        tracked = [h for h in result.heads if h.track_id is not None]
        boxes = np.asarray([h.box_xyxy for h in tracked], np.float64).reshape(-1, 4)
        keep = _not_ignored(frame, boxes, iou_thresh)
        ignored += len(tracked) - int(keep.sum())
        tracked, boxes = [h for h, k in zip(tracked, keep) if k], boxes[keep]
        seq.gt_ids.append(frame.ids)
        seq.gt_boxes.append(frame.boxes_xyxy)
        seq.pred_ids.append(np.asarray([h.track_id for h in tracked], int))
        seq.pred_boxes.append(boxes)
        for r, c in _match(frame.boxes_xyxy, boxes, iou_thresh):
            person, head = int(frame.ids[r]), tracked[c]
            votes.setdefault(person, Counter())[head.track_id] += 1
            if not head.carried and gt_labels[person] is not None:
                attribute, value = gt_labels[person]
                tally.frame_total += 1
                tally.frame_correct += int(head.head.attributes[attribute].value == value)
    tally.people += len({int(x) for f in gt for x in f.ids})
    for person, tracks in votes.items():
        track_id = tracks.most_common(1)[0][0]
        if gt_labels[person] is not None and gt_labels[person][0] in decided.get(track_id, {}):
            attribute, value = gt_labels[person]
            tally.person_total += 1
            tally.person_correct += int(decided[track_id][attribute] == value)
            tally.confusion[(value, decided[track_id][attribute])] += 1
    return dataclasses.replace(seq, ignored=ignored)


def _frames(clip: Iterator[ClipFrame], gt: list[ClipFrame], fps: float) -> Iterator[Frame]:
    """Feed a clip to the tracker, keeping its ground truth (boxes only: images are dropped)."""
    for k, frame in enumerate(clip):
        gt.append(dataclasses.replace(frame, image=np.zeros((1, 1, 3), np.uint8)))
        yield Frame(k, k / fps, frame.image)


def evaluate_clips(pipe: "HeadwearPipeline", coco: "CocoHeads", image_ids: Sequence[int],
                   motions: Sequence[str] = ("pan", "zoom", "shake"), num_frames: int = 24,
                   fps: float = 10.0, stride: int = 1, min_frames: int = 3,
                   tracker: ByteTrackConfig = ByteTrackConfig(), seed: int = 0,
                   source: str | None = None, progress: bool = False) -> dict[str, Any]:
    """Make a clip per photo and motion, track it, and score tracking and attire.

    Args:
        pipe: The pipeline to judge.
        coco: Annotated photos (e.g. the test split).
        image_ids: The photos to make clips of.
        motions: Camera motions (see :func:`headseg.clips.camera_path`).
        num_frames: Frames per clip.
        fps: Nominal frame rate of the clips (sets the tracker's time step).
        stride: Pipeline on every ``stride``-th frame, boxes carried in between.
        min_frames: Observed frames before a track's attire is decided.
        tracker: ByteTrack settings.
        seed: For ``shake``.
        source: The model schema's source whose categories the data uses (default: inferred);
            its mapping says which attribute value each category means.
        progress: A progress bar over the clips (on stderr).

    Returns:
        ``tracking`` (:func:`tracking_metrics`), ``attire`` (:class:`AttireTally`) and ``clips``
        (their count and frames), plus a note when the model labels none of the data's categories.
    """
    sequences: dict[str, SequenceTracks] = {}
    tally = AttireTally()
    truth = attire_truth(pipe.schema, coco.class_names, source)
    bar = tqdm(total=len(image_ids) * len(motions), desc="clips", unit="clip", disable=not progress)
    for image_id in image_ids:
        image = read_image(coco.image_path(image_id))
        boxes, category_ids = clip_boxes_from_coco(coco.annotations[image_id])
        labels = [truth.get(coco.categories[c]) for c in category_ids]
        for m, motion in enumerate(motions):
            gt: list[ClipFrame] = []
            clip = make_clip(image, boxes, motion, num_frames, seed=seed + 1000 * image_id + m)
            log = EventLog(min_frames, leave_after_s=num_frames / fps + 1)
            results = []
            for result in track_frames(pipe, _frames(clip, gt, fps), ByteTracker(tracker, fps), stride,
                                       color_order="RGB"):
                log.update(result)
                results.append(result)
            log.finish()
            sequences[f"{image_id}-{motion}"] = score_clip(gt, labels, results, log, tally)
            bar.update()
    bar.close()
    out = {"tracking": tracking_metrics(sequences), "attire": tally.to_json(),
           "clips": len(sequences), "frames": len(sequences) * num_frames}
    if not truth:
        out["attire"]["note"] = (f"the model's attributes {dict(pipe.schema.attributes)} label none of the "
                                 f"data's categories {coco.class_names}: no attire is scored")
    return out


def attire_truth(schema: AttributeSchema, class_names: Sequence[str], source: str | None = None) -> dict[str, tuple[str, str]]:
    """Data category -> the ``(attribute, value)`` it means to the model (empty: none).

    ``source`` names the schema's source the categories follow; by default the one source that
    covers them all (a single-attribute model's classes are their own source).
    """
    if source is None:
        try:
            source = schema.source_of(class_names)
        except ValueError:
            return {}
    if source not in schema.sources:
        raise ValueError(f"source {source!r} is not in the model's schema; expected one of {sorted(schema.sources)}")
    return {c: tuple(t.split("/", 1)) for c, t in schema.sources[source].items()}
