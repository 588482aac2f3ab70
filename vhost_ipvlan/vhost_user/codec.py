"""vhost-user wire format (QEMU docs/interop/vhost-user.rst): framing and payloads.

A message is a 12-byte header ``(request u32, flags u32, size u32)`` in native byte
order (little-endian on every host we run on), then ``size`` bytes of payload;
file descriptors ride along as SCM_RIGHTS on the same ``sendmsg``.

Rules:
- The version bits of ``flags`` must be 1; a payload is at most ``MAX_PAYLOAD``
  bytes; each payload is decoded with its exact expected size. Anything else is a
  ``FrontendError`` (the connection is closed, nothing else is affected).
- Names and numbers are the spec's (front-end requests, feature bits).
- A memory region is non-empty and ends *below* 2^64 in both address spaces
  (``gpa + size < 2**64``, ``uva + size < 2**64``): the end is an exclusive bound
  that must fit a u64, as the C accelerator stores it (``_fastpath.c`` region_t).
- A dirty log (SET_LOG_BASE, with LOG_SHMFD) is one descriptor and ``(mmap_size,
  mmap_offset)``; its size is non-zero and at most ``MAX_LOG`` bytes (the log of
  16 TiB of guest-physical addresses, as ``MAX_MAPPED``); the daemon maps the file
  from offset 0, so ``mmap_offset + size`` (what it maps) is at most ``MAX_LOG`` too
  (QEMU's log is at offset 0): a sparse file cannot take the address space.
- A memory table maps at most ``MAX_MAPPED`` bytes (the sum of every region's
  ``mmap_offset + size``, what the daemon maps): 16 TiB, more than any VM's RAM.
  Files may be sparse, so one front-end could otherwise take most of the daemon's
  128 TiB of address space in one message, and two of them all of it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum

from ..errors import FrontendError

HEADER = struct.Struct("<III")
HEADER_SIZE = HEADER.size
MAX_PAYLOAD = 4096
MAX_FDS = 8
MAX_MAPPED = 16 << 40  # bytes one memory table may map (see the rules)
MAX_LOG = MAX_MAPPED >> 15  # bytes of dirty log: one bit per 4 KiB page of 16 TiB

FLAG_VERSION_MASK = 0x3
FLAG_VERSION = 0x1
FLAG_REPLY = 0x4
FLAG_NEED_REPLY = 0x8

U64 = struct.Struct("<Q")
VRING_STATE = struct.Struct("<II")
VRING_ADDR = struct.Struct("<IIQQQQ")
MEM_HEADER = struct.Struct("<II")
MEM_REGION = struct.Struct("<QQQQ")
LOG = struct.Struct("<QQ")  # SET_LOG_BASE: mmap_size, mmap_offset
VRING_F_LOG = 1  # VHOST_VRING_F_LOG in SET_VRING_ADDR's flags: log the used ring at ``log``
VRING_IDX_MASK = 0xFF
VRING_NOFD_MASK = 0x100


class Request(IntEnum):
    """Front-end -> back-end requests (``VHOST_USER_*``)."""

    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    SEND_RARP = 19
    NET_SET_MTU = 20
    SET_BACKEND_REQ_FD = 21
    IOTLB_MSG = 22
    SET_VRING_ENDIAN = 23
    GET_CONFIG = 24
    SET_CONFIG = 25
    CREATE_CRYPTO_SESSION = 26
    CLOSE_CRYPTO_SESSION = 27
    POSTCOPY_ADVISE = 28
    POSTCOPY_LISTEN = 29
    POSTCOPY_END = 30
    GET_INFLIGHT_FD = 31
    SET_INFLIGHT_FD = 32
    GPU_SET_SOCKET = 33
    RESET_DEVICE = 34
    VRING_KICK = 35
    GET_MAX_MEM_SLOTS = 36
    ADD_MEM_REG = 37
    REM_MEM_REG = 38
    SET_STATUS = 39
    GET_STATUS = 40
    GET_SHARED_OBJECT = 41
    SET_DEVICE_STATE_FD = 42
    CHECK_DEVICE_STATE = 43


class ProtocolFeature(IntEnum):
    """``VHOST_USER_PROTOCOL_F_*`` bit numbers."""

    MQ = 0
    LOG_SHMFD = 1
    RARP = 2
    REPLY_ACK = 3
    NET_MTU = 4
    BACKEND_REQ = 5
    CROSS_ENDIAN = 6
    CRYPTO_SESSION = 7
    PAGEFAULT = 8
    CONFIG = 9
    BACKEND_SEND_FD = 10
    HOST_NOTIFIER = 11
    INFLIGHT_SHMFD = 12
    RESET_DEVICE = 13
    INBAND_NOTIFICATIONS = 14
    CONFIGURE_MEM_SLOTS = 15
    STATUS = 16


F_PROTOCOL_FEATURES = 30  # in the virtio feature word: gates the protocol features
F_LOG_ALL = 26


def request_name(code: int) -> str:
    try:
        return Request(code).name
    except ValueError:
        return f"request {code}"


@dataclass(slots=True)
class Message:
    """One decoded front-end message; ``fds`` are owned by whoever holds it."""

    request: int
    flags: int
    payload: bytes
    fds: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        return request_name(self.request)

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & FLAG_NEED_REPLY)


def decode_header(data: bytes | memoryview) -> tuple[int, int, int]:
    """Decode and check a header: (request, flags, payload size)."""
    request, flags, size = HEADER.unpack_from(data)
    if flags & FLAG_VERSION_MASK != FLAG_VERSION:
        raise FrontendError(f"{request_name(request)}: protocol version {flags & 3}, expected 1")
    if size > MAX_PAYLOAD:
        raise FrontendError(f"{request_name(request)}: payload of {size} bytes (at most {MAX_PAYLOAD})")
    return request, flags, size


def encode(request: int, payload: bytes = b"", *, reply: bool = True) -> bytes:
    """Encode a message; back-end replies carry the REPLY flag."""
    flags = FLAG_VERSION | (FLAG_REPLY if reply else 0)
    return HEADER.pack(request, flags, len(payload)) + payload


def encode_request(request: int, payload: bytes = b"", *, need_reply: bool = False) -> bytes:
    """Encode a front-end request (used by test front-ends)."""
    flags = FLAG_VERSION | (FLAG_NEED_REPLY if need_reply else 0)
    return HEADER.pack(request, flags, len(payload)) + payload


def _expect(msg: Message, size: int) -> None:
    if len(msg.payload) != size:
        raise FrontendError(f"{msg.name}: payload of {len(msg.payload)} bytes, expected {size}")


def u64(msg: Message) -> int:
    _expect(msg, U64.size)
    value: int = U64.unpack(msg.payload)[0]
    return value


def vring_state(msg: Message) -> tuple[int, int]:
    """(index, num) of a vring state payload."""
    _expect(msg, VRING_STATE.size)
    index, num = VRING_STATE.unpack(msg.payload)
    return index, num


@dataclass(frozen=True, slots=True)
class VringAddr:
    index: int
    flags: int
    desc: int
    used: int
    avail: int
    log: int


def vring_addr(msg: Message) -> VringAddr:
    _expect(msg, VRING_ADDR.size)
    return VringAddr(*VRING_ADDR.unpack(msg.payload))


@dataclass(frozen=True, slots=True)
class MemRegion:
    gpa: int
    size: int
    uva: int
    mmap_offset: int


def mem_table(msg: Message) -> list[MemRegion]:
    """Regions of SET_MEM_TABLE; one fd per region must accompany the message."""
    if len(msg.payload) < MEM_HEADER.size:
        raise FrontendError(f"{msg.name}: payload of {len(msg.payload)} bytes is too short")
    nregions, _pad = MEM_HEADER.unpack_from(msg.payload)
    if not 1 <= nregions <= MAX_FDS:
        raise FrontendError(f"{msg.name}: {nregions} regions (1..{MAX_FDS} supported)")
    # QEMU always sends the full 8-slot array; accept exactly n or the full array.
    if len(msg.payload) not in (MEM_HEADER.size + nregions * 32, MEM_HEADER.size + MAX_FDS * 32):
        raise FrontendError(f"{msg.name}: payload of {len(msg.payload)} bytes for {nregions} regions")
    if len(msg.fds) != nregions:
        raise FrontendError(f"{msg.name}: {nregions} regions but {len(msg.fds)} file descriptors")
    regions = []
    for i in range(nregions):
        r = MemRegion(*MEM_REGION.unpack_from(msg.payload, MEM_HEADER.size + 32 * i))
        if r.size == 0 or r.gpa + r.size >= 1 << 64 or r.uva + r.size >= 1 << 64:
            raise FrontendError(
                f"{msg.name}: region {i} of size {r.size:#x} at gpa {r.gpa:#x} uva {r.uva:#x}"
                " is empty or does not end below 2^64"
            )
        regions.append(r)
    mapped = sum(r.mmap_offset + r.size for r in regions)
    if mapped > MAX_MAPPED:
        raise FrontendError(f"{msg.name}: the regions map {mapped:#x} bytes (at most {MAX_MAPPED:#x}, 16 TiB)")
    return regions


@dataclass(frozen=True, slots=True)
class LogArea:
    size: int
    mmap_offset: int


def log_base(msg: Message) -> LogArea:
    """SET_LOG_BASE's shared-memory log; its one fd stays in ``msg.fds``."""
    _expect(msg, LOG.size)
    if len(msg.fds) != 1:
        raise FrontendError(f"{msg.name}: {len(msg.fds)} file descriptors, expected the log's one")
    area = LogArea(*LOG.unpack(msg.payload))
    if not 0 < area.size <= MAX_LOG:
        raise FrontendError(f"{msg.name}: a log of {area.size} bytes (1 to {MAX_LOG:#x})")
    if area.mmap_offset + area.size >= 1 << 64:
        raise FrontendError(f"{msg.name}: the log at offset {area.mmap_offset:#x} does not end below 2^64")
    if area.mmap_offset + area.size > MAX_LOG:
        raise FrontendError(f"{msg.name}: the log at offset {area.mmap_offset:#x} ends beyond {MAX_LOG:#x} bytes "
                            "(mmap_offset + size, what the daemon maps)")
    return area


def vring_fd_index(msg: Message) -> tuple[int, bool]:
    """(vring index, has fd) of SET_VRING_KICK/CALL/ERR."""
    value = u64(msg)
    nofd = bool(value & VRING_NOFD_MASK)
    if value & ~(VRING_IDX_MASK | VRING_NOFD_MASK):
        raise FrontendError(f"{msg.name}: unknown bits in {value:#x}")
    if nofd == bool(msg.fds) or len(msg.fds) > 1:
        raise FrontendError(f"{msg.name}: NOFD={nofd} with {len(msg.fds)} file descriptors")
    return value & VRING_IDX_MASK, not nofd
