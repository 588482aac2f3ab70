"""Build hook for the optional C accelerator (everything else is in pyproject.toml).

``vhost_ipvlan._fastpath`` is optional: if it cannot be compiled, the install
still succeeds and the daemon runs the pure-Python data path.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "vhost_ipvlan._fastpath",
            ["vhost_ipvlan/_fastpath.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
            optional=True,
        )
    ]
)
