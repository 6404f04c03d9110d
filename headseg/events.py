"""From tracked frames to people: attire decided per track, and events instead of frame dumps.

A track's attributes are decided from all the frames it was observed on: the class
probabilities are averaged and the most probable value wins once at least ``min_frames``
frames voted (:func:`vote`), attribute by attribute (``Head.attributes``): a single-attribute
classifier's one attribute is ``label``, a multi-attribute one's are its schema's
(:func:`attributes_of`). A value that says the attribute could not be judged (``not_visible``:
:data:`ABSTAIN`) does not vote: frames whose top value it is are left out of that attribute's
mean, and it is the decision only when every frame says it (a worker turned away for most of a
clip, with a mask on whenever the face shows, is decided ``with_mask``).

:class:`EventLog` turns frames into events: ``appear`` (a track's first decision, dated at
its first frame), ``change`` (the averaged decision flipped) and ``leave`` (dated at its last
frame, once unseen for ``leave_after_s`` or at the end), and keeps one :class:`Person` per
decided track for the summary (distinct people per value, not detections).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from headseg.pipeline import Head
from headseg.tracking import FrameResult

Probs = Mapping[str, float]
# Values that say an attribute could not be judged on a frame (configs/cls_multi_novis_128.yaml:
# `face_mask/not_visible`, a head with no face to see): they decide only when no frame judged.
ABSTAIN = frozenset({"not_visible"})


def attributes_of(head: Head) -> dict[str, dict[str, float]]:
    """Attribute -> value probabilities of one head (``{"label": head.probs}`` for one attribute)."""
    return {a: dict(p.probs) for a, p in head.attributes.items()}


@dataclass(frozen=True)
class Decision:
    """One attribute of one person, decided from several frames.

    Attributes:
        value: The class with the highest mean probability.
        prob: That mean probability.
        frames: The frame numbers whose probabilities were averaged (those that judged the
            attribute, or all when none did).
    """

    value: str
    prob: float
    frames: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "prob": round(self.prob, 4), "num_frames": len(self.frames),
                "frames": list(self.frames)}


@dataclass
class _Votes:
    """Running sums of class probabilities per attribute, split by whether the frame judged it
    (its top value not in :data:`ABSTAIN`), and the frames behind each sum."""

    judged: dict[str, tuple[dict[str, float], list[int]]] = field(default_factory=dict)
    abstained: dict[str, tuple[dict[str, float], list[int]]] = field(default_factory=dict)
    frames: list[int] = field(default_factory=list)
    names: dict[str, None] = field(default_factory=dict)  # the attributes, in the order first seen

    def add(self, frame: int, attributes: Mapping[str, Probs]) -> None:
        self.frames.append(frame)
        for attribute, probs in attributes.items():
            self.names.setdefault(attribute)
            top = max(probs, key=lambda v: (probs[v], v))
            sums, frames = (self.abstained if top in ABSTAIN else self.judged).setdefault(attribute, ({}, []))
            frames.append(frame)
            for value, p in probs.items():
                sums[value] = sums.get(value, 0.0) + float(p)

    def decide(self, min_frames: int) -> dict[str, Decision]:
        if len(self.frames) < min_frames or not self.frames:
            return {}
        out = {}
        for attribute in self.names:
            sums, frames = self.judged.get(attribute) or self.abstained[attribute]
            value = max(sums, key=lambda v: (sums[v], v))  # ties: the same answer every run
            out[attribute] = Decision(value, sums[value] / len(frames), tuple(frames))
        return out


def vote(observations: Iterable[tuple[int, Mapping[str, Probs]]], min_frames: int = 3) -> dict[str, Decision]:
    """Each attribute's value from the mean of its class probabilities over the frames that
    judged it (all of them when none did: see :data:`ABSTAIN`).

    Args:
        observations: ``(frame, {attribute: {value: prob}})`` for each frame the person was seen.
        min_frames: Fewer observations than this decide nothing.

    Returns:
        Attribute -> :class:`Decision`; empty when there are fewer than ``min_frames`` frames.
    """
    if min_frames < 1:
        raise ValueError(f"min_frames={min_frames}; expected 1 or more")
    votes = _Votes()
    for frame, attributes in observations:
        votes.add(frame, attributes)
    return votes.decide(min_frames)


@dataclass(frozen=True)
class Event:
    """Something that happened to one person.

    Attributes:
        kind: ``appear``, ``change`` or ``leave``.
        track_id: The person's track.
        frame, time_s: When: first frame seen (appear), frame of the change, last frame seen (leave).
        values: Attribute -> decided value after the event.
        probs: Attribute -> mean probability of that value.
        attribute, previous: For ``change``: which attribute and its value before.
        decided_frame: For ``appear``: the frame at which enough frames had voted.
    """

    kind: str
    track_id: int
    frame: int
    time_s: float
    values: dict[str, str]
    probs: dict[str, float]
    attribute: str | None = None
    previous: str | None = None
    decided_frame: int | None = None

    def to_json(self, source: str | None = None) -> dict[str, Any]:
        record: dict[str, Any] = {"event": self.kind, "track_id": self.track_id, "frame": self.frame,
                                  "time_s": round(self.time_s, 3), **self.values,
                                  "prob": {k: round(v, 4) for k, v in self.probs.items()}}
        if self.kind == "change":
            record.update(attribute=self.attribute, previous=self.previous)
        if self.decided_frame is not None:
            record["decided_frame"] = self.decided_frame
        return {"source": source, **record} if source is not None else record


@dataclass(frozen=True)
class Person:
    """One decided track, for the summary.

    Attributes:
        track_id: Its id.
        first_frame, last_frame, first_s, last_s: When it was first and last observed.
        decisions: Attribute -> :class:`Decision` over all its observed frames.
    """

    track_id: int
    first_frame: int
    last_frame: int
    first_s: float
    last_s: float
    decisions: dict[str, Decision]

    def to_json(self) -> dict[str, Any]:
        return {"track_id": self.track_id, "first_frame": self.first_frame, "last_frame": self.last_frame,
                "first_s": round(self.first_s, 3), "last_s": round(self.last_s, 3),
                "attributes": {k: d.to_json() for k, d in self.decisions.items()}}


@dataclass
class _Track:
    votes: _Votes
    first: tuple[int, float]
    last: tuple[int, float]
    values: dict[str, str] = field(default_factory=dict)


class EventLog:
    """Feed it :class:`FrameResult` s in order; it returns the events each frame caused.

    Args:
        min_frames: Observed frames a track needs before its attributes are decided (and it
            appears): shorter tracks are usually false detections or heads passing the edge.
        leave_after_s: A track unseen this long has left (dated at its last frame). Keep it at
            least the tracker's ``lost_s``, so a briefly hidden head does not leave and re-enter.
    """

    def __init__(self, min_frames: int = 3, leave_after_s: float = 1.0) -> None:
        if min_frames < 1 or leave_after_s < 0:
            raise ValueError(f"got min_frames={min_frames}, leave_after_s={leave_after_s}; expected "
                             "min_frames >= 1 and leave_after_s >= 0")
        self.min_frames, self.leave_after_s = min_frames, leave_after_s
        self._open: dict[int, _Track] = {}
        self.people: list[Person] = []  # decided tracks that have left, then all at finish()
        self.undecided = 0  # tracks that ended with fewer than min_frames observed frames

    def update(self, result: FrameResult) -> list[Event]:
        """The events up to this frame: appear/change for heads on it, leave for tracks gone."""
        events: list[Event] = []
        for t in result.heads:
            if t.track_id is None or t.carried:  # carried boxes were not classified: no vote
                continue
            track = self._open.get(t.track_id)
            if track is None:
                track = self._open[t.track_id] = _Track(_Votes(), (result.frame, result.time_s),
                                                        (result.frame, result.time_s))
            track.last = (result.frame, result.time_s)
            track.votes.add(result.frame, attributes_of(t.head))
            events += self._decide(t.track_id, track, result)
        for tid in [tid for tid, tr in self._open.items() if result.time_s - tr.last[1] > self.leave_after_s]:
            events += self._close(tid)
        return events

    def finish(self) -> list[Event]:
        """``leave`` for every track still open (the video ended)."""
        events: list[Event] = []
        for tid in list(self._open):
            events += self._close(tid)
        return events

    def summary(self) -> dict[str, Any]:
        """Distinct people per attribute value (decided tracks), plus each person's record."""
        per_value: dict[str, Counter] = {}
        for person in self.people:
            for attribute, decision in person.decisions.items():
                per_value.setdefault(attribute, Counter())[decision.value] += 1
        return {"people": len(self.people), "undecided_tracks": self.undecided,
                "people_per_value": {a: dict(c.most_common()) for a, c in per_value.items()},
                "tracks": [p.to_json() for p in self.people]}

    def _decide(self, tid: int, track: _Track, result: FrameResult) -> list[Event]:
        decisions = track.votes.decide(self.min_frames)
        if not decisions:
            return []
        values = {a: d.value for a, d in decisions.items()}
        probs = {a: d.prob for a, d in decisions.items()}
        if not track.values:
            track.values = values
            return [Event("appear", tid, track.first[0], track.first[1], values, probs,
                          decided_frame=result.frame)]
        events = [Event("change", tid, result.frame, result.time_s, values, probs, attribute=a,
                        previous=track.values.get(a))
                  for a in values if values[a] != track.values.get(a)]
        track.values = values
        return events

    def _close(self, tid: int) -> list[Event]:
        track = self._open.pop(tid)
        decisions = track.votes.decide(self.min_frames)
        if not decisions:
            self.undecided += 1
            return []
        self.people.append(Person(tid, track.first[0], track.last[0], track.first[1], track.last[1],
                                  decisions))
        return [Event("leave", tid, track.last[0], track.last[1], {a: d.value for a, d in decisions.items()},
                      {a: d.prob for a, d in decisions.items()})]
