"""Build hook for the optional C modules (everything else is in pyproject.toml).

Both are optional: if one cannot be compiled, the install still succeeds.
``vhost_ipvlan._fastpath`` (the accelerator): without it the daemon runs the
pure-Python data path. ``vhost_ipvlan._guard`` (the SIGBUS guard for guest
memory): without it, memory that is not sealed against shrinking is refused
(see ``daemon/host.py``).
"""

from setuptools import Extension, setup

setup(
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
