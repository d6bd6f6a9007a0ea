"""Official checkpoints from the Hugging Face Hub, failing within seconds when it cannot be reached.

``huggingface_hub`` retries a metadata request five times with back-off before it gives up, so
an offline ``hf_hub_download`` takes 20-30 s to fail. Here the local cache is read first, then
``HF_HUB_OFFLINE`` is honoured, then one request with a short timeout and no retry tells whether
the endpoint answers at all; only then does ``huggingface_hub`` download.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from glip.hub.presets import Preset

# Seconds the reachability probe may take, DNS included: long enough for a slow link's first
# answer, short enough that offline use fails at once instead of after the Hub client's retries.
# HF_HUB_ETAG_TIMEOUT (the Hub client's own limit for such requests) replaces it when set.
HUB_PROBE_TIMEOUT_S = 3.0

_TRUE_VALUES = {"1", "ON", "YES", "TRUE"}


class CheckpointUnavailableError(FileNotFoundError):
    """A preset's checkpoint is neither cached nor downloadable now (offline, Hub unreachable)."""


def hub_offline() -> bool:
    """Whether offline mode is on, by environment or by ``huggingface_hub.constants``.

    The constant is read once when ``huggingface_hub`` is imported, so an ``HF_HUB_OFFLINE`` set
    later (``os.environ`` in a notebook) is only seen in the environment.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return True
    return any(os.environ.get(name, "").upper() in _TRUE_VALUES for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def probe_timeout() -> float:
    """Seconds the probe waits: ``HF_HUB_ETAG_TIMEOUT`` if set to a number, else :data:`HUB_PROBE_TIMEOUT_S`."""
    try:
        return float(os.environ["HF_HUB_ETAG_TIMEOUT"])
    except (KeyError, ValueError):
        return HUB_PROBE_TIMEOUT_S


def probe_endpoint(url: str, timeout: float) -> str | None:
    """``None`` if ``url`` answers an HTTP HEAD within ``timeout`` seconds, else why not.

    One request, no retry, through the Hub client's session (so its proxies apply); it runs in a
    daemon thread because name resolution has no timeout of its own. Any HTTP status counts as an
    answer: a missing file is for the download to report.
    """
    from huggingface_hub import get_session

    outcome: list[str | None] = []

    def request() -> None:
        try:
            get_session().head(url, timeout=timeout, allow_redirects=False)
            outcome.append(None)
        except Exception as error:  # requests and urllib3 raise many types; all mean "no answer"
            # requests wraps urllib3's error, whose ``reason`` says what happened ("Connection refused").
            cause = getattr(error.args[0], "reason", None) if error.args else None
            outcome.append(f"{type(error).__name__}: {cause or error}")

    thread = threading.Thread(target=request, name="glip-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else f"no answer within {timeout:g} s; on a slow link raise HF_HUB_ETAG_TIMEOUT"


def checkpoint_url(preset: Preset) -> str:
    """Where the endpoint in use (``HF_ENDPOINT``) serves the preset's checkpoint."""
    from huggingface_hub import constants

    return f"{constants.ENDPOINT}/{preset.hub_repo}/resolve/main/{preset.checkpoint}"


def unavailable_error(preset: Preset, cache_dir: str | Path | None, reason: str) -> CheckpointUnavailableError:
    """The error naming the file, its repository, where to put it and the ``glip convert`` route."""
    from huggingface_hub import constants

    cache = Path(cache_dir) if cache_dir is not None else Path(constants.HF_HUB_CACHE)
    return CheckpointUnavailableError(
        f"cannot get {preset.checkpoint} of preset {preset.name!r} from the Hugging Face repo "
        f"{preset.hub_repo}: {reason}.\n"
        f"  Either put it in the Hub cache {cache} (on a machine with network: "
        f"`hf download {preset.hub_repo} {preset.checkpoint} --cache-dir {cache}`, then copy that folder "
        f"here), and GLIP.from_pretrained({preset.name!r}) finds it there;\n"
        f"  or download {checkpoint_url(preset)} anywhere and convert it once: `glip convert {preset.checkpoint} "
        f"<{preset.official_config} of github.com/microsoft/GLIP> --out <dir>`, then "
        f"GLIP.from_pretrained(<dir>)."
    )


def download_preset_checkpoint(preset: Preset, cache_dir: str | Path | None = None) -> Path:
    """The preset's official checkpoint: from the Hub cache, else downloaded.

    Raises:
        CheckpointUnavailableError: not cached and offline (``HF_HUB_OFFLINE``) or the endpoint does
            not answer within :func:`probe_timeout`; the message names the file, the repo and
            where to put it.
    """
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import LocalEntryNotFoundError

    cached = try_to_load_from_cache(preset.hub_repo, preset.checkpoint, cache_dir=cache_dir)
    if isinstance(cached, str):
        return Path(cached)
    if hub_offline():
        raise unavailable_error(preset, cache_dir, "it is not in the local cache and HF_HUB_OFFLINE is set")
    reason = probe_endpoint(checkpoint_url(preset), probe_timeout())
    if reason is not None:
        raise unavailable_error(preset, cache_dir, f"not in the local cache and {constants.ENDPOINT} does not "
                                                   f"answer ({reason})")
    try:
        return Path(hf_hub_download(preset.hub_repo, preset.checkpoint, cache_dir=cache_dir))
    except (LocalEntryNotFoundError, OSError) as error:
        raise unavailable_error(preset, cache_dir, f"the download failed ({error})") from error
