"""The training engine both stages share: best-checkpoint choice, run folders, loss checks, RNG."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from headseg.engine import EpochSampler, SeededSamples, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from tests.conftest import TINY_SEG
from tools import train_seg


def _seg_args(data: dict, out: Path, *extra: str, val: bool = True) -> list[str]:
    val_set = [f"data.val_json={data['val']}"] if val else []
    return ["--out", str(out), "--no-progress", "--set", *TINY_SEG, f"data.train_json={data['train']}",
            *val_set, *extra]


def test_without_val_the_first_epoch_is_best(synthetic_data: dict, tmp_path: Path) -> None:
    # The first epoch's training loss is well above 1; best.pt must not wait for it to drop.
    out = tmp_path / "noval"
    train_seg.main(train_seg.parse_args(_seg_args(synthetic_data, out, val=False)))
    assert (out / "best.pt").is_file()
    assert load_checkpoint(out / "best.pt", "segmenter")["best"] < -1.0


def test_misspelt_select_metric_is_an_error(synthetic_data: dict, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="did you mean .*'bbox/AP50'"):
        train_seg.main(train_seg.parse_args(_seg_args(synthetic_data, tmp_path / "x",
                                                      "train.select_metric=bbox/AP5O")))


def test_fresh_run_in_an_old_folder_starts_a_fresh_log(synthetic_data: dict, tmp_path: Path) -> None:
    out = tmp_path / "again"
    for _ in range(2):
        train_seg.main(train_seg.parse_args(_seg_args(synthetic_data, out, val=False)))
    with (out / "metrics.csv").open() as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["0"]


def test_a_run_without_progress_bars_logs_its_steps(caplog: pytest.LogCaptureFixture) -> None:
    from torch import nn

    from headseg.engine import train_one_epoch

    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [torch.ones(4, 2)] * 3
    with caplog.at_level("INFO", logger="headseg.engine"):
        result = train_one_epoch(model, batches, optimizer, lambda b: ({"loss": model(b).pow(2).mean()}, len(b)),
                                 epoch=0, epochs=2, steps=3, progress=False, log_seconds=0.0)
    lines = [r.getMessage() for r in caplog.records if "samples/s" in r.getMessage()]
    assert [line.split(":")[0] for line in lines] == [f"epoch 1/2 step {i}/3" for i in (1, 2, 3)]
    assert result["steps"] == 3 and result["samples"] == 12
    caplog.clear()
    with caplog.at_level("INFO", logger="headseg.engine"):
        train_one_epoch(model, batches, optimizer, lambda b: ({"loss": model(b).mean()}, len(b)),
                        epoch=0, epochs=1, steps=3, progress=True, log_seconds=0.0)
    assert not [r for r in caplog.records if "samples/s" in r.getMessage()]  # the bar shows it instead


def test_rng_state_holds_the_cuda_generators(monkeypatch: pytest.MonkeyPatch) -> None:
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [torch.full((4,), 7, dtype=torch.uint8)])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    state = rng_state()
    assert torch.equal(state["cuda"][0], torch.full((4,), 7, dtype=torch.uint8))
    set_rng_state(state)
    assert len(restored) == 1 and torch.equal(restored[0][0], state["cuda"][0])


def test_rng_state_round_trips_and_loads_weights_only(tmp_path: Path) -> None:
    import random

    import numpy as np

    state = rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1))
    save_checkpoint(tmp_path / "s.pt", {"rng": state})
    set_rng_state(torch.load(tmp_path / "s.pt", weights_only=True)["rng"])
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(1), expected[2])


def test_wrong_kind_names_the_right_tool(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "seg.pt", {"kind": "headseg-segmenter"})
    with pytest.raises(ValueError, match=r"tools/train_cls\.py"):
        load_checkpoint(tmp_path / "seg.pt", "classifier")
    save_checkpoint(tmp_path / "cls.pt", {"kind": "headseg-classifier"})
    with pytest.raises(ValueError, match=r"tools/train_seg\.py"):
        load_checkpoint(tmp_path / "cls.pt", "segmenter")


class _Pickled:
    """Not a tensor or plain value: weights_only loading refuses it."""


def test_inference_loading_is_weights_only(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "x.pt", {"kind": "headseg-segmenter", "extra": _Pickled()})
    with pytest.raises(ValueError, match="cannot be read"):
        load_checkpoint(tmp_path / "x.pt", "segmenter")
    assert isinstance(load_checkpoint(tmp_path / "x.pt", "segmenter", training_state=True)["extra"], _Pickled)


_DDP_SCRIPT = """
import os, sys
import torch, torch.distributed as dist
from torch import nn
from headseg.engine import Distributed, NonFiniteLossError, train_one_epoch
rank = int(sys.argv[1])
dist.init_process_group("gloo", rank=rank, world_size=2)
torch.manual_seed(0)
model = nn.parallel.DistributedDataParallel(nn.Linear(2, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
step = [0]
def losses(batch):
    step[0] += 1
    loss = model(batch).mean()
    if rank == 1 and step[0] == 2:
        loss = loss * float("nan")
    return {"loss": loss}, len(batch)
try:
    train_one_epoch(model, [torch.ones(4, 2)] * 3, optimizer, losses, epoch=0, epochs=1, steps=3,
                    distributed=Distributed(rank, 2, 0), progress=False)
    print("finished")
except NonFiniteLossError as error:
    print("stopped:", error)
"""


def test_non_finite_loss_on_one_process_stops_every_process(tmp_path: Path) -> None:
    from tests.test_segmentation import ROOT, _free_port

    script = tmp_path / "ddp.py"
    script.write_text(_DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port())}
    procs = [subprocess.Popen([sys.executable, str(script), str(r)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    try:
        outs = [p.communicate(timeout=120) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail("a process hung after another one's loss became NaN")
    for rank, (out, err) in enumerate(outs):
        assert "stopped:" in out and "epoch 1, step 2" in out, (rank, out, err[-2000:])
    assert "on this process" in outs[1][0] and "on this process" not in outs[0][0]


# ----------------------------------------------------------------------------- data order


class _Noisy(torch.utils.data.Dataset):
    """Each item is its index plus a draw from torch's global generator, as augmentation does."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, index: int) -> tuple[int, float]:
        return index, torch.rand(1).item()


def _epoch(workers: int, start: int = 0, rank: int = 0, world_size: int = 1) -> list[tuple[int, float]]:
    loader = torch.utils.data.DataLoader(SeededSamples(_Noisy()), batch_size=3, num_workers=workers,
                                         sampler=EpochSampler(10, 0, 1, start, rank, world_size),
                                         collate_fn=lambda batch: batch, generator=torch.Generator())
    return [item for batch in loader for item in batch]


def test_epoch_order_and_augmentation_depend_only_on_seed_epoch_and_position() -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    one = _epoch(workers=0)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's generator is left alone
    assert sorted(i for i, _ in one) == list(range(10))
    assert _epoch(workers=2) == one  # whichever worker loads a sample, it is drawn the same
    assert _epoch(workers=0, start=4) == one[4:]  # a resumed epoch sees exactly the rest
    assert [i for i, _ in EpochSampler(10, 0, 2)] != [i for i, _ in one]  # each epoch its own order
    shards = [_epoch(workers=0, rank=r, world_size=3) for r in range(3)]
    assert all(len(s) == 4 for s in shards)  # 10 padded to 12, as DistributedSampler pads
    assert {i for s in shards for i, _ in s} == set(range(10))
    assert shards[0][0] == one[0] and shards[1][0] == one[1]  # the same positions, shared out


def test_a_mid_epoch_checkpoint_resumes_as_if_never_stopped(synthetic_data: dict, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import headseg.engine as engine

    def args(out: Path, *extra: str) -> list[str]:
        return _seg_args(synthetic_data, out, "train.epochs=2", "train.max_iters=4", *extra)

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    train_seg.main(train_seg.parse_args(args(straight, "train.checkpoint_minutes=0")))

    real_save = engine.save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        if state.get("partial", {}).get("epoch") == 1 and state["partial"]["step"] == 2:
            raise KeyboardInterrupt("killed in the second epoch, right after the checkpoint of its step 2")

    monkeypatch.setattr(engine, "save_checkpoint", save_then_die)
    every_step = "train.checkpoint_minutes=1e-9"
    with pytest.raises(KeyboardInterrupt):
        train_seg.main(train_seg.parse_args(args(killed, every_step)))
    monkeypatch.setattr(engine, "save_checkpoint", real_save)
    saved = load_checkpoint(killed / "last.pt", "segmenter")
    assert saved["epoch"] == 0 and saved["partial"]["step"] == 2  # the last finished epoch is still 0
    train_seg.main(train_seg.parse_args(args(killed, every_step, "--resume")))

    a, b = load_checkpoint(straight / "last.pt", "segmenter"), load_checkpoint(killed / "last.pt", "segmenter")
    assert a["epoch"] == b["epoch"] == 1 and "partial" not in b
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    rows_a, rows_b = (list(csv.DictReader((d / "metrics.csv").open())) for d in (straight, killed))
    assert len(rows_b) == 2  # one row per epoch, the interrupted one once
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b]  # epoch means over every step


def test_the_schedule_waits_for_a_step_the_gradient_scaler_skipped(recwarn: pytest.WarningsRecorder) -> None:
    from torch import nn

    from headseg.engine import train_one_epoch

    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0)
    # A scale this large overflows fp32 gradients too, so the first step is skipped on the CPU
    # just as an fp16 one would be on CUDA; the halved scale (3 * 2^126 < fp32's max) lets the
    # next steps through.
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 127, growth_interval=1000)
    before = model.weight.detach().clone()
    train_one_epoch(model, [torch.ones(4, 2)] * 3, optimizer,
                    lambda b: ({"loss": model(b).mean() * 3}, len(b)),  # gradients 3: 3 * 2^127 overflows
                    epoch=0, epochs=1, steps=3, scaler=scaler, scheduler=scheduler, progress=False)
    assert scaler.get_scale() < 2.0 ** 127  # the first step overflowed and was skipped
    assert not torch.equal(model.weight, before)  # later ones went through
    assert scheduler.last_epoch == 2  # stepped twice, not three times
    assert not [w for w in recwarn if "lr_scheduler.step()" in str(w.message)]
