"""Presets from the Hub: cache first, and a clear error within seconds when offline."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import constants

from glip.hub import download
from glip.hub.download import CheckpointUnavailableError, download_preset_checkpoint
from glip.hub.presets import PRESETS
from glip.pipeline import GLIP

GLIP_T = PRESETS["glip_t"]


@pytest.fixture
def empty_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hub cache, offline mode off, and an endpoint on a closed local port (discard, 9)."""
    cache = tmp_path / "hub-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_ETAG_TIMEOUT", raising=False)
    return cache


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A local port that accepts connections and never answers (a black-holed proxy or firewall)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        server.close()


def _assert_helpful(message: str, cache: Path) -> None:
    assert GLIP_T.checkpoint in message
    assert "GLIPModel/GLIP" in message
    assert str(cache) in message, "the error says where to put the file"
    assert "glip convert" in message


def _load_and_time() -> tuple[float, str]:
    start = time.perf_counter()
    with pytest.raises(CheckpointUnavailableError) as error:
        GLIP.from_pretrained("glip_t")
    return time.perf_counter() - start, str(error.value)


def test_closed_endpoint_fails_fast_naming_the_file(empty_hub: Path) -> None:
    elapsed, message = _load_and_time()
    # huggingface_hub alone retries for 20-30 s; the bound has a wide margin for a loaded machine.
    assert elapsed < 5, f"took {elapsed:.1f} s"
    _assert_helpful(message, empty_hub)
    assert "127.0.0.1:9" in message


def test_silent_endpoint_fails_fast(empty_hub: Path, silent_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "ENDPOINT", silent_server)
    monkeypatch.setattr(download, "HUB_PROBE_TIMEOUT_S", 1.0)
    elapsed, message = _load_and_time()
    assert elapsed < 5, f"took {elapsed:.1f} s"
    _assert_helpful(message, empty_hub)
    assert "no answer within 1 s" in message and "HF_HUB_ETAG_TIMEOUT" in message


def test_probe_waits_as_long_as_hf_hub_etag_timeout_says(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "12.5")
    assert download.probe_timeout() == 12.5
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "soon")
    assert download.probe_timeout() == download.HUB_PROBE_TIMEOUT_S


@pytest.mark.parametrize("how", ["environment", "constant"])
def test_offline_mode_never_touches_the_network(
    empty_hub: Path, silent_server: str, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    # With a silent endpoint, any request would take the probe's full timeout.
    monkeypatch.setattr(constants, "ENDPOINT", silent_server)
    if how == "environment":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    elapsed, message = _load_and_time()
    assert elapsed < 1, f"took {elapsed:.1f} s"
    _assert_helpful(message, empty_hub)
    assert "HF_HUB_OFFLINE" in message


def test_cached_checkpoint_is_used_without_network(empty_hub: Path) -> None:
    """A file in the Hub cache layout (refs/main -> snapshots/<commit>/) is found offline."""
    repo = empty_hub / f"models--{GLIP_T.hub_repo.replace('/', '--')}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / GLIP_T.checkpoint).write_bytes(b"stand-in")
    start = time.perf_counter()
    path = download_preset_checkpoint(GLIP_T)
    assert time.perf_counter() - start < 1
    assert path == snapshot / GLIP_T.checkpoint
