"""One exception tree; each class says who is at fault.

Rules:
- ``FrontendError``: the vhost-user front-end (QEMU, DPDK) sent something we cannot
  accept. It closes that connection only.
- ``GuestError``: the guest driver put something invalid in its rings or memory.
  It breaks that queue only (the queue is marked broken and counted).
- ``ConfigError``: the operator's configuration is wrong. Its message is one line
  naming the key and the problem; the CLI prints it and exits non-zero.
- ``UplinkError``: the host side (master interface, nftables) failed.
A per-frame problem is never an exception: it is a counted drop.
"""


class VhostIpvlanError(Exception):
    """Base class of every error raised on purpose by vhost-ipvlan."""


class FrontendError(VhostIpvlanError):
    """The vhost-user front-end broke the protocol."""


class GuestError(VhostIpvlanError):
    """The guest driver broke the virtio contract (bad descriptor, address, loop)."""


class ConfigError(VhostIpvlanError):
    """The configuration is invalid; the message names the key and the problem."""


class UplinkError(VhostIpvlanError):
    """The master interface or the host's packet filter could not be used."""
