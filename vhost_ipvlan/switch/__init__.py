"""Pure IPvlan switching: ports, slaves, the policy table and per-frame decisions.

Rules:
- No I/O and no imports beyond the standard library and ``vhost_ipvlan.net`` /
  ``vhost_ipvlan.errors`` / ``vhost_ipvlan.drops`` (the drop reasons, one registry
  for the switch and the data path).
- ``Port`` holds configuration and tables (``port``); ``table`` is the policy table
  as data ((mode, flag, source, destination kind) -> verdict, rendered in
  docs/policy-matrix.md); ``policy`` holds the verdict codes, the drop reasons and
  the decision functions per (mode, flag), which read their verdicts from the table;
  ``mcast`` is the per-slave multicast filter (IGMP/MLD snooping); ``source`` is
  source validation and address learning, shared by every mode.
- Decisions return small reused tuples and never raise on frame content; a bad
  frame is a counted drop.
"""

from .policy import (
    DROP,
    FLOOD,
    PASS,
    TO_SLAVE,
    TO_UPLINK,
    DropReason,
    Verdict,
)
from .port import Port, Slave

__all__ = [
    "DROP",
    "FLOOD",
    "PASS",
    "TO_SLAVE",
    "TO_UPLINK",
    "DropReason",
    "Port",
    "Slave",
    "Verdict",
]
