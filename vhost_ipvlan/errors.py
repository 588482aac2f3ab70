"""One exception tree; each class says who is at fault.

Every exception vhost-ipvlan raises on purpose is defined here (``code``: the
control API's error code, for the classes a control request can end in)::

    VhostIpvlanError
     +-- FrontendError          the vhost-user front-end broke the protocol
     +-- GuestError             the guest driver broke the virtio contract
     +-- RequestError           bad_request: a control request that cannot be read
     |    +-- RequestTooLarge   request_too_large
     |    +-- UnknownMethod     unknown_method
     |    +-- ParamsNotObject   invalid_params
     +-- ConfigError            invalid_params: the operator's input is invalid
     |    +-- NotFound          not_found
     |    +-- NoSuchInterface   no_such_interface
     |    +-- PortBusy          port_busy
     |    +-- FdBudget          fd_budget
     |    +-- DomainError       (libvirt) a domain XML lacks what we need
     |    +-- Conflict          valid alone, clashes with what exists
     |         +-- NameInUse        name_in_use
     |         +-- SocketInUse      socket_in_use
     |         +-- AddressInUse     address_in_use
     |         +-- MacInUse         mac_in_use
     |         +-- PortExists       port_exists
     |         +-- MasterAddress    master_address
     |         +-- QmpConfigured    qmp_configured
     +-- UplinkError            host_error: the host refused (master, sockets, nftables)
     +-- RxFilterError          QMP's query-rx-filter reply is unusable
     +-- StateError             state_error: a change could not be applied or recorded
     +-- InternalError          internal_error: a bug in the daemon
     +-- RemoteError            (client) the daemon refused a request: its code
     +-- ControlUnavailable     (client) the control socket cannot be reached
     +-- HookError              (libvirt hook) one line for libvirt

Rules:
- ``FrontendError``: the vhost-user front-end (QEMU, DPDK) sent something we cannot
  accept. It closes that connection only.
- ``GuestError``: the guest driver put something invalid in its rings or memory.
  It breaks that queue only (the queue is marked broken and counted).
- ``ConfigError``: the operator's configuration is wrong. Its message is one line
  naming the key and the problem; the CLI prints it and exits non-zero. Code that
  does not know the key (the switch's ``Port``) raises it without; the caller adds
  the key path with ``at(where)``, keeping the class (hence the code).
- ``UplinkError``: the host side (master interface, nftables) failed.
- A class that can reach the control API has a ``code``: the machine-readable
  error of the response (``control.server``). ``docs/control-api.md``'s table of
  codes is generated from this module (``scripts/gen_error_codes.py``).
- Nothing here subclasses a built-in error (``ValueError``...): catch these classes.
A per-frame problem is never an exception: it is a counted drop.

This module is imported by the pure core (``switch/``): it imports nothing but ``re``.
"""

from __future__ import annotations

import re
from typing import ClassVar, Self

_LINE_BREAKING = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_controls(text: str) -> str:
    """``text`` with every control character escaped (``\\n``, ``\\x7f``): names and
    paths from outside (a domain XML) go into messages and logs, which must stay one line."""
    return _LINE_BREAKING.sub(lambda m: repr(m.group())[1:-1], text)


class VhostIpvlanError(Exception):
    """Base class of every error raised on purpose by vhost-ipvlan."""


class FrontendError(VhostIpvlanError):
    """The vhost-user front-end broke the protocol."""


class GuestError(VhostIpvlanError):
    """The guest driver broke the virtio contract (bad descriptor, address, loop)."""


# -- the control protocol ----------------------------------------------------------------


class RequestError(VhostIpvlanError):
    """Not JSON, not UTF-8, not an object, bad ``id``, unknown top-level key, truncated
    (``id`` is the request's when it could be read)."""

    code: ClassVar[str] = "bad_request"

    def __init__(self, message: str, request_id: int | str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.id = request_id


class RequestTooLarge(RequestError):
    """A line over 65536 bytes (``protocol.MAX_LINE``); the connection is closed."""

    code = "request_too_large"


class UnknownMethod(RequestError):
    """``method`` is not one of the methods (``protocol.METHODS``)."""

    code = "unknown_method"


class ParamsNotObject(RequestError):
    """``params`` is not a JSON object."""

    code = "invalid_params"


# -- configuration: the operator's input ------------------------------------------------


class ConfigError(VhostIpvlanError):
    """A parameter is missing, unknown, of the wrong type or invalid (the message names the key)."""

    code: ClassVar[str] = "invalid_params"

    def at(self, where: str) -> Self:
        """The same error (same class, same code), its message prefixed by the key path ``where``."""
        return type(self)(f"{where}: {self}")


class NotFound(ConfigError):
    """No such port or slave."""

    code = "not_found"


class NoSuchInterface(ConfigError):
    """The master does not exist in the daemon's network namespace."""

    code = "no_such_interface"


class PortBusy(ConfigError):
    """``port.remove`` of a port that still has slaves."""

    code = "port_busy"


class FdBudget(ConfigError):
    """A new slave would not fit in the file descriptor limit with its guest connected
    (``daemon.fdbudget``; the message gives the count and the limit)."""

    code = "fd_budget"


class DomainError(ConfigError):
    """The domain XML does not say what vhost-ipvlan needs (one line: control
    characters from the XML are escaped)."""

    def __init__(self, message: str) -> None:
        super().__init__(escape_controls(message))


class Conflict(ConfigError):
    """Valid on its own, but clashes with what exists; each subclass's ``code`` names the
    clash (never raised itself)."""


class NameInUse(Conflict):
    """The slave name is taken (names are unique across all ports)."""

    code = "name_in_use"


class SocketInUse(Conflict):
    """The socket path is another slave's, or the control socket's own."""

    code = "socket_in_use"


class AddressInUse(Conflict):
    """The address belongs to another slave of the master (the message names it)."""

    code = "address_in_use"


class MacInUse(Conflict):
    """The MAC is the master's or another slave's of the port."""

    code = "mac_in_use"


class PortExists(Conflict):
    """There is already a port on that master."""

    code = "port_exists"


class MasterAddress(Conflict):
    """The address is one of the master's own (the message names it and the master)."""

    code = "master_address"


class QmpConfigured(Conflict):
    """``slave.rx_filter`` for a slave with ``qmp``: it reads its guest's RX filter itself."""

    code = "qmp_configured"


class UplinkError(VhostIpvlanError):
    """The host refused (socket bind, nftables, the master interface); the change was undone."""

    code: ClassVar[str] = "host_error"


class RxFilterError(VhostIpvlanError):
    """QMP answered, but not with a usable RX filter for this slave's NIC."""


class StateError(VhostIpvlanError):
    """The change could not be applied or recorded (the state file); it was undone."""

    code: ClassVar[str] = "state_error"


class InternalError(VhostIpvlanError):
    """A bug; logged with a traceback."""

    code: ClassVar[str] = "internal_error"


# -- clients of the control API ----------------------------------------------------------


class RemoteError(VhostIpvlanError):
    """The daemon refused the request; ``code`` is the response's."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ControlUnavailable(VhostIpvlanError):
    """The control socket cannot be reached, or the connection broke."""


class HookError(VhostIpvlanError):
    """The libvirt hook cannot do its job; one line for libvirt's error message."""
