"""The README's frontend-language program runs as written and prints exactly the output shown
under it (greedy on the embedded model, float32 CPU)."""
from __future__ import annotations

import os
import re
import subprocess
import sys

README = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "README.md")


def test_readme_lang_program_prints_the_output_shown():
    with open(README, encoding="utf-8") as f:
        text = f.read()
    pairs = re.findall(r"```python\n(import radixserve\.lang as sgl\n.*?)```\n\nprints\n\n```text\n(.*?)```", text, re.S)
    assert len(pairs) == 1, "the README should have one radixserve.lang program followed by its output"
    code, shown = pairs[0]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == shown
    # the second call found the first call's prompt and answer in the radix tree
    cached = [int(x) for x in re.findall(r"(\d+) cached", proc.stdout)]
    prompts = [int(x) for x in re.findall(r"(\d+) prompt tokens", proc.stdout)]
    assert cached[0] == 0 and cached[1] > prompts[0]
