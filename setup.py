"""Build hook for the optional C modules (everything else is in pyproject.toml).

Both are optional: if one cannot be compiled, the install still succeeds.
``vhost_ipvlan._fastpath`` (the accelerator): without it the daemon runs the
pure-Python data path. ``vhost_ipvlan._guard`` (the SIGBUS guard for guest
memory): without it, memory that is not sealed against shrinking is refused
(see ``daemon/host.py``).

The licence is given here (``dynamic`` in pyproject.toml) because its key changed:
setuptools >= 77 takes an SPDX ``license_expression`` (a string ``project.license``),
older ones (Debian 12 has 66, used by the Debian package's build) only free text.
"""

import setuptools
from setuptools import Extension, setup

_SPDX = tuple(int(x) for x in setuptools.__version__.split(".")[:2]) >= (77, 0)
LICENSE = {"license_expression" if _SPDX else "license": "GPL-2.0-or-later"}

setup(
    **LICENSE,
    ext_modules=[
        Extension(
            "vhost_ipvlan._fastpath",
            ["vhost_ipvlan/_fastpath.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
            optional=True,
        ),
        Extension(
            "vhost_ipvlan._guard",
            ["vhost_ipvlan/_guard.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
            optional=True,
        ),
    ]
)
