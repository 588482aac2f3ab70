"""virtio-net on top of split virtqueues: feature bits, ``virtio_net_hdr``, RX filling.

Rules:
- Only VIRTIO_F_VERSION_1 drivers are served, so the header is always the 12-byte
  ``virtio_net_hdr`` (flags, gso_type, hdr_len, gso_size, csum_start, csum_offset,
  num_buffers), little-endian.
- The header travels with the frame untouched (CSUM/GSO pass-through): nothing is
  segmented or checksummed here. ``offload_ok`` tells whether a receiving driver
  negotiated what a header asks of it; a frame it cannot take is dropped by the
  caller and counted.
- RX without MRG_RXBUF: one chain per frame, which must hold header + frame.
  With MRG_RXBUF: as many chains as needed, every one but the last filled up,
  ``num_buffers`` in the first header. Chains are taken only when the whole frame
  fits; otherwise they are given back and the frame is dropped (ring full).
- Bounded work per frame, whatever the guest posts: a chain with room for less
  than a ``virtio_net_hdr`` (zero-capacity chains included; the spec requires
  every mergeable buffer to hold one) ends the search at once, the frame is
  dropped ``RX_BAD_BUFFER`` and the chains are given back. So a frame looks at
  no more than ceil(size / 12) chains, and once the chains it looked at add up
  to ``num`` descriptors (what one chain may hold) it is dropped
  ``RX_BAD_BUFFER`` too (buffers too fragmented). Worst case per frame: about
  2 x ``num`` descriptors counted, twice that read (count pass, fill pass).
- Chains a frame did not fit stay where they are (the driver may not change a
  chain it made available), so a failed walk is remembered (``bad_head``: the
  ring position, the room the walked chains offered, the result) until either
  side moves: a later frame that needs more than that room gets the same result
  without walking them again (a next chain without room for a header offers
  none: every frame is dropped ``RX_BAD_BUFFER``). A stuck ring costs one walk
  per ring position and frame size that fits, not per frame: RX_TOO_BIG,
  RX_RING_FULL after counting chains, and RX_BAD_BUFFER all remember.
"""

from __future__ import annotations

from .virtqueue import SplitQueue

# virtio-net and transport feature bits (virtio spec 5.1.3, 6)
F_CSUM = 0
F_GUEST_CSUM = 1
F_MTU = 3
F_MAC = 5
F_GUEST_TSO4 = 7
F_GUEST_TSO6 = 8
F_GUEST_ECN = 9
F_GUEST_UFO = 10
F_HOST_TSO4 = 11
F_HOST_TSO6 = 12
F_HOST_ECN = 13
F_HOST_UFO = 14
F_MRG_RXBUF = 15
F_STATUS = 16
F_CTRL_VQ = 17
F_GUEST_ANNOUNCE = 21
F_MQ = 22
F_NOTIFY_ON_EMPTY = 24
F_ANY_LAYOUT = 27
F_RING_INDIRECT_DESC = 28
F_RING_EVENT_IDX = 29
F_VERSION_1 = 32
F_RING_PACKED = 34
F_IN_ORDER = 35

HDR_LEN = 12
HDR_F_NEEDS_CSUM = 1
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3
GSO_TCPV6 = 4
GSO_ECN = 0x80

# the largest frame a guest may hand us or we may hand it: 14 + 65535 + VLAN slack
MAX_FRAME = 65550
MAX_BUFFER = HDR_LEN + MAX_FRAME

# results of rx_deliver
RX_OK = 0
RX_RING_FULL = 1
RX_TOO_BIG = 2
RX_BAD_BUFFER = 3


def bit(n: int) -> int:
    return 1 << n


def offload_mask(features: int) -> tuple[bool, int]:
    """From a driver's acked features: (takes NEEDS_CSUM, bitmask of gso_types it takes)."""
    gso = 1 << GSO_NONE
    if features & bit(F_GUEST_TSO4):
        gso |= 1 << GSO_TCPV4
    if features & bit(F_GUEST_TSO6):
        gso |= 1 << GSO_TCPV6
    if features & bit(F_GUEST_UFO):
        gso |= 1 << GSO_UDP
    return bool(features & bit(F_GUEST_CSUM)), gso


def offload_ok(hdr_flags: int, gso_type: int, takes_csum: bool, gso_mask: int, ecn: bool) -> bool:
    """Whether a driver with these offloads can receive a frame with this header."""
    if hdr_flags & HDR_F_NEEDS_CSUM and not takes_csum:
        return False
    if gso_type & GSO_ECN and not ecn:
        return False
    return bool(gso_mask >> (gso_type & 0x7F) & 1)


def rx_deliver(q: SplitQueue, buf: memoryview, mergeable: bool, walk: bool = True) -> int:
    """Put one frame (``buf`` = 12-byte header + frame) into a receive queue.

    Writes ``num_buffers`` into ``buf``. Returns RX_OK, RX_RING_FULL, RX_TOO_BIG or
    RX_BAD_BUFFER; raises ``GuestError`` for a malformed chain (the caller breaks
    the queue). ``walk=False``: only the fast path (one writable descriptor that
    fits); anything else fails as the last walk did (the caller's work budget).
    """
    buf[10] = 1
    buf[11] = 0
    if q.put(buf) >= 0:  # fast path: one writable descriptor that fits
        return RX_OK
    need = len(buf)
    if not walk or (q.bad_head == q.position() and need > q.bad_room):
        return q.bad_result if q.bad_head != -1 else RX_RING_FULL
    if not q.pending():
        return RX_RING_FULL
    start = q.walked
    head = q.pop()
    total = q.capacity(head)
    if total >= need:
        q.fill(buf)
        q.push(head, need)
        return RX_OK
    if total < HDR_LEN:
        return _give_back(q, 1, -1, RX_BAD_BUFFER)
    if not mergeable:
        return _give_back(q, 1, total, RX_TOO_BIG)
    # Mergeable: count the chains the frame needs first, then fill them.
    taken = 1
    while total < need:
        if not q.pending():
            return _give_back(q, taken, total, RX_RING_FULL)
        if q.walked - start >= q.num:
            return _give_back(q, taken, total, RX_BAD_BUFFER)
        room = q.capacity(q.pop())
        taken += 1
        if room < HDR_LEN:
            return _give_back(q, taken, total, RX_BAD_BUFFER)
        total += room
    q.unpop(taken)
    buf[10] = taken & 0xFF
    buf[11] = taken >> 8
    pos = 0
    for _ in range(taken):
        head = q.pop()
        q.capacity(head)
        n = q.fill(buf[pos:])
        q.push(head, n)
        pos += n
    return RX_OK


def _give_back(q: SplitQueue, taken: int, room: int, result: int) -> int:
    """Return the ``taken`` chains a frame did not fit and remember why (see the rules)."""
    q.unpop(taken)
    q.bad_head = q.position()
    q.bad_room = room
    q.bad_result = result
    return result
