"""The state file: what the daemon serves, written atomically after every accepted change.

Rules:
- Same schema as the configuration file (TOML, ``[daemon]``, ``[[port]]`` / ``[[port.slave]]``),
  read back with ``config.load``: ``load(write(c)) == c``. Strings are TOML basic
  strings with every control character escaped (TOML forbids a raw DEL: one in a
  socket path once made a state file the daemon could not start from).
- Written before the change is acknowledged: temporary file in the same directory,
  ``fsync``, ``rename`` over the old one, ``fsync`` of the directory. A crash
  leaves the old file or the new one, never a mix.
- Config vs state: at start the daemon reads the state file if it exists, else the
  configuration file; SIGHUP applies the configuration file (and rewrites the state).
- ``adaptive_poll_us`` is always written: its default changed (0, then 32), and a
  state file without it was written while it was 0 (``load`` reads it so), so an
  upgrade does not turn polling on for a daemon that had it off.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..config import Config, SlaveConfig, slave_table, to_data
from ..config import load as load_config

HEADER = "# vhost-ipvlan state: written by the daemon after every accepted change; do not edit while it runs\n"


_PLAIN = re.compile(r'[^"\\\x00-\x1f\x7f-\x9f\ud800-\udfff]*')
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _char(c: str) -> str:
    if c in _ESCAPES:
        return _ESCAPES[c]
    n = ord(c)
    if n < 0x20 or 0x7f <= n <= 0x9f:  # TOML forbids raw C0 and DEL; C1 escaped for readability
        return f"\\u{n:04X}"
    if 0xD800 <= n <= 0xDFFF:
        raise ValueError(f"a lone surrogate (U+{n:04X}) cannot be written to TOML")
    return c


def toml_string(text: str) -> str:
    """``text`` as a TOML basic string that ``tomllib`` reads back as ``text``."""
    if _PLAIN.fullmatch(text):  # nothing to escape (the usual case: one regex, not a call per character)
        return f'"{text}"'
    return '"' + "".join(_char(c) for c in text) + '"'


def _value(v: Any) -> str:
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    return toml_string(str(v))


#: each slave's ``[[port.slave]]`` text, by its (immutable) configuration: a change
#: re-renders one slave, not a thousand (the cache holds the last document's slaves)
_slave_texts: dict[SlaveConfig, str] = {}


def _slave_text(slave: SlaveConfig) -> str:
    return "\n[[port.slave]]\n" + "".join(f"{k} = {_value(v)}\n" for k, v in slave_table(slave).items())


def dumps(config: Config) -> str:
    """``config`` as a TOML document in the configuration file's shape."""
    global _slave_texts
    data = to_data(replace(config, ports=tuple(replace(p, slaves=()) for p in config.ports)))
    data.setdefault("daemon", {})["adaptive_poll_us"] = config.daemon.adaptive_poll_us
    # never empty (adaptive_poll_us); socket owner, group, mode: a restart from the state keeps them
    out = [HEADER, "[daemon]\n", *(f"{k} = {_value(v)}\n" for k, v in data["daemon"].items()), "\n"]
    texts: dict[SlaveConfig, str] = {}
    for port, pc in zip(data["port"], config.ports, strict=True):
        out.append("[[port]]\n")
        out += [f"{k} = {_value(v)}\n" for k, v in port.items() if k != "slave"]
        for slave in pc.slaves:
            text = texts[slave] = _slave_texts.get(slave) or _slave_text(slave)
            out.append(text)
        out.append("\n")
    _slave_texts = texts
    return "".join(out)


def load(path: Path) -> Config:
    """The state file ``path`` as ``config.load`` reads it, but for a file written before
    ``adaptive_poll_us`` was on by default (it has no such key): 0, as it was then."""
    config = load_config(path)
    with open(path, "rb") as f:
        daemon = tomllib.load(f).get("daemon", {})
    if "adaptive_poll_us" not in daemon:
        config = replace(config, daemon=replace(config.daemon, adaptive_poll_us=0))
    return config


def write(path: Path, config: Config) -> None:
    """Replace ``path`` with ``config``, atomically and durably."""
    data = dumps(config).encode()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
