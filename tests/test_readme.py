"""The README's training workflow runs as written, on tiny synthetic data and tiny models."""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest

from tests.conftest import TINY_SEG

ROOT = Path(__file__).resolve().parents[1]

# What the test adds to each tool's own --set list, so that a run takes seconds.
TINY = {
    "train_seg": TINY_SEG,
    "train_cls": ["model.weights=none", "train.epochs=1", "train.frozen_epochs=0", "train.max_iters=1",
                  "train.batch_size=4", "data.workers=0"],
}


def readme_training_commands() -> list[str]:
    """The ``python tools/...`` commands of the README's "Training on your own COCO data" block."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Training on your own COCO data"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    lines = [line.split("#")[0].rstrip() for line in block.replace("\\\n", " ").splitlines()]
    return [" ".join(line.split()) for line in lines if line.strip().startswith("python tools/")]


def _argv(command: str, paths: dict[str, str], tool: str) -> list[str]:
    for old, new in paths.items():
        command = command.replace(old, new)
    argv = shlex.split(command)[2:]
    extra = TINY.get(tool, [])
    if extra and "--set" in argv:
        end = argv.index("--set") + 1
        while end < len(argv) and not argv[end].startswith("--"):
            end += 1
        argv[end:end] = extra
    elif extra:
        argv += ["--set", *extra]
    return argv


def test_readme_commands_are_found() -> None:
    tools = [c.split()[1] for c in readme_training_commands()]
    assert tools == ["tools/check_dataset.py", "tools/train_seg.py", "tools/eval_seg.py", "tools/make_crops.py",
                     "tools/make_crops.py", "tools/make_crops.py", "tools/train_cls.py", "tools/eval_cls.py",
                     "tools/eval_pipeline.py", "tools/pack_model.py"]


def test_readme_training_workflow_runs_as_written(synthetic_data: dict, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # configs/... paths are relative to the repository, as in the README
    paths = {"my/train.json": str(synthetic_data["train"]), "my/val.json": str(synthetic_data["val"]),
             "my/test.json": str(synthetic_data["test"]), "runs/": f"{tmp_path}/runs/",
             "crops/": f"{tmp_path}/crops/"}
    for command in readme_training_commands():
        tool = Path(command.split()[1]).stem
        module = importlib.import_module(f"tools.{tool}")
        status = module.main(module.parse_args(_argv(command, paths, tool)))
        assert status in (None, 0) or not isinstance(status, int), (command, status)
    for path in ("runs/seg/best.pt", "runs/seg/val.json", "crops/train/index.csv", "crops/train_pred/index.csv",
                 "runs/cls/best.pt", "runs/cls/val.json", "runs/pipeline_test.json", "runs/cls/packed.pt"):
        assert (tmp_path / path).is_file(), path
