"""Building the project's packages (wheel, sdist, .deb) from a copy of the tree.

Rules:
- A build never runs in the checkout: ``copy_tree`` copies the files a clone would
  have (``git ls-files``: tracked, and new files not ignored) into a fresh directory,
  so build artefacts (``build/``, ``debian/vhost-ipvlan/``, ``*.so``) never reach the
  tree other tests import from.
- Builds use Debian's ``/usr/bin/python3`` and its ``python3-*`` packages, as the
  Debian package does; ``SYSTEM_PYTHON`` is it. The venv's variables
  (``PYTHONPATH``, ``VIRTUAL_ENV``, pyenv's) are removed from a build's environment
  and ``PATH`` is Debian's directories only (``system_env``), so a build sees neither
  the venv, another interpreter nor the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"
#: Debian's directories only: no venv, pyenv shim or /usr/local interpreter named python3.x
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def copy_tree(dst: Path) -> Path:
    """Copy the project's files (as a clone would have them) into ``dst``; return ``dst``."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO_ROOT, capture_output=True, check=True, timeout=60).stdout
    for name in sorted({n for n in listed.decode().split("\0") if n}):
        src = REPO_ROOT / name
        if not src.exists() and not src.is_symlink():
            continue  # deleted in the work tree, not yet in the index
        target = dst / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            target.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, target)
    return dst


def system_env(**extra: str) -> dict[str, str]:
    """The environment for Debian's python3 and the Debian tools: without the venv's variables."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME") and not k.startswith("PYENV")}
    env["PATH"] = SYSTEM_PATH
    env.update(extra)
    return env


def system_has(module: str) -> bool:
    """Debian's python3 can import ``module``."""
    return subprocess.run([SYSTEM_PYTHON, "-c", f"import {module}"], env=system_env(),
                          capture_output=True, timeout=60).returncode == 0
