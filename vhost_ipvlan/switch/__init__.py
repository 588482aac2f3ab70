"""Pure IPvlan switching: ports, slaves, the policy table and per-frame decisions.

Rules:
- No I/O and no imports beyond the standard library and ``vhost_ipvlan.net`` /
  ``vhost_ipvlan.errors`` / ``vhost_ipvlan.drops`` (the drop reasons, one registry
  for the switch and the data path).
- ``Port`` holds configuration and tables (``port``); ``table`` is the policy table
  as data ((mode, flag, source, destination kind) -> verdict, rendered in
  docs/policy-matrix.md); ``verdict`` the actions, verdicts and the helpers the
  decision modules share; ``l2`` and ``l3`` the decision functions, which read
  their verdicts from the table; ``decisions`` the modes and flags, their decision
  functions and their traits (what the daemon does per mode); ``mcast`` is the
  per-slave multicast filter (IGMP/MLD snooping); ``source`` is source validation
  and address learning, shared by every mode; ``guard`` the guards every mode
  applies first.
- Imports run one way: ``table`` <- ``verdict`` <- ``l2``, ``l3`` <-
  ``decisions`` <- ``port`` (the decision modules see ``Port`` for typing only).
- Decisions return small reused tuples and never raise on frame content; a bad
  frame is a counted drop.
"""

from ..drops import DropReason
from .port import Port, Slave
from .verdict import DROP, FLOOD, PASS, TO_SLAVE, TO_UPLINK, Action, Verdict

__all__ = [
    "DROP",
    "FLOOD",
    "PASS",
    "TO_SLAVE",
    "TO_UPLINK",
    "Action",
    "DropReason",
    "Port",
    "Slave",
    "Verdict",
]
