"""The C accelerator's contract, from the Python side: every attribute ``_fastpath.c``
reads or writes by name exists on ``SplitQueue`` or ``GuestMemory`` and is listed in
the rules of ``virtio/virtqueue.py`` or ``virtio/memory.py``, so a rename cannot pass
unnoticed until the pair tests run."""

from __future__ import annotations

import re
from pathlib import Path

from vhost_ipvlan.virtio import memory, virtqueue
from vhost_ipvlan.virtio.memory import GuestMemory
from vhost_ipvlan.virtio.virtqueue import SplitQueue

C_SOURCE = Path(virtqueue.__file__).resolve().parents[1] / "_fastpath.c"
# PyObject_{Get,Set}AttrString(x, "name"...), and the interned names queue_open uses:
# static const char *const name_text[N_COUNT] = {"num", ...};
_BY_NAME = re.compile(r'PyObject_[GS]etAttrString\(\s*\w+(?:->\w+)?,\s*"(\w+)"')
_INTERNED = re.compile(r"name_text\[\w+\]\s*=\s*\{([^}]*)\}")


def c_attributes() -> set[str]:
    text = C_SOURCE.read_text()
    interned = _INTERNED.search(text)
    assert interned is not None, "_fastpath.c: name_text not found"
    return set(_BY_NAME.findall(text)) | set(re.findall(r'"(\w+)"', interned.group(1)))


def test_the_c_accelerator_reads_what_the_python_side_declares() -> None:
    names = c_attributes()
    assert {"num", "last_avail", "used_idx", "walked", "_desc", "_avail", "_used", "mem", "_by_gpa"} <= names
    for name in names:
        if name in GuestMemory.__slots__:
            assert f"``{name}``" in (memory.__doc__ or ""), f"memory.py's rules do not list {name!r}"
        else:
            assert name in SplitQueue.__slots__, f"_fastpath.c reads SplitQueue.{name}, which does not exist"
            assert f"``{name}``" in (virtqueue.__doc__ or ""), f"virtqueue.py's rules do not list {name!r}"
