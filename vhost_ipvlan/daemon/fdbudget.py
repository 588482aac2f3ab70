"""File descriptors: the limit raised at start, and a budget every slave must fit in.

A thousand guests on one host need a few thousand descriptors; systemd's default
soft limit (and a login shell's) is 1024, its hard limit much higher.

Rules:
- At start the soft ``RLIMIT_NOFILE`` is raised to the hard limit (logged once);
  the unit file sets ``LimitNOFILE=`` too (contrib/systemd/vhost-ipvlan.service).
- The budget counts every slave as if its guest were connected, so a slave that
  was accepted can always take its front-end:
  * per slave (``SLAVE_FDS``): its listening socket (server role; a client-role
    slave holds one while it connects);
  * per connected guest (``GUEST_FDS``): the vhost-user connection, the kick, call
    and err eventfds of the two rings of its first queue pair, and the descriptors of
    one message in flight (``codec.MAX_FDS``: SET_MEM_TABLE's memory fds, closed once
    mapped: a mapping holds no descriptor); ``PAIR_FDS`` more per further queue pair
    (a slave's ``queues``);
  * per port (``PORT_FDS``): the uplink socket, the host tap, rtnetlink sockets;
  * per worker thread (``WORKER_FDS``, ``[daemon] workers`` >= 2): its loop's epoll and
    self-pipe;
  * ``RESERVE`` for the rest: the control socket and its clients, the metrics
    server and its clients, link monitor, nftables, the interpreter's own.
- A slave that would not fit is refused before anything changes (``FdBudget``,
  one line naming the slave, the count and the limit), at start-up as for a
  control request: never half-way (``Topology`` undoes the whole transaction).
"""

from __future__ import annotations

import logging
import resource

from ..errors import FdBudget
from ..vhost_user import codec

log = logging.getLogger(__name__)

SLAVE_FDS = 1
PAIR_FDS = 3 * 2  # kick, call and err of an rx and a tx ring
GUEST_FDS = 1 + PAIR_FDS + codec.MAX_FDS
PORT_FDS = 16
WORKER_FDS = 3
RESERVE = 64


def raise_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError) as e:
            log.warning("file descriptors: cannot raise the soft limit %d to the hard limit %d: %s", soft, hard, e)
            return soft
        log.info("file descriptors: soft limit raised from %d to the hard limit %d (room for %d slaves with "
                 "their guests on one port)", soft, hard, slaves_within(hard, 1))
        return int(hard)
    return int(soft)


def need(ports: int, slaves: int, extra_pairs: int = 0, workers: int = 0) -> int:
    """Descriptors ``ports`` ports and ``slaves`` slaves with ``extra_pairs`` queue pairs
    beyond their first need, every guest connected, with ``workers`` worker threads."""
    return (RESERVE + workers * WORKER_FDS + ports * PORT_FDS + slaves * (SLAVE_FDS + GUEST_FDS)
            + extra_pairs * PAIR_FDS)


def slaves_within(limit: int, ports: int) -> int:
    """How many slaves fit in ``limit`` descriptors with ``ports`` ports."""
    return max(0, (limit - RESERVE - ports * PORT_FDS) // (SLAVE_FDS + GUEST_FDS))


def current_limit() -> int:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return soft if soft != resource.RLIM_INFINITY else 1 << 30


def check(where: str, name: str, ports: int, slaves: int, limit: int | None = None, extra_pairs: int = 0,
          workers: int = 0) -> None:
    """Refuse slave ``name`` if ``slaves`` slaves (it included) with ``extra_pairs`` queue
    pairs beyond their first on ``ports`` ports, with ``workers`` worker threads, do not fit."""
    limit = current_limit() if limit is None else limit
    needed = need(ports, slaves, extra_pairs, workers)
    if needed > limit:
        raise FdBudget(f"{where}.name: slave {name!r} refused: {slaves} slaves with their guests connected "
                       f"need {needed} file descriptors ({SLAVE_FDS + GUEST_FDS} each, {PAIR_FDS} per further "
                       f"queue pair, {RESERVE} + {PORT_FDS} per port + {WORKER_FDS} per worker thread for the "
                       f"daemon), the limit (RLIMIT_NOFILE) "
                       f"is {limit}: raise LimitNOFILE=")
