"""Why the switch drops a frame: ``DropReason``, one counter per reason and slave.

Rules: the numbers index the per-slave and per-port counter lists; ``.label`` is
the stable counter name (stats, metrics, docs). Append new reasons at the end.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final


class DropReason(IntEnum):
    """Why a frame was dropped; ``.label`` is the stable counter name."""

    RUNT = 0
    BAD_HEADER = 1
    VLAN = 2
    MAC_CONTROL = 3
    MULTICAST_SRC = 4
    SRC_MAC_SPOOF = 5
    SRC_IP_SPOOF = 6
    TOO_MANY_LINK_LOCALS = 7
    TARGET_DOWN = 8
    TO_HOST_UNSUPPORTED = 9
    LOOPED_BACK = 10
    NO_DESTINATION = 11
    NOT_IP = 12
    MULTICAST_DST = 13
    PRIVATE = 14
    LEARN_REFUSED = 15
    L2_CONTROL = 16
    ANONYMOUS_SRC = 17
    RA_GUARD = 18
    DHCP_GUARD = 19
    NDP_EXT_HEADER = 20
    LEARN_NOT_ON_LINK = 21

    @property
    def label(self) -> str:
        return self.name.lower()


N_DROP_REASONS: Final = len(DropReason)
