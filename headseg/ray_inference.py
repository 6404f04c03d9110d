"""Archive-scale inference on Ray Data: the records ``tools/predict.py`` writes, on any cluster.

    >>> from headseg.ray_inference import predict_with_ray
    >>> summary = predict_with_ray(["photos/", "site/*.jpg"], "out/")   # local Ray unless joined
    >>> records = list(iter_records("out/"))                             # predictions.jsonl records

One :class:`~headseg.pipeline.HeadwearPipeline` per Ray actor, built once in the actor's
constructor; ``Dataset.map_batches`` feeds the actor pool batches of image paths (or of file
bytes, for a :class:`ray.data.Dataset` made by ``read_binary_files``). Actors take a GPU share
when the cluster has GPUs, else CPU cores. Output, in ``out``:

- ``records/part-<digest>.jsonl``: one file per batch, each line a record with exactly the
  fields of ``predictions.jsonl`` (``ImageResult.to_json()``: source, height, width, heads with
  COCO RLE masks); ``source`` is the absolute path (workers may run on other machines).
- ``summary.json``: as ``tools/predict.py`` writes it, over every record in the folder.

Each input is recorded exactly once, even when actors die, and the design does not depend on
luck:

1. An actor writes a batch's file atomically (temporary file, then rename): a file is complete
   or absent, never half-written.
2. The file's name is a digest of the batch's input paths. Ray retries a dead actor's task
   with the same input block, so the retry rewrites the same file instead of adding a copy.
3. Rows returned to the driver name the file that holds each input; a file written in this run
   that no returned row names (an attempt Ray discarded) is deleted at the end.
4. A rerun into the same folder first reads which inputs have records and skips them, so a
   killed job resumes where it stopped; :func:`iter_records` yields each input at most once.

Bad files (missing, truncated, not images) are reported in ``summary.json`` with their
reason and retried by the next run (a reason such as a network file system hiccup can pass).
Ray is an optional dependency: ``pip install headseg[ray]``.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from headseg.io import VIDEO_EXTENSIONS, atomic_write, decode_image, list_inputs, read_image, write_json

RECORDS = "records"
# Test hook: an actor that finds this variable set to a path, and no file there, creates the
# file and dies right after writing its first records file, before Ray hears of the batch
# (tests/test_ray.py kills an actor this way).
CRASH_ONCE_VARIABLE = "HEADSEG_RAY_CRASH_ONCE"


def import_ray() -> Any:
    """``ray`` with ``ray.data``, or an error that says how to install it."""
    try:
        import ray  # noqa: PLC0415
        import ray.data  # noqa: F401, PLC0415
    except ImportError as error:
        raise ModuleNotFoundError(
            f"ray[data] is not installed ({error}); batch inference on Ray needs it: "
            "pip install 'headseg[ray]'", name=error.name) from None
    return ray


def iter_records(out: str | Path) -> Iterator[dict[str, Any]]:
    """Every record in ``out/records``, one per input (a repeated input is yielded once).

    Args:
        out: An output folder of :func:`predict_with_ray`.

    Yields:
        ``predictions.jsonl`` records: ``source``, ``height``, ``width``, ``heads``.
    """
    seen: set[str] = set()
    for part in sorted((Path(out) / RECORDS).glob("part-*.jsonl")):
        with open(part) as lines:
            for line in lines:
                record = json.loads(line)
                if record["source"] not in seen:
                    seen.add(record["source"])
                    yield record


def _columns(head: dict[str, Any]) -> list[str]:
    """A JSON head's classifier columns, as ``Head.columns()`` has them."""
    from headseg.attributes import attribute_columns  # noqa: PLC0415  (torch stays out of this module's import)

    attributes = head.get("attributes") or {"label": {"value": head["label"]}}  # records before attributes
    return attribute_columns({a: p["value"] for a, p in attributes.items()})


def _done(out: Path) -> dict[str, list[str]]:
    """Input path -> its heads' columns (labels, or ``attribute/value``), for every input with a record in ``out``."""
    return {r["source"]: [c for h in r["heads"] for c in _columns(h)] for r in iter_records(out)}


class HeadwearPredictor:
    """The ``map_batches`` callable: one pipeline per Ray actor, one records file per batch.

    Args:
        out: Output folder (shared by every node: a network file system or a mounted bucket).
        seg, cls: Checkpoints of the two stages (several classifiers: their ensemble); both None
            for the bundled ``model``.
        model: Bundled model name (``headseg.pipeline.PRETRAINED``; None: the default), when
            seg and cls are None.
        device: ``cpu`` or ``cuda`` (Ray gives a GPU actor its own ``CUDA_VISIBLE_DEVICES``).
        threads: Torch intra-op threads: the CPU cores Ray reserved for this actor.
        **pipeline_kwargs: ``score_thresh``, ``batch_size``... for the pipeline.
    """

    def __init__(self, out: str, seg: str | None, cls: str | list[str] | None, model: str | None, device: str, threads: int,
                 **pipeline_kwargs: Any) -> None:
        import torch  # noqa: PLC0415

        from headseg.pipeline import load_pipeline  # noqa: PLC0415

        torch.set_num_threads(max(1, threads))
        self.pipe = load_pipeline(seg, cls, model, device, **pipeline_kwargs)
        self.records = Path(out) / RECORDS
        self.decoder = ThreadPoolExecutor(max_workers=2)  # decoding releases the GIL

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Predict a batch and write its records.

        Args:
            batch: ``path`` (str) and optionally ``bytes`` (the files' contents) columns.

        Returns:
            Per input: ``source``, ``part`` (the records file holding it, empty if skipped),
            ``reason`` (why it was skipped, else empty) and ``labels`` (JSON list).
        """
        paths = [str(p) for p in batch["path"]]
        blobs = batch["bytes"] if "bytes" in batch else [None] * len(paths)
        loaded = list(self.decoder.map(_load, paths, blobs))
        results, reasons = self._predict(loaded), [reason for _, reason in loaded]
        lines, labels = [], [""] * len(paths)
        for i, result in results.items():
            record = result.to_json()
            record["source"] = paths[i]
            lines.append(json.dumps(record) + "\n")
            labels[i] = json.dumps([c for h in result.heads for c in h.columns()])  # as counts()
        part = ""
        if lines:
            part = "part-" + hashlib.sha1("\n".join(sorted(paths)).encode()).hexdigest()[:20] + ".jsonl"
            text = "".join(lines).encode()
            atomic_write(self.records / part, lambda f: f.write(text))
            _crash_once()
        return {"source": np.array(paths, dtype=object),
                "part": np.array([part if i in results else "" for i in range(len(paths))], dtype=object),
                "reason": np.array([r or "" for r in reasons], dtype=object),
                "labels": np.array(labels, dtype=object)}

    def _predict(self, loaded: list[tuple[np.ndarray | None, str | None]]) -> dict[int, Any]:
        """Index -> result for every decoded image; one image at a time if the batch fails."""
        good = [i for i, (image, _) in enumerate(loaded) if image is not None]
        if not good:
            return {}
        try:
            return dict(zip(good, self.pipe([loaded[i][0] for i in good])))
        except (ValueError, TypeError, RuntimeError):
            results = {}
            for i in good:
                try:
                    results[i] = self.pipe(loaded[i][0])
                except (ValueError, TypeError, RuntimeError) as error:
                    loaded[i] = (None, f"the pipeline failed on it ({error})")
            return results


def _load(path: str, data: bytes | None) -> tuple[np.ndarray | None, str | None]:
    """``(RGB image, None)``, or ``(None, why it cannot be read)``."""
    if path.lower().endswith(VIDEO_EXTENSIONS):
        return None, "videos are not read by the Ray engine; run tools/predict.py on them"
    try:
        return (read_image(path) if data is None else decode_image(bytes(data), path)), None
    except (OSError, ValueError) as error:
        return None, str(error)


def _crash_once() -> None:
    flag = os.environ.get(CRASH_ONCE_VARIABLE)
    if flag and not os.path.exists(flag):
        Path(flag).touch()
        os._exit(1)  # as a killed worker: no cleanup, no exception for Ray to catch


def predict_with_ray(inputs: Sequence[str | Path] | Any, out: str | Path, *,
                     seg: str | Path | None = None, cls: str | Path | Sequence[str | Path] | None = None,
                     model: str | None = None, score_thresh: float | None = None, batch_size: int = 4,
                     flip: bool | None = None, rows_per_batch: int = 16,
                     concurrency: int | None = None, cpus_per_actor: float = 1.0,
                     gpus_per_actor: float | None = None, max_restarts: int = 3,
                     max_task_retries: int = 3, ray_remote_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the pipeline over many images with an actor pool on the current Ray cluster.

    Connects with ``ray.init()`` (a local cluster, or ``RAY_ADDRESS``) unless Ray is already
    initialised; progress is shown as Ray Data shows it.

    Args:
        inputs: Image files, folders and globs (listed by :func:`headseg.io.list_inputs`,
            as ``tools/predict.py`` lists them), or a
            ``ray.data.Dataset`` with a ``path`` column and optionally a ``bytes`` column
            (``ray.data.read_binary_files(..., include_paths=True)``, for object stores).
        out: Output folder; must be reachable by every node. A rerun skips inputs with records.
        seg, cls: Checkpoints of the two stages; both None for the bundled ``model``.
        model: Bundled model name (``headseg.pipeline.PRETRAINED``; None: the default), when
            seg and cls are None.
        score_thresh: Heads below this segmentation score are dropped (None: the bundled model's
            operating point, ``headseg.pipeline.OPERATING_THRESH``; 0.5 with ``seg``/``cls``), as
            ``tools/predict.py`` does.
        batch_size: Images per segmenter forward pass (same-size images only).
        flip: Test-time flip of the head crops (``HeadwearPipeline``'s ``flip``; None: the bundled
            model's own choice, ``headseg.pipeline.OPERATING_FLIP``, or none with ``seg``/``cls``).
        rows_per_batch: Inputs per ``map_batches`` batch, hence per records file.
        concurrency: Actors (default: as many as the cluster's GPUs or CPUs can hold).
        cpus_per_actor: CPU cores per actor; also its torch threads.
        gpus_per_actor: GPU share per actor (default 0.5 when the cluster has GPUs, so that
            one actor decodes while the other computes; 0 on a CPU cluster).
        max_restarts, max_task_retries: Ray's retries of a dead actor and of its batch.
        ray_remote_args: More ``map_batches`` arguments (``runtime_env``, ``resources``...).

    Returns:
        The summary written to ``out/summary.json``: ``files``, ``processed``, ``skipped``
        (``"<path>: <reason>"``), ``heads_per_class`` (over every record in ``out``), plus
        ``already_done`` (inputs skipped because they had records; None for a Dataset),
        ``actors`` and ``gpus_per_actor``.

    Raises:
        ModuleNotFoundError: ray[data] is not installed.
        ValueError: only one of ``seg`` and ``cls``, a Dataset without a ``path`` column, a
            non-positive size, or GPUs asked of a cluster without any.
    """
    ray = import_ray()
    if bool(seg) != bool(cls):
        raise ValueError(f"got seg={seg} and cls={cls}; give both checkpoints, or neither for the bundled model")
    if min(rows_per_batch, batch_size, cpus_per_actor, concurrency or 1) <= 0:
        raise ValueError(f"got rows_per_batch={rows_per_batch}, batch_size={batch_size}, "
                         f"cpus_per_actor={cpus_per_actor}, concurrency={concurrency}; all must be positive")
    out = Path(out).resolve()
    (out / RECORDS).mkdir(parents=True, exist_ok=True)
    done = _done(out)
    before = set(os.listdir(out / RECORDS))
    if not ray.is_initialized():
        ray.init()

    if isinstance(inputs, ray.data.Dataset):
        if "path" not in (inputs.columns() or []):
            raise ValueError(f"the Dataset has columns {inputs.columns()}; expected a 'path' column "
                             "(ray.data.read_binary_files(..., include_paths=True) makes one)")
        known = frozenset(done)
        todo, problems, already_done = inputs.filter(lambda row: row["path"] not in known), [], None
    else:
        listed, problems = list_inputs([inputs] if isinstance(inputs, (str, Path)) else inputs)
        files = [os.path.abspath(f) for f in listed]  # workers may run on other machines
        pending = [f for f in files if f not in done]
        already_done = len(files) - len(pending)
        todo = ray.data.from_items([{"path": f} for f in pending]) if pending else None

    resources = ray.cluster_resources()
    if gpus_per_actor is None:
        gpus_per_actor = 0.5 if resources.get("GPU", 0) else 0.0
    if gpus_per_actor and not resources.get("GPU", 0):
        raise ValueError(f"got gpus_per_actor={gpus_per_actor}, but the Ray cluster has no GPU "
                         f"({resources}); leave it unset (0 on a CPU cluster) or join a GPU cluster")
    if concurrency is None:
        concurrency = (int(resources["GPU"] / gpus_per_actor) if gpus_per_actor
                       else int(resources.get("CPU", 1) // cpus_per_actor))
    concurrency = max(1, concurrency)

    skipped, parts = list(problems), set()
    if todo is not None:
        remote_args = {"max_restarts": max_restarts, "max_task_retries": max_task_retries,
                       **(ray_remote_args or {})}
        with warnings.catch_warnings():
            # Ray 2.60 has no named parameter for max_restarts / max_task_retries yet and warns
            # about passing them as keywords, which is still its documented way.
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*is deprecated")
            results = todo.map_batches(
                HeadwearPredictor, batch_size=rows_per_batch, batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=concurrency),
                num_cpus=cpus_per_actor, num_gpus=gpus_per_actor,
                fn_constructor_kwargs={"out": str(out), "seg": str(seg) if seg else None, "model": model,
                                       "cls": ([str(c) for c in cls] if isinstance(cls, (list, tuple))
                                               else str(cls) if cls else None),
                                       "device": "cuda" if gpus_per_actor else "cpu",
                                       "threads": int(cpus_per_actor), "score_thresh": score_thresh,
                                       "batch_size": batch_size, "flip": flip},
                **remote_args)
        for rows in results.iter_batches(batch_size=None, batch_format="numpy"):
            for source, part, reason, labels in zip(rows["source"], rows["part"], rows["reason"], rows["labels"]):
                if part:
                    done[source] = json.loads(labels)
                    parts.add(part)
                else:
                    skipped.append(f"{source}: {reason}")

    records = out / RECORDS
    for name in os.listdir(records):
        # Files of attempts Ray discarded, and temporary files of writers that were killed.
        if (name not in before and name not in parts) or name.endswith(".tmp"):
            (records / name).unlink(missing_ok=True)
    counts = Counter(label for labels in done.values() for label in labels)
    bad_files = len(skipped) - len(problems)  # as predict.py counts: inputs that exist, read or not
    summary = {"files": len(done) + bad_files, "processed": len(done), "skipped": skipped,
               "heads_per_class": dict(counts.most_common()), "already_done": already_done,
               "actors": concurrency, "gpus_per_actor": gpus_per_actor}
    write_json(out / "summary.json", summary)
    return summary
