"""The launcher is installed as ``resdepth.launch``; no top-level ``launch`` module reaches site-packages."""
import shutil
import subprocess
import sys
from pathlib import Path


def test_no_top_level_launch_module_and_console_script_works(tmp_path: Path):
    # Run from an empty folder so the checkout itself is not on sys.path: only what is installed counts.
    probe = ("import importlib.util as u; print(u.find_spec('launch') is None, "
             "u.find_spec('resdepth.launch') is not None)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["True", "True"], out.stdout + out.stderr
    exe = shutil.which("resdepth-launch", path=str(Path(sys.executable).parent))
    assert exe is not None
    help_text = subprocess.run([exe, "--help"], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert "resdepth-launch" in help_text.stdout
