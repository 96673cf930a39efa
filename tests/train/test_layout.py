"""The library holds no test hooks, and the requeue exit status is defined once."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def sources(*packages: str) -> dict[str, str]:
    return {str(p.relative_to(ROOT)): p.read_text() for pkg in packages
            for p in sorted((ROOT / pkg).rglob("*.py"))}


def test_library_reads_no_fault_injection_variables():
    # Faults are patched in by tests/train/faults.py; production code reads no test switch.
    hook = re.compile(r"RESDEPTH_FAULT|FAULT_\w*_ENV")  # e.g. RESDEPTH_FAULT_CKPT_DELAY
    found = [path for path, text in sources("resdepth").items() if hook.search(text)]
    assert found == []


def test_requeue_exit_code_is_defined_once():
    found = [path for path, text in sources("resdepth", "launch").items()
             if re.search(r"^REQUEUE_EXIT_CODE\s*=", text, re.M)]
    assert found == ["resdepth/train/signals.py"]
