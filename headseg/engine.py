"""The training engine both stages share: the epoch loop, checkpoints, run folders, DDP.

A stage supplies its model, data and a function from a batch to its losses; everything else
lives here once (in the spirit of torchvision's ``references/detection/engine.py``):

* :func:`train_one_epoch` steps the optimizer (optionally under autocast with a gradient
  scaler, gradient clipping and a per-step LR schedule) and stops every process at once when
  the loss stops being finite.
* :class:`Checkpointer` owns a run folder: ``last.pt`` every epoch and, within long epochs,
  every few minutes (atomically, so a killed run loses at most those minutes and ``--resume``
  continues from the step it reached), ``best.pt`` when the selection score improves,
  ``metrics.csv`` and ``curves.png``.
* :class:`EpochSampler` and :class:`SeededSamples` make an epoch's order and every sample's
  augmentation a function of (seed, epoch, position) alone, so a run resumed mid-epoch trains
  on the same data, the same way, as one never stopped, with any number of loader workers.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from headseg.io import atomic_write

log = logging.getLogger(__name__)

# The tool that writes each kind of checkpoint, for error messages.
TRAIN_TOOLS = {"segmenter": "tools/train_seg.py", "classifier": "tools/train_cls.py"}


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped and the last good checkpoint is kept."""


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every generator a training step draws from: python, numpy, torch CPU and each CUDA device.

    Stored as tensors and plain Python values only, so a checkpoint holding it still loads with
    ``torch.load(weights_only=True)``.
    """
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`; the CUDA generators too when the state and this machine have them."""
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def lr_lambda(total_iters: int, warmup_iters: int, schedule: str,
              milestones: tuple[float, ...] = (0.67, 0.89), gamma: float = 0.1):
    """Per-iteration LR factor: linear warm-up from 0.001, then cosine to 0 or steps of ``gamma``.

    ``milestones`` are fractions of ``total_iters`` so a recipe keeps its shape when the epoch
    count changes.
    """
    if schedule not in ("cosine", "step", "constant"):
        raise ValueError(f"schedule {schedule!r} is not one of cosine, step, constant")
    warmup_iters = min(warmup_iters, max(total_iters - 1, 0))

    def factor(it: int) -> float:
        if it < warmup_iters:
            alpha = it / max(warmup_iters, 1)
            return 0.001 * (1 - alpha) + alpha
        if schedule == "cosine":
            progress = (it - warmup_iters) / max(total_iters - warmup_iters, 1)
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        if schedule == "step":
            return gamma ** sum(it >= m * total_iters for m in milestones)
        return 1.0

    return factor


# ----------------------------------------------------------------------------- data order


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """The augmentation seed of the sample at ``position`` of ``epoch``'s order."""
    return int(np.random.SeedSequence([seed, epoch, position]).generate_state(1)[0])


class EpochSampler(torch.utils.data.Sampler):
    """One epoch's shuffled order as ``(index, augmentation seed)`` keys for :class:`SeededSamples`.

    The order depends only on ``(seed, epoch)``, so ``start`` can skip the samples a killed run
    already trained on. Under DDP each process takes every ``world_size``-th position of the
    order, padded by repetition to a multiple of ``world_size`` (as ``DistributedSampler`` does).

    Args:
        size: Samples in the dataset.
        seed, epoch: Together they fix the order and every sample's augmentation seed.
        start: Positions of this process's share to skip (steps already done x batch size).
        rank, world_size: This process and how many share the epoch.
    """

    def __init__(self, size: int, seed: int, epoch: int, start: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        order = torch.randperm(size, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
        total = -(-size // world_size) * world_size
        order = (order * (-(-total // max(size, 1))))[:total]
        positions = range(rank, total, world_size)
        self.keys = [(order[p], sample_seed(seed, epoch, p)) for p in positions][start:]

    def __iter__(self):
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


class SeededSamples(torch.utils.data.Dataset):
    """``dataset[index]`` drawn under its own seed, from :class:`EpochSampler`'s ``(index, seed)`` keys.

    torchvision's random transforms draw from torch's global generator; seeding it per sample
    (and restoring it afterwards, so the caller's stream is untouched when there are no loader
    workers) makes each sample's augmentation independent of which worker loads it and of
    where a run was resumed.
    """

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """``torch.save`` to a temporary file, then rename: a kill mid-write keeps the old file."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    return atomic_write(path, lambda f: f.write(data))


def load_checkpoint(path: str | Path, kind: str, training_state: bool = False) -> dict[str, Any]:
    """Load a headseg checkpoint of the given ``kind`` (``segmenter`` or ``classifier``).

    Args:
        path: ``best.pt`` / ``last.pt`` from the training tools, or a packed model file.
        kind: ``segmenter`` or ``classifier``.
        training_state: Only for resuming a run from its own ``last.pt``: load with
            ``weights_only=False`` so optimizer and RNG objects of older runs come back too.
            Everything else (inference, evaluation, packing) loads tensors and plain values only
            (``weights_only=True``), so a checkpoint from elsewhere cannot run code.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a headseg checkpoint, or one of the other kind.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if training_state:
        log.info("resuming: loading the full training state of %s (weights_only=False); resume only "
                 "from runs you wrote", path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=not training_state)
    except Exception as e:  # torch raises many types for a damaged file
        raise ValueError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or state.get("kind") != f"headseg-{kind}":
        found = state.get("kind") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path} is not a headseg {kind} checkpoint (found {found!r}); "
                         f"pass the best.pt or last.pt written by {TRAIN_TOOLS.get(kind, 'the training tools')}")
    return state


def check_output_dir(path: str | Path, min_free_mb: int = 200) -> Path:
    """Create ``path`` and fail early, with a clear message, if it is unwritable or the disk full."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise OSError(f"output folder {path} is not writable ({e.strerror}); choose another --out") from None
    free_mb = shutil.disk_usage(path).free / 2**20
    if free_mb < min_free_mb:
        raise OSError(f"only {free_mb:.0f} MB free under {path}; checkpoints need at least "
                      f"{min_free_mb} MB. Free some space or choose another --out")
    return path


@dataclass(frozen=True)
class Distributed:
    """Process-group facts for ``torchrun`` (RANK / WORLD_SIZE / LOCAL_RANK in the environment)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_distributed() -> Distributed:
    """Join the process group started by ``torchrun``; NCCL on CUDA, gloo on the CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return Distributed(rank, world_size, local_rank)


def default_device(dist_info: Distributed | None = None) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", dist_info.local_rank if dist_info else 0)
    return torch.device("cpu")


class MetricsLog:
    """One CSV row per epoch, rewritten atomically, and PNG curves of losses and val metrics."""

    def __init__(self, out_dir: str | Path, plot_keys: tuple[str, ...]) -> None:
        self.out_dir = Path(out_dir)
        self.csv_path = self.out_dir / "metrics.csv"
        self.plot_keys = plot_keys
        self.rows: list[dict[str, float]] = []
        if self.csv_path.is_file():
            with self.csv_path.open() as f:
                self.rows = [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]

    def truncate(self, epochs_done: int) -> None:
        """Forget rows past the resumed epoch (the killed epoch may have logged nothing or half)."""
        self.rows = [r for r in self.rows if r.get("epoch", 0) < epochs_done]

    def append(self, row: dict[str, float]) -> None:
        self.rows.append(row)
        keys: list[str] = []
        for r in self.rows:
            keys += [k for k in r if k not in keys]
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=keys)
        writer.writeheader()
        writer.writerows(self.rows)
        data = text.getvalue().encode()
        atomic_write(self.csv_path, lambda f: f.write(data))
        self.plot()

    def plot(self) -> Path:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415

        epochs = [r["epoch"] + 1 for r in self.rows]
        loss_keys = [k for k in self.rows[-1] if k.startswith("loss")]
        metric_keys = [k for k in self.plot_keys if any(k in r for r in self.rows)]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for k in loss_keys:
            axes[0].plot(epochs, [r.get(k, np.nan) for r in self.rows], marker="o", label=k)
        axes[0].set(xlabel="epoch", ylabel="training loss (epoch mean)", title="Losses")
        axes[0].legend(fontsize=7)
        for k in metric_keys:
            axes[1].plot(epochs, [r.get(k, np.nan) for r in self.rows], marker="o", label=k)
        axes[1].set(xlabel="epoch", ylabel="value", title="Validation", ylim=(0, 1))
        if metric_keys:
            axes[1].legend(fontsize=7)
        for ax in axes:
            ax.grid(alpha=0.3)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        data = buf.getvalue()
        return atomic_write(self.out_dir / "curves.png", lambda f: f.write(data))


# ----------------------------------------------------------------------------- the loop


def check_finite(loss: torch.Tensor, distributed: Distributed) -> bool:
    """Whether ``loss`` is finite on *every* process.

    Reduced before anyone acts on it: a process that stopped alone would leave the others
    waiting forever in DDP's next gradient all-reduce.
    """
    finite = torch.isfinite(loss.detach()).to(torch.float32).reshape(1)
    if distributed.enabled:
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite.item())


def train_one_epoch(model: nn.Module, loader: Iterable[Any], optimizer: torch.optim.Optimizer,
                    compute_losses: Callable[[Any], tuple[dict[str, torch.Tensor], int]], *,
                    epoch: int, epochs: int, steps: int, distributed: Distributed | None = None,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                    scaler: torch.amp.GradScaler | None = None, autocast: dict[str, Any] | None = None,
                    clip_grad_norm: float = 0.0, last_good: Path | None = None, hint: str = "Lower train.lr",
                    desc: str = "", log_every: int = 20, progress: bool = True,
                    log_seconds: float = 60.0, resume_from: dict[str, Any] | None = None,
                    save_every: float = 0.0,
                    save_partial: Callable[[dict[str, Any]], None] | None = None,
                    after_step: Callable[[], None] | None = None) -> dict[str, float]:
    """Train ``model`` for one epoch of at most ``steps`` batches.

    Args:
        model: The model being trained (DDP-wrapped or not), already in training mode.
        loader: Batches, passed as they come to ``compute_losses``.
        compute_losses: ``batch -> ({name: scalar loss}, samples in the batch)``; the step
            minimises their sum. Names ``loss_x`` are logged as ``loss/x`` beside the total.
        epoch, epochs: 0-based epoch and the run's total, for messages.
        steps: Batches to train on (the loader may hold more).
        distributed: The process group; a non-finite loss on any process stops all of them.
        scheduler: Stepped after every optimizer step (per-iteration schedules); not after a
            step the gradient scaler skipped for overflowing fp16 gradients.
        scaler: Gradient scaler for fp16 autocast; None or disabled otherwise.
        autocast: ``torch.autocast`` arguments around ``compute_losses``; None for none.
        clip_grad_norm: Clip the gradient norm to this (0: no clipping).
        last_good: The last checkpoint written, named in the non-finite-loss message.
        hint: What to change when the loss stops being finite.
        desc, log_every, progress: The progress bar's title, its loss refresh (steps), and
            whether to show it at all.
        log_seconds: Without a progress bar (logs to a file under ``nohup``), a log line at most
            this often with the step, mean loss, lr and samples/s, so a long epoch is never silent.
        resume_from: The ``progress`` a mid-epoch checkpoint saved (``step``, loss ``sums``,
            ``samples``, ``seconds``): the epoch goes on from there, and its means cover all of it.
            The loader must already skip the batches done (:class:`EpochSampler`'s ``start``).
        save_every, save_partial: Every ``save_every`` seconds (0: never) after an optimizer step
            that does not end the epoch, ``save_partial(progress)`` writes a mid-epoch checkpoint.
        after_step: Called after every training step (e.g. to update averaged weights).

    Returns:
        Epoch means ``loss`` and ``loss/x``, plus ``steps``, ``samples`` and ``seconds``.

    Raises:
        NonFiniteLossError: the loss became NaN/inf; the message names epoch and step.
    """
    distributed = distributed or Distributed()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    start = resume_from or {"step": 0, "sums": {}, "samples": 0, "seconds": 0.0}
    sums: dict[str, float] = dict(start["sums"])
    done, samples, t0 = start["step"], start["samples"], time.time() - start["seconds"]
    last_log = last_save = time.time()
    bar = tqdm(loader, total=steps, initial=done, desc=desc or f"epoch {epoch + 1}/{epochs}",
               disable=not (progress and distributed.is_main))
    for step, batch in enumerate(bar, start=done):
        if step >= steps:
            break
        with torch.autocast(**autocast) if autocast else contextlib.nullcontext():
            losses, count = compute_losses(batch)
        loss = sum(losses.values())
        if not check_finite(loss, distributed):
            parts = f" ({ {k: round(v.item(), 4) for k, v in losses.items()} })" if len(losses) > 1 else ""
            where = "" if torch.isfinite(loss) else " on this process"
            value = loss.item() if not torch.isfinite(loss) else "non-finite"
            good = last_good if last_good is not None and last_good.is_file() else "none yet"
            raise NonFiniteLossError(
                f"loss became {value}{where} at epoch {epoch + 1}, step {step + 1}{parts}; the last "
                f"good checkpoint is {good}. {hint}")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
        else:
            loss.backward()
        if clip_grad_norm > 0:
            if scaler is not None:
                scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(params, clip_grad_norm)
        stepped = True
        if scaler is not None:
            scale = scaler.get_scale()
            scaler.step(optimizer)
            scaler.update()
            # The scaler skips the step and lowers its scale when the fp16 gradients overflow (the
            # first steps, often); the schedule then waits, instead of running ahead of the optimizer.
            stepped = scaler.get_scale() >= scale
        else:
            optimizer.step()
        if scheduler is not None and stepped:
            scheduler.step()
        if after_step is not None:
            after_step()
        done, samples = done + 1, samples + count
        sums["loss"] = sums.get("loss", 0.0) + loss.item()
        for k, v in losses.items():
            if k.startswith("loss_"):
                sums[k.replace("loss_", "loss/")] = sums.get(k.replace("loss_", "loss/"), 0.0) + v.item()
        if step % log_every == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{optimizer.param_groups[0]['lr']:.4g}")
        now = time.time()
        if not progress and distributed.is_main and now - last_log >= log_seconds:
            last_log = now
            log.info("%s step %d/%d: loss %.4f (epoch mean), lr %.4g, %.2f samples/s",
                     desc or f"epoch {epoch + 1}/{epochs}", done, steps, sums["loss"] / done,
                     optimizer.param_groups[0]["lr"], samples / max(now - t0, 1e-6))
        if (save_partial is not None and distributed.is_main and save_every > 0 and now - last_save >= save_every
                and done < steps):
            save_partial({"epoch": epoch, "step": done, "sums": dict(sums), "samples": samples,
                          "seconds": now - t0})
            last_save = time.time()
    bar.close()
    return {**{k: v / max(done, 1) for k, v in sums.items()}, "steps": done, "samples": samples,
            "seconds": time.time() - t0}


# ----------------------------------------------------------------------------- run folders

# Keys of the training state that stay in last.pt and never reach best.pt.
# ``training_weights``: the weights being trained, where ``model`` holds their moving average.
TRAINING_STATE = ("optimizer", "scheduler", "scaler", "rng", "training_weights")


class Checkpointer:
    """A run folder: ``last.pt`` every epoch and within it, ``best.pt``, ``metrics.csv``, ``curves.png``.

    ``last.pt`` is written at the end of every epoch and, with :meth:`save_partial`, within long
    ones; ``best.pt`` when the selection score improves.

    The best checkpoint is the one with the highest score; with ``tie`` values given, an equal
    score with a lower tie value (e.g. a lower val loss) also counts as better. A fresh run
    in a folder that already holds a run starts a fresh log; a resumed one keeps the rows of
    the epochs it resumes after.

    Args:
        out_dir: The run folder (created, and checked for space, by the main process).
        kind: ``segmenter`` or ``classifier``, checked when resuming.
        plot_keys: Validation metrics drawn in ``curves.png``.
        distributed: Only the main process writes.
    """

    def __init__(self, out_dir: str | Path, kind: str, plot_keys: tuple[str, ...],
                 distributed: Distributed | None = None) -> None:
        self.distributed = distributed or Distributed()
        self.out_dir = Path(out_dir)
        if self.distributed.is_main:
            check_output_dir(self.out_dir)
        self.kind = kind
        self.last_path, self.best_path = self.out_dir / "last.pt", self.out_dir / "best.pt"
        self.metrics = MetricsLog(self.out_dir, plot_keys)
        self.best, self.best_tie, self.best_epoch, self.start_epoch = -math.inf, math.inf, -1, 0
        # Where the epoch at start_epoch stopped, when last.pt was saved within it (else None).
        self.partial: dict[str, Any] | None = None

    def resume(self, resume: bool) -> dict[str, Any] | None:
        """With ``resume``, load ``last.pt`` (if any) and restore the RNG and best-so-far.

        Returns:
            The loaded checkpoint, for the stage to restore its model and optimizer; None for
            a fresh start. After a mid-epoch checkpoint, :attr:`partial` says where that epoch
            stopped (for :class:`EpochSampler`'s ``start`` and :func:`train_one_epoch`'s
            ``resume_from``), and the stage must not reseed the generators for that epoch.
        """
        state = None
        if resume and self.last_path.is_file():
            state = load_checkpoint(self.last_path, self.kind, training_state=True)
            self.start_epoch = state["epoch"] + 1
            self.best = state["best"]
            self.best_tie = state.get("best_tie", state.get("best_loss", math.inf))
            self.best_epoch = state.get("best_epoch", -1)
            set_rng_state(state["rng"])
            self.partial = state.get("partial")
            if self.partial is not None:
                self.start_epoch = self.partial["epoch"]
                log.info("resumed from %s in epoch %d, after step %d", self.last_path, self.start_epoch + 1,
                         self.partial["step"])
            else:
                log.info("resumed from %s after epoch %d", self.last_path, self.start_epoch)
        elif resume:
            log.warning("--resume: no %s yet, starting from scratch", self.last_path)
        self.metrics.truncate(self.start_epoch)
        return state

    def write_config(self, config: dict[str, Any]) -> None:
        """``config.yaml`` of the run, for people (checkpoints carry their own copy)."""
        import yaml  # noqa: PLC0415

        if self.distributed.is_main:
            self.out_dir.joinpath("config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    def is_improvement(self, score: float, tie: float | None = None) -> bool:
        """Whether an epoch scoring ``score`` (and ``tie``) would become ``best.pt``."""
        return score > self.best or (tie is not None and score == self.best and tie < self.best_tie)

    def _with_run_state(self, checkpoint: dict[str, Any], epoch: int) -> dict[str, Any]:
        """``checkpoint`` plus what ``--resume`` restores: last finished epoch, best so far, generators."""
        return {**checkpoint, "epoch": epoch, "best": self.best, "best_tie": self.best_tie,
                "best_epoch": self.best_epoch, "rng": rng_state()}

    def save_partial(self, checkpoint: dict[str, Any], progress: dict[str, Any]) -> None:
        """``last.pt`` within an epoch: weights and training state after ``progress["step"]`` steps.

        Its ``epoch`` stays the last finished one (what evaluation and packing read); the
        ``partial`` entry tells ``--resume`` to go on within the next. ``best.pt`` and
        ``metrics.csv`` change only at the end of an epoch.
        """
        if self.distributed.is_main:
            save_checkpoint(self.last_path, {**self._with_run_state(checkpoint, progress["epoch"] - 1),
                                             "partial": progress})
            log.info("checkpoint in epoch %d after step %d: %s", progress["epoch"] + 1, progress["step"],
                     self.last_path)

    def end_epoch(self, epoch: int, checkpoint: dict[str, Any], score: float, row: dict[str, float],
                  tie: float | None = None) -> bool:
        """Choose, save and log one finished epoch (main process; others only keep count).

        Args:
            epoch: 0-based epoch just finished.
            checkpoint: Weights, config and preprocessing, plus any training state under the
                :data:`TRAINING_STATE` keys (those go to ``last.pt`` only) and stage extras.
            score: Higher is better; it picks ``best.pt``.
            row: The epoch's ``metrics.csv`` row.
            tie: Breaks equal scores, lower is better; None: the earlier epoch stays best.

        Returns:
            Whether this epoch became ``best.pt``.
        """
        improved = self.is_improvement(score, tie)
        if improved:
            self.best, self.best_epoch = score, epoch
            self.best_tie = tie if tie is not None else math.inf
        if self.distributed.is_main:
            full = self._with_run_state(checkpoint, epoch)
            if improved:
                save_checkpoint(self.best_path, {k: v for k, v in full.items() if k not in TRAINING_STATE})
            save_checkpoint(self.last_path, full)
            self.metrics.append(row)
            log.info("epoch %d: %s", epoch + 1, {k: round(v, 4) for k, v in row.items() if k.count("/") <= 1})
        return improved
