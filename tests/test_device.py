"""glip.device: the one home of device choice, thread count and process-group joining."""

from __future__ import annotations

import pytest
import torch

from glip import device as glip_device


def test_resolve_device_cpu_and_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    assert glip_device.resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert glip_device.resolve_device("auto") == torch.device("cpu")


def test_resolve_device_names_the_unavailable_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="'cuda:1'"):
        glip_device.resolve_device("cuda:1")


def test_torch_threads_sets_and_restores() -> None:
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    with glip_device.torch_threads(wanted):
        assert torch.get_num_threads() == wanted
    assert torch.get_num_threads() == before
    with glip_device.torch_threads(0):  # 0 leaves the count alone
        assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), glip_device.torch_threads(wanted):
        raise RuntimeError("the count comes back after an error too")
    assert torch.get_num_threads() == before


def test_single_process_has_no_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    context = glip_device.init_distributed(torch.device("cpu"))
    assert (context.rank, context.world_size, context.owns_group, context.enabled) == (0, 1, False, False)
    assert context.is_main
    glip_device.shutdown(context)  # nothing to destroy: must not raise


def test_old_import_paths_still_work() -> None:
    from glip.training import distributed
    from glip.training.loop import resolve_device

    assert resolve_device is glip_device.resolve_device
    assert distributed.DistributedContext is glip_device.DistributedContext
    assert distributed.init_distributed is glip_device.init_distributed
