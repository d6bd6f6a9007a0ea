"""``glip --help``, ``glip models``, subcommand help and argument errors must not import torch or
transformers (they took ~7 s to import; the CLI should answer at once)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "numpy")  # numpy alone took 0.4 s of a 1 s start-up

_IN_PROCESS = """
import sys
from glip.cli import main
for argv in (["--help"], ["models"], ["detect", "--help"], ["demo", "--help"], ["eval", "coco", "--help"],
             ["train", "--help"], ["finetune", "run", "--help"], ["detect", "a.jpg", "--threshold", "2"],
             ["detect"], ["no-such-command"]):
    try:
        main(argv)
    except SystemExit:
        pass
import glip
glip.__version__
print(sorted(name for name in sys.modules if name.split(".")[0] in {heavy!r}))
"""


def test_help_models_and_argument_errors_do_not_import_torch() -> None:
    result = subprocess.run([sys.executable, "-c", _IN_PROCESS.format(heavy=set(HEAVY))], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout[-2000:]


def test_python_m_glip_models_imports_no_heavy_module() -> None:
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "glip", "models"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "glip_nano" in result.stdout
    heavy = re.compile(rf"\|\s+({'|'.join(HEAVY)})(\.|$)")
    imported = [line for line in result.stderr.splitlines() if heavy.search(line)]
    assert not imported, imported[:5]


def test_the_public_names_still_import_from_glip() -> None:
    import glip

    assert glip.GLIP.__name__ == "GLIP" and glip.GLIPConfig.__name__ == "GLIPConfig"
    assert glip.Detections.__name__ == "Detections"
    assert {"GLIP", "GLIPConfig", "Detections"} <= set(dir(glip))
    with pytest.raises(AttributeError, match="no_such_name"):
        glip.no_such_name  # noqa: B018
