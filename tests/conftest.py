"""Shared fixtures. No test may reach the network: download functions are made to fail loudly."""

from __future__ import annotations

import socket
import urllib.request

import pytest
import torch


class NetworkAccessError(RuntimeError):
    """Raised when a test reaches a function that would download something."""


def _refuse(*args, **kwargs):
    raise NetworkAccessError(
        f"a test tried to download {args[:1]!r}; tests must run offline (weights belong in the hub cache)"
    )


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "download_url_to_file", _refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", _refuse)
    monkeypatch.setattr(urllib.request, "urlopen", _refuse)
    real_connect = socket.socket.connect

    def connect(sock: socket.socket, address) -> None:
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and not host.startswith(("127.", "localhost", "::1", "/")):
            _refuse(address)
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


@pytest.fixture(autouse=True)
def deterministic() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Tiny synthetic COCO splits (128 px, exact masks, 7 attire classes), made once per run."""
    from datasets.synthetic import SyntheticConfig, make_synthetic_splits

    out = tmp_path_factory.mktemp("synthetic")
    return make_synthetic_splits(out, {"train": 8, "val": 4, "test": 4},
                                 SyntheticConfig.fixed_size(128), seed=0)


# A Mask R-CNN small enough to train a step in about a second on 2 CPU cores.
TINY_SEG = [
    "model.weights=none", "model.min_size=128", "model.max_size=128", "model.fpn_channels=32",
    "model.box_head_dim=64", "model.mask_head_layers=[32]", "model.rpn_post_nms_top_n_test=50",
    "train.epochs=1", "train.max_iters=2", "train.batch_size=2", "train.warmup_iters=1",
    "data.workers=0",
]
