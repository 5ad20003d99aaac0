import contextlib
import os
import sys
import threading
from pathlib import Path

import pytest
import torch

from mmlab.config import get_preset
from mmlab.lab.registry import cpu_cores

# pytest-xdist (pyproject's addopts: -n auto): each worker's torch gets its share of the cores, not all of them
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    torch.set_num_threads(max(1, cpu_cores() // _WORKERS))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def nano():
    return get_preset("nano")


@pytest.fixture
def mirror_file():
    """A file of the data mirror ($MMLAB_DATA_MIRROR, else ../shared/data beside the repo).

    When MMLAB_DATA_MIRROR is set (as in CI) a missing file fails the test; otherwise it skips."""
    configured = os.environ.get("MMLAB_DATA_MIRROR")
    root = Path(configured) if configured else Path(__file__).resolve().parents[2] / "shared" / "data"

    def find(name: str) -> Path:
        path = root / name
        if not path.is_file():
            if configured:
                pytest.fail(f"{name} not found in MMLAB_DATA_MIRROR={configured}")
            pytest.skip(f"{name} not in the data mirror {root}")
        return path

    return find


# Subprocesses of the tests: one thread each (tests run beside each other), unbuffered output.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def train_cmd(out, config, *extra):
    """``mmlab train pretrain`` of a tiny model on the-verdict at characters, into ``out``."""
    return [sys.executable, "-m", "mmlab.cli", "train", "pretrain", "--config", str(config), "--data", "the-verdict",
            "--tokenizer", "char", "--out", str(out), "--batch-size", "4", "--block-size", "32",
            "--eval-interval", "20", "--eval-batches", "2", "--log-interval", "5", "--warmup-iters", "10",
            "--lr", "3e-3", *extra]


@pytest.fixture
def run_env(tmp_path, mirror_file):
    env = {**ENV, "MMLAB_DATA_MIRROR": str(mirror_file("the-verdict.txt").parent),
           "MMLAB_DATA_DIR": str(tmp_path / "cache")}
    config = tmp_path / "model.json"
    get_preset("nano", dropout=0.1, vocab_size=64).to_json(config)  # dropout: the RNG state must resume too
    return env, config


@contextlib.contextmanager
def serving(ckpt, **config):
    """``mmlab serve``'s server for checkpoint ``ckpt`` on an ephemeral port of 127.0.0.1, answering from a
    background thread; ``config``: ServerConfig fields. Shut down and joined on exit."""
    from mmlab.infer.server import ServerConfig, make_server

    srv = make_server(ckpt, ServerConfig(host="127.0.0.1", port=0, **config), device="cpu")
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)
