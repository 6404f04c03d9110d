"""What both training loops share: seeding, schedules, checkpoints, distributed setup, logs, plots.

Checkpoints are written atomically every epoch (``last.pt``), so a killed run loses at most the
epoch in progress and ``--resume`` continues from the last complete one.
"""

from __future__ import annotations

import csv
import io
import math
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from headseg.io import atomic_write


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped and the last good checkpoint is kept."""


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


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


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """``torch.save`` to a temporary file, then rename: a kill mid-write keeps the old file."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    return atomic_write(path, lambda f: f.write(data))


def load_checkpoint(path: str | Path, kind: str) -> dict[str, Any]:
    """Load a headseg checkpoint of the given ``kind`` (``segmenter`` or ``classifier``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a headseg checkpoint, or one of the other kind.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises many types for a damaged file
        raise ValueError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or state.get("kind") != f"headseg-{kind}":
        found = state.get("kind") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path} is not a headseg {kind} checkpoint (found {found!r}); "
                         f"pass the best.pt or last.pt written by tools/train_{kind[:3]}.py")
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
