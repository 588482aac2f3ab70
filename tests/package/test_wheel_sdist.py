"""The sdist and the wheel build with and without a C compiler (issue 13).

The C modules (``_fastpath``: the accelerator, ``_guard``: the SIGBUS guard) are
optional (``setup.py``): without a compiler (``CC=false``: every compile fails) the
wheel is pure Python and the daemon runs its Python data path. Built with Debian's
python3, setuptools 66 and python3-build, as the Debian package is (setuptools >= 77
takes the same files: the venv is built from them by ``scripts/setup``).
"""

from __future__ import annotations

import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.support.package import SYSTEM_PYTHON, copy_tree, system_env, system_has

pytestmark = [pytest.mark.package,
              pytest.mark.skipif(not system_has("build"), reason="python3-build is not installed (scripts/setup)")]


def build(src: Path, out: Path, *what: str, **env: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([SYSTEM_PYTHON, "-m", "build", "--no-isolation", "--skip-dependency-check",
                           "--outdir", str(out), *what, str(src)],
                          capture_output=True, text=True, timeout=300, env=system_env(**env))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def unpack(sdist: Path, into: Path) -> Path:
    """The sdist's tree (Debian 12's python3-build builds from a directory only)."""
    with tarfile.open(sdist) as t:
        t.extractall(into, filter="data")
    (tree,) = into.iterdir()
    return tree


def c_modules(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    assert "vhost_ipvlan/cli.py" in names and "vhost_ipvlan/_fastpath.c" not in names
    return {n.split("/")[-1].split(".")[0] for n in names if n.endswith(".so")}


def metadata(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return z.read(name).decode()


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("sdist")
    build(copy_tree(tmp / "tree"), tmp / "dist", "--sdist")
    (found,) = (tmp / "dist").glob("vhost*ipvlan-*.tar.gz")
    return found


def test_sdist_carries_the_c_sources(sdist: Path) -> None:
    listing = subprocess.run(["tar", "-tzf", str(sdist)], capture_output=True, text=True, check=True).stdout
    for name in ("vhost_ipvlan/_fastpath.c", "vhost_ipvlan/_guard.c", "setup.py", "pyproject.toml"):
        assert f"/{name}\n" in listing, name


def test_wheel_from_the_sdist_has_the_c_modules_with_a_compiler(sdist: Path, tmp_path: Path) -> None:
    build(unpack(sdist, tmp_path / "src"), tmp_path / "dist", "--wheel")
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    assert c_modules(wheel) == {"_fastpath", "_guard"}
    meta = metadata(wheel)
    assert "GPL-2.0-or-later" in meta and "Requires-Dist: pyroute2" in meta


def test_wheel_without_a_compiler_is_pure_python_and_runs(sdist: Path, tmp_path: Path) -> None:
    proc = build(unpack(sdist, tmp_path / "src"), tmp_path / "dist", "--wheel", CC="false")
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    assert c_modules(wheel) == set(), "CC=false still built a C module"
    assert "vhost_ipvlan._fastpath" in proc.stdout + proc.stderr  # the optional build failed, said so
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    check = ("import json, sys\nfrom vhost_ipvlan.daemon import fastpath, host\nfrom vhost_ipvlan import cli\n"
             "assert not fastpath.accelerated() and not host.guarded()\n"
             "sys.exit(cli.main(['--print-capabilities']))\n")
    run = subprocess.run([SYSTEM_PYTHON, "-c", check], capture_output=True, text=True, timeout=60,
                         env=system_env(PYTHONPATH=str(site)), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert '"type": "net"' in run.stdout
