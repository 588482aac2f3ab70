/*
 * vhost_ipvlan._fastpath: the guest-to-guest and guest-to-wire hot loop in C.
 *
 * Theory of operation. The pure-Python data path (daemon/device.py, daemon/datapath.py,
 * virtio/virtqueue.py, switch/l2.py) is the reference and stays complete.
 * This module only accelerates the common case and works on the very same
 * state: a ``SplitQueue``'s ring buffers (``_desc``, ``_avail``, ``_used``), its
 * indices (``last_avail``, ``used_idx``, written back before returning) and its
 * ``GuestMemory`` regions (``mem._by_gpa``).
 *
 * forward_burst(txq, buf, sender_mac, sender_ips, table, budget, dirty, wire)
 *   takes chains from the sender's TX ring, one readable descriptor each, copies
 *   the frame (12-byte virtio_net_hdr + Ethernet) into ``buf`` (or, with a wire,
 *   into a staging slot), and forwards it straight into another guest's RX ring
 *   when, and only when, the Python switch would say TO_SLAVE(target) with no MAC
 *   translation, or out the master when it would say TO_UPLINK for an off-host
 *   MAC (l2's OUTSIDE, every flag):
 *     - IPv4 (valid version, IHL, total length) or IPv6 (valid version, payload
 *       length, next header neither ICMPv6 nor an extension header), not tagged;
 *       not UDP with a DHCP/DHCPv6 port (67, 68, 546, 547) on either side or a
 *       header cut short (the guards in switch/guard.py decide those);
 *     - source MAC == sender_mac, source address in sender_ips (the addresses the
 *       port says the sender owns);
 *     - destination address in ``table`` (built by Python from the port: only up
 *       slaves whose RX queue is started and enabled), destination MAC == that
 *       target's MAC (the sender's own address too: l2 gives it back, as Python);
 *     - the header's offloads are ones the target negotiated;
 *     - the target's next RX chain is one writable descriptor big enough.
 *   To the wire (``wire`` is not None: Python gives it only for ``fast_wire``
 *   ports while the master is up), the same frame checks and source validation,
 *   then: a destination MAC that is neither the master's nor in the port's
 *   ``by_mac`` (a guest's), and a frame no longer than ``max_frame`` unless it
 *   has a gso_type (the kernel segments it). Its source MAC becomes the master's
 *   (``to_wire``; NDP and ARP, which need more, are Python's) and it is staged;
 *   staged frames go out with ``sendmmsg`` (10-byte virtio_net_hdr + frame per
 *   datagram, PACKET_VNET_HDR) every WIRE_BATCH frames and before returning, so
 *   they leave before anything Python sends after the burst. Each frame is tried
 *   once, as Python's Uplink.send: a failed one is counted in ``wire_failed``.
 *   A frame handed over as SLOW_FRAME is copied from its slot to ``buf``.
 *   wire: (fd, master_mac_bytes, by_mac_dict, max_frame).
 *   Anything else stops the burst and hands over to Python:
 *     SLOW_CHAIN: the next chain is not simple (nothing taken: Python pops and
 *                 validates it, raising GuestError where it must);
 *     SLOW_FRAME: the frame is in ``buf`` (its chain already returned as used),
 *                 Python switches it.
 *   Every guest address is bounds-checked against the regions; every index read
 *   from guest memory is checked against the ring size; a check that fails is a
 *   hand-over to Python, never a crash.
 *   Bounded work: ``budget`` counts frames, and every chain taken here is one
 *   descriptor, so it is a descriptor budget too (the caller passes the smaller of
 *   its two); indirect and chained descriptors are never followed here (Python
 *   walks them, within the queue size). Each queue's ``walked`` counter (see
 *   virtqueue.py) grows by one per chain taken (TX) or filled (RX), as in Python.
 *   A Python-level failure (an exception from a table entry, a queue object, a
 *   set) after a chain was taken gives that chain back and ends the burst with
 *     ERROR: ``length`` is the exception; frames forwarded before it are counted
 *            as usual. Python counts it and switches the frame itself.
 *   An exception is raised only when nothing was taken (or writing the indices
 *   back failed).
 *   It counts no drops: a frame it would drop (spoofed, for a guest that is down,
 *   a full receive ring, ...) is a SLOW_FRAME, and Python counts it under its
 *   vhost_ipvlan/drops.py reason; so no index of that registry is repeated here
 *   (tests/unit/test_drops.py checks this file names no drop counter).
 *
 * table: {dst_ip_bytes: (rings, mac_bytes, caps_int, device)}, rings a tuple of the
 *   target's ready RX rings, each (rxq, counters_bytearray16), in Python's order: with
 *   one, frames go there unseen; with several, into rings[flow_hash % len(rings)]
 *   (flow_hash below is net/frames.py's, byte for byte), as device.py's deliver.
 *   caps: bit 0 takes NEEDS_CSUM, bit 1 takes ECN, bits 8..15 the gso_type mask.
 *   counters: two native u64, rx packets and rx bytes, added to by C.
 * dirty: a set; the target's ``device`` is added once it received a frame (Python
 *   publishes its used index and interrupts it after the burst).
 * Returns (status, length, frames_forwarded, bytes_forwarded, wire_sent, wire_failed);
 * frames_forwarded counts the frames sent to the wire too (sent or failed).
 * The staging slots are per thread; the GIL is let go while no Python object is needed
 * (gil_t below), so the daemon's worker threads (daemon/workers.py) run bursts at once.
 *
 * uplink_burst(...): the wire -> guest loop (the uplink's TPACKET_V2 RX ring, or
 * recvmmsg on its socket; demux by destination address with the same table, MAC
 * translation, rx_put); see its comment below. ring_recv: Python's read of that ring.
 *
 * Dirty logging (live migration): a queue whose ``_logbuf`` is not None (the session's
 *   dirty log while the front-end asks for one, virtqueue.py's rules) gets every RX
 *   buffer rx_put fills marked there after the copy, one bit per 4 KiB guest page,
 *   with an atomic OR (the front-end reads and clears the log concurrently, and other
 *   back-ends of the VM may share it). The used elements written here are marked by
 *   Python's publish, which always follows (the used index is Python's to write).
 *   log_mark() gives Python's own marks (virtio/dirtylog.py) the same exact atomic OR.
 *
 * Ring indices are accessed as whole 16-bit words (see virtqueue.py's rules).
 * Little-endian hosts only, like the rest of the data path.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/epoll.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/* Addresses compared inline, a word at a time. memcmp is a library call that reads its
 * first argument with a masked vector load, which cannot take its bytes from the stores
 * just made (a frame copied into the frame buffer): it waits for them to reach the cache,
 * a third of the daemon's time in a 64-byte ping-pong. */
static inline int mac_eq(const void *a, const void *b)
{
    uint32_t a0, b0;
    uint16_t a1, b1;
    memcpy(&a0, a, 4);
    memcpy(&b0, b, 4);
    memcpy(&a1, (const char *)a + 4, 2);
    memcpy(&b1, (const char *)b + 4, 2);
    return a0 == b0 && a1 == b1;
}

/* An IPv4 or IPv6 address (len 4 or 16; anything else compared bytewise). */
static inline int addr_eq(const void *a, const void *b, Py_ssize_t len)
{
    if (len == 4) {
        uint32_t x, y;
        memcpy(&x, a, 4);
        memcpy(&y, b, 4);
        return x == y;
    }
    if (len == 16) {
        uint64_t x[2], y[2];
        memcpy(x, a, 16);
        memcpy(y, b, 16);
        return x[0] == y[0] && x[1] == y[1];
    }
    return memcmp(a, b, (size_t)len) == 0;
}

#define HDR_LEN 12
#define ETH_HLEN 14
#define MAX_REGIONS 16
#define MAX_TARGETS 16
#define DESC_F_WRITE 2
#define VNET_HDR_LEN 10
#define WIRE_BATCH 32
#define SLOT_SIZE 65568 /* >= virtio.net.MAX_BUFFER */

/* Frames for the wire wait here until the burst's sendmmsg. One set per thread: the
 * daemon's worker threads (daemon/workers.py) call in at once, and sendmmsg runs
 * without the GIL. */
static __thread unsigned char stage[WIRE_BATCH][SLOT_SIZE];
static __thread struct mmsghdr wire_msgs[WIRE_BATCH];
static __thread struct iovec wire_iov[WIRE_BATCH][2];

typedef struct {
    int fd;
    const char *master_mac;
    PyObject *by_mac; /* the port's {mac: slave}: a destination MAC in it is local */
    long max_frame;
    int n;            /* frames staged */
    long sent, failed;
} wire_t;

/* Send the staged frames, each tried once (as Python's Uplink.send): a failed one is counted.
 * It touches only this thread's stage, no Python object: forward_burst calls it without
 * the GIL (gil_t below), so the kernel's work (the master's driver and, on a veth, its
 * peer's receive) runs while other threads run Python. */
static void wire_flush(wire_t *w)
{
    int i = 0;
    long sent = 0, failed = 0;
    while (i < w->n) {
        int r = sendmmsg(w->fd, wire_msgs + i, (unsigned)(w->n - i), MSG_DONTWAIT);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            failed++;
            i++;
        } else {
            sent += r;
            i += r;
        }
    }
    w->sent += sent;
    w->failed += failed;
    w->n = 0;
}

static void wire_stage(wire_t *w, uint32_t len)
{
    unsigned char *slot = stage[w->n];
    wire_iov[w->n][0] = (struct iovec){slot, VNET_HDR_LEN};
    wire_iov[w->n][1] = (struct iovec){slot + HDR_LEN, len - HDR_LEN};
    memset(&wire_msgs[w->n], 0, sizeof wire_msgs[w->n]);
    wire_msgs[w->n].msg_hdr.msg_iov = wire_iov[w->n];
    wire_msgs[w->n].msg_hdr.msg_iovlen = 2;
    if (++w->n == WIRE_BATCH)
        wire_flush(w);
}

enum { ST_EMPTY = 0, ST_BUDGET = 1, ST_SLOW_FRAME = 2, ST_SLOW_CHAIN = 3, ST_ERROR = 4, ST_READ_ERROR = 5 };

typedef struct {
    uint64_t start, end;
    char *ptr;
} region_t;

typedef struct {
    PyObject *obj;
    Py_buffer desc, avail, used;
    int nbufs; /* how many of desc/avail/used are held */
    Py_buffer logb; /* the dirty log, when has_log */
    int has_log;
    Py_buffer rbuf[MAX_REGIONS];
    region_t reg[MAX_REGIONS];
    int nreg;
    uint32_t num;
    uint16_t last_avail, used_idx;
    /* the avail index last read (rx_put): chains up to it are taken without reading it
     * again, a line the driver's core writes (as DPDK's vhost, once per burst) */
    uint16_t avail_seen;
    unsigned long long walked;
    int changed;
    /* publishing (queue_open_publish): SplitQueue's _published, event_idx, log_used */
    int publishes;
    uint16_t published;
    int event_idx;
    long long log_used;
} queue_t;

static void queue_release(queue_t *q)
{
    Py_buffer *bufs[3] = {&q->desc, &q->avail, &q->used};
    for (int i = 0; i < q->nbufs; i++)
        PyBuffer_Release(bufs[i]);
    for (int i = 0; i < q->nreg; i++)
        PyBuffer_Release(&q->rbuf[i]);
    if (q->has_log)
        PyBuffer_Release(&q->logb);
    q->nbufs = q->nreg = q->has_log = 0;
}

/* The pending Python exception, normalized with its traceback, taken off the thread
 * state (a new reference; None if there was none): handed to Python, never raised. */
static PyObject *take_exception(void)
{
    PyObject *type, *exc, *tb;
    PyErr_Fetch(&type, &exc, &tb);
    PyErr_NormalizeException(&type, &exc, &tb);
    if (exc && tb)
        PyException_SetTraceback(exc, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    if (!exc) {
        Py_INCREF(Py_None);
        exc = Py_None;
    }
    return exc;
}

/* The attribute names queue_open and queue_close use, interned once (PyInit__fastpath):
 * a name given as a C string would be made into a str object at every call. */
enum {
    N_NUM, N_LAST_AVAIL, N_USED_IDX, N_WALKED, N_DESC, N_AVAIL, N_USED, N_LOGBUF, N_MEM, N_BY_GPA,
    N_PUBLISHED, N_EVENT_IDX, N_LOG_USED, N_COUNT
};
/* The GIL during a burst. A burst lets it go for the frames that need no Python object
 * (every answer in the burst's caches, a target already open: the common case) and
 * takes it back before anything that touches Python (a cache miss, a target's first
 * frame, a frame for Python, an exception, the end). Meanwhile it reads only C memory
 * (guest memory, the rings, its staging buffers) and fields of Python objects it holds
 * references to and that nothing changes: the port's table entries, immutable tuples
 * and bytes. Nothing else changes the port meanwhile: Python's code for a port runs on
 * the port's thread (this one), and the daemon's main thread waits for the port's worker
 * to finish its burst (daemon/workers.py). Other workers' threads run Python at once. */
typedef struct {
    PyThreadState *saved; /* not NULL: the GIL is let go */
    int quiet;            /* frames since the GIL was last needed */
} gil_t;

/* Frames that must need no Python object in a row before a burst lets the GIL go: each
 * hand-over can cost a wait for another thread running Python, so frames that need
 * Python often (a cache miss every frame, broadcasts) keep it. */
#define GIL_QUIET 4

static inline void gil_let_go(gil_t *g)
{
    if (!g->saved)
        g->saved = PyEval_SaveThread();
}

static inline void gil_take(gil_t *g)
{
    if (g->saved) {
        PyEval_RestoreThread(g->saved);
        g->saved = NULL;
    }
    g->quiet = 0;
}

/* At a frame's start: let the GIL go once GIL_QUIET frames in a row needed no Python. */
static inline void gil_frame(gil_t *g)
{
    if (g->quiet++ >= GIL_QUIET)
        gil_let_go(g);
}

static const char *const name_text[N_COUNT] = {
    [N_NUM] = "num",     [N_LAST_AVAIL] = "last_avail", [N_USED_IDX] = "used_idx", [N_WALKED] = "walked",
    [N_DESC] = "_desc",  [N_AVAIL] = "_avail",          [N_USED] = "_used",         [N_LOGBUF] = "_logbuf",
    [N_MEM] = "mem",     [N_BY_GPA] = "_by_gpa",        [N_PUBLISHED] = "_published", [N_EVENT_IDX] = "event_idx",
    [N_LOG_USED] = "log_used"};
static PyObject *names[N_COUNT];

static int get_u64_attr(PyObject *obj, PyObject *name, unsigned long long *out)
{
    PyObject *v = PyObject_GetAttr(obj, name);
    if (!v)
        return -1;
    *out = PyLong_AsUnsignedLongLong(v);
    Py_DECREF(v);
    return (*out == (unsigned long long)-1 && PyErr_Occurred()) ? -1 : 0;
}

static int get_buf_attr(PyObject *obj, PyObject *name, Py_buffer *view)
{
    PyObject *v = PyObject_GetAttr(obj, name);
    if (!v)
        return -1;
    int rc = PyObject_GetBuffer(v, view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS);
    Py_DECREF(v);
    return rc;
}

/* Open a SplitQueue: borrow its buffers and indices. 0 on success, -1 with an exception. */
static int queue_open(queue_t *q, PyObject *obj)
{
    unsigned long long num, last_avail, used_idx;
    memset(q, 0, sizeof *q);
    q->obj = obj;
    if (get_u64_attr(obj, names[N_NUM], &num) || get_u64_attr(obj, names[N_LAST_AVAIL], &last_avail) ||
        get_u64_attr(obj, names[N_USED_IDX], &used_idx) || get_u64_attr(obj, names[N_WALKED], &q->walked))
        return -1;
    if (num == 0 || num > 32768) {
        PyErr_SetString(PyExc_ValueError, "queue size out of range");
        return -1;
    }
    q->num = (uint32_t)num;
    q->last_avail = q->avail_seen = (uint16_t)last_avail;
    q->used_idx = (uint16_t)used_idx;
    if (get_buf_attr(obj, names[N_DESC], &q->desc))
        return -1;
    q->nbufs = 1;
    if (get_buf_attr(obj, names[N_AVAIL], &q->avail))
        goto fail;
    q->nbufs = 2;
    if (get_buf_attr(obj, names[N_USED], &q->used))
        goto fail;
    q->nbufs = 3;
    if ((uint64_t)q->desc.len < 16ULL * num || (uint64_t)q->avail.len < 6 + 2ULL * num ||
        (uint64_t)q->used.len < 6 + 8ULL * num) {
        PyErr_SetString(PyExc_ValueError, "ring buffers smaller than the queue size");
        goto fail;
    }
    PyObject *logbuf = PyObject_GetAttr(obj, names[N_LOGBUF]);
    if (!logbuf)
        goto fail;
    if (logbuf != Py_None) {
        int rc = PyObject_GetBuffer(logbuf, &q->logb, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS);
        Py_DECREF(logbuf);
        if (rc)
            goto fail;
        q->has_log = 1;
    } else
        Py_DECREF(logbuf);
    PyObject *mem = PyObject_GetAttr(obj, names[N_MEM]);
    if (!mem)
        goto fail;
    PyObject *regions = PyObject_GetAttr(mem, names[N_BY_GPA]);
    Py_DECREF(mem);
    if (!regions)
        goto fail;
    if (!PyTuple_Check(regions) || PyTuple_GET_SIZE(regions) > MAX_REGIONS) {
        Py_DECREF(regions);
        PyErr_SetString(PyExc_ValueError, "unexpected memory region table");
        goto fail;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(regions); i++) {
        PyObject *r = PyTuple_GET_ITEM(regions, i);
        if (!PyTuple_Check(r) || PyTuple_GET_SIZE(r) != 3) {
            Py_DECREF(regions);
            PyErr_SetString(PyExc_ValueError, "unexpected memory region entry");
            goto fail;
        }
        unsigned long long start = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(r, 0));
        unsigned long long end = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(r, 1));
        if (PyErr_Occurred() ||
            PyObject_GetBuffer(PyTuple_GET_ITEM(r, 2), &q->rbuf[q->nreg], PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS)) {
            Py_DECREF(regions);
            goto fail;
        }
        q->nreg++;
        if (end < start || (uint64_t)q->rbuf[q->nreg - 1].len != end - start) {
            Py_DECREF(regions);
            PyErr_SetString(PyExc_ValueError, "memory region size mismatch");
            goto fail;
        }
        q->reg[q->nreg - 1] = (region_t){start, end, q->rbuf[q->nreg - 1].buf};
    }
    Py_DECREF(regions);
    return 0;
fail:
    queue_release(q);
    return -1;
}

/* queue_open, and what publishing needs (SplitQueue's _published, event_idx, log_used). */
static int queue_open_publish(queue_t *q, PyObject *obj)
{
    if (queue_open(q, obj))
        return -1;
    unsigned long long published;
    PyObject *ev, *lu;
    if (get_u64_attr(obj, names[N_PUBLISHED], &published) || !(ev = PyObject_GetAttr(obj, names[N_EVENT_IDX])))
        goto fail;
    q->event_idx = PyObject_IsTrue(ev);
    Py_DECREF(ev);
    if (q->event_idx < 0 || !(lu = PyObject_GetAttr(obj, names[N_LOG_USED])))
        goto fail;
    q->log_used = PyLong_AsLongLong(lu);
    Py_DECREF(lu);
    if (q->log_used == -1 && PyErr_Occurred())
        goto fail;
    q->published = (uint16_t)published;
    q->publishes = 1;
    return 0;
fail:
    queue_release(q);
    return -1;
}

/* Write the indices back to the Python object and release. -1 with an exception on failure. */
static int queue_close(queue_t *q)
{
    int rc = 0;
    if (q->changed) {
        PyObject *la = PyLong_FromUnsignedLong(q->last_avail);
        PyObject *ui = PyLong_FromUnsignedLong(q->used_idx);
        PyObject *wk = PyLong_FromUnsignedLongLong(q->walked);
        if (!la || !ui || !wk || PyObject_SetAttr(q->obj, names[N_LAST_AVAIL], la) ||
            PyObject_SetAttr(q->obj, names[N_USED_IDX], ui) || PyObject_SetAttr(q->obj, names[N_WALKED], wk))
            rc = -1;
        Py_XDECREF(la);
        Py_XDECREF(ui);
        Py_XDECREF(wk);
    }
    if (q->publishes && rc == 0) {
        PyObject *pub = PyLong_FromUnsignedLong(q->published);
        if (!pub || PyObject_SetAttr(q->obj, names[N_PUBLISHED], pub))
            rc = -1;
        Py_XDECREF(pub);
    }
    queue_release(q);
    return rc;
}

static inline char *gpa(const queue_t *q, uint64_t addr, uint32_t len)
{
    for (int i = 0; i < q->nreg; i++) {
        const region_t *r = &q->reg[i];
        if (addr >= r->start && addr < r->end && len <= r->end - addr)
            return r->ptr + (addr - r->start);
    }
    return NULL;
}

/* A UDP header the Python guards must see: cut short, or a DHCP/DHCPv6 port on
 * either side (server replies are DHCP_GUARD unless the sender may route). */
static int guarded_udp(const unsigned char *udp, uint32_t avail)
{
    if (avail < 8)
        return 1;
    unsigned sport = (unsigned)(udp[0] << 8 | udp[1]), dport = (unsigned)(udp[2] << 8 | udp[3]);
    return sport == 67 || sport == 68 || sport == 546 || sport == 547 || dport == 67 || dport == 68 ||
           dport == 546 || dport == 547;
}

/* The frames both directions take without Python: IPv4 (valid version, IHL, total
 * length) or IPv6 (valid version, payload length, next header neither ICMPv6 nor an
 * extension header), not tagged, no DHCP/DHCPv6 port and no UDP header cut short
 * (the guards' and NDP's). Returns the address length (4 or 16) with the source and
 * destination addresses, or 0: Python's. */
static Py_ssize_t plain_ip(unsigned char *eth, uint32_t n, const unsigned char **saddr, const unsigned char **daddr)
{
    uint16_t etype = (uint16_t)(eth[12] << 8 | eth[13]);
    unsigned char *ip = eth + ETH_HLEN;
    if (etype == 0x0800) {
        if (n < ETH_HLEN + 20)
            return 0;
        uint32_t ihl = ip[0] & 0x0F, total = (uint32_t)(ip[2] << 8 | ip[3]);
        if ((ip[0] >> 4) != 4 || ihl < 5 || ihl * 4 > total || ETH_HLEN + total > n)
            return 0;
        if (ip[9] == 17 && !((ip[6] & 0x1F) | ip[7]) && guarded_udp(ip + ihl * 4, total - ihl * 4))
            return 0;
        *saddr = ip + 12;
        *daddr = ip + 16;
        return 4;
    }
    if (etype == 0x86DD) {
        if (n < ETH_HLEN + 40)
            return 0;
        uint32_t plen = (uint32_t)(ip[4] << 8 | ip[5]);
        if ((ip[0] >> 4) != 6 || ETH_HLEN + 40 + plen > n || ip[6] == 58 || ip[6] == 0 || ip[6] == 43 ||
            ip[6] == 44 || ip[6] == 60)
            return 0; /* ICMPv6 and extension headers: the guards' (NDP, RA, a walk) */
        if (ip[6] == 17 && guarded_udp(ip + 40, plen))
            return 0;
        *saddr = ip + 8;
        *daddr = ip + 24;
        return 16;
    }
    return 0;
}

static inline uint16_t ring16(const Py_buffer *b, uint32_t word)
{
    return ((volatile const uint16_t *)b->buf)[word];
}

typedef struct {
    uint64_t addr;
    uint32_t len;
    uint16_t flags, next;
} desc_t;

static inline void read_desc(const queue_t *q, uint32_t i, desc_t *d)
{
    memcpy(d, (const char *)q->desc.buf + 16 * (size_t)i, 16);
}

static inline char *gpa(const queue_t *q, uint64_t addr, uint32_t len);

/* Start loading the buffer of the chain ``ahead`` places after the next one, if the
 * driver has made it available and it is one descriptor (``write``: for writing): its
 * cache lines were last written by the driver's core, and the copy of the next frame
 * would otherwise wait for them. A hint only: nothing is taken or checked for use. */
static inline void prefetch_chain(const queue_t *q, uint16_t avail_idx, uint16_t ahead, int write)
{
    uint16_t at = (uint16_t)(q->last_avail + ahead);
    if ((uint16_t)(avail_idx - q->last_avail) <= ahead)
        return;
    uint32_t head = ((volatile const uint16_t *)q->avail.buf)[2 + at % q->num];
    if (head >= q->num)
        return;
    desc_t d;
    read_desc(q, head, &d);
    const char *p = gpa(q, d.addr, d.len < 64 ? d.len : 64);
    if (p) {
        if (write)
            __builtin_prefetch(p, 1);
        else
            __builtin_prefetch(p, 0);
    }
}

static inline void push_used(queue_t *q, uint32_t head, uint32_t len)
{
    uint32_t elem[2] = {head, len};
    memcpy((char *)q->used.buf + 4 + 8 * (size_t)(q->used_idx % q->num), elem, 8);
    q->used_idx++;
    q->changed = 1;
}

/* Mark the 4 KiB pages of guest memory [addr, addr + len) dirty in a log of ``bytes``
 * bytes, one atomic OR each, after the writes before it (release). Returns 1 if part of
 * the range lay beyond the log (not marked), else 0. */
static int mark_pages(unsigned char *log, uint64_t bytes, uint64_t addr, uint64_t len)
{
    if (!len)
        return 0;
    uint64_t end = addr + len - 1;
    if (end < addr)
        end = UINT64_MAX; /* the range wraps: the log ends long before */
    for (uint64_t page = addr >> 12, last = end >> 12; page <= last; page++) {
        if (page / 8 >= bytes)
            return 1;
        __atomic_fetch_or(&log[page / 8], (unsigned char)(1u << (page % 8)), __ATOMIC_RELEASE);
    }
    return 0;
}

/* The queue's log: the RX buffer rx_put filled (the session checked that the log covers
 * guest memory). */
static void log_write(const queue_t *q, uint64_t addr, uint32_t len)
{
    mark_pages(q->logb.buf, (uint64_t)q->logb.len, addr, len);
}

/* A descriptor given by Python: an int; a negative one (or one too large) is -1. 0, or -1
 * with an exception. */
static int fd_arg(PyObject *arg, int *fd)
{
    long v = PyLong_AsLong(arg);
    if (v == -1 && PyErr_Occurred())
        return -1;
    *fd = v < 0 || v > INT32_MAX ? -1 : (int)v;
    return 0;
}

/* Set O_NONBLOCK on ``fd`` if it is not: the front-end shares the open file description
 * of its eventfds and may clear it. 0, or -1 (errno). */
static int set_nonblocking(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0)
        return -1;
    return (fl & O_NONBLOCK) ? 0 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

/* Add 1 to the eventfd ``fd`` without ever blocking (host.py's eventfd_signal): 1 when
 * done, 0 when the descriptor is gone or its counter full. No Python object: the GIL may
 * be let go. */
static int eventfd_add(int fd)
{
    uint64_t one = 1;
    ssize_t r = -1;
    if (set_nonblocking(fd) == 0)
        do
            r = write(fd, &one, sizeof one);
        while (r < 0 && errno == EINTR);
    return r == (ssize_t)sizeof one;
}

/* Reset a kick eventfd's counter without ever blocking: preadv2 with RWF_NOWAIT (one
 * system call, whatever the front-end, which shares the open file, did to O_NONBLOCK
 * meanwhile), or where the kernel does not take it for an eventfd, O_NONBLOCK then read.
 * 1 when read or nothing was there, 0 on an error (the caller hands it to Python, which
 * stops watching it). */
static int kick_read(int fd)
{
    uint64_t value;
    struct iovec iov = {&value, sizeof value};
    ssize_t r;
    do
        r = preadv2(fd, &iov, 1, -1, RWF_NOWAIT);
    while (r < 0 && errno == EINTR);
    if (r >= 0 || errno == EAGAIN)
        return 1;
    if ((errno != EOPNOTSUPP && errno != EINVAL) || set_nonblocking(fd))
        return 0;
    do
        r = read(fd, &value, sizeof value);
    while (r < 0 && errno == EINTR);
    return r >= 0 || errno == EAGAIN;
}

/* The used ring's bytes [offset, offset + len) were written: mark them in the log while
 * the front-end asks for it (virtqueue.py's _log_used). */
static void log_used_write(const queue_t *q, uint64_t offset, uint64_t len)
{
    if (q->log_used >= 0 && q->has_log)
        mark_pages(q->logb.buf, (uint64_t)q->logb.len, (uint64_t)q->log_used + offset, len);
}

/* SplitQueue.publish's twin (a queue opened with queue_open_publish): publish the used
 * elements pushed and, if the driver asked for an interrupt, add 1 to ``call`` (-1:
 * none). Returns 1 when a wanted interrupt could not be sent (CALL_FAILED), else 0. */
static int queue_publish(queue_t *q, int call)
{
    uint16_t new = q->used_idx, old = q->published;
    if (new == old)
        return 0;
    __atomic_store_n((uint16_t *)q->used.buf + 1, new, __ATOMIC_RELEASE);
    q->published = new;
    log_used_write(q, 0, (uint64_t)q->used.len);
    int want;
    if (q->event_idx) {
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        uint16_t event = ring16(&q->avail, 2 + q->num);
        want = (uint16_t)(new - event - 1) < (uint16_t)(new - old);
    } else
        want = !(ring16(&q->avail, 0) & 1); /* VRING_AVAIL_F_NO_INTERRUPT */
    return want && call >= 0 && !eventfd_add(call);
}

/* SplitQueue.want_kick's twin: ask the driver to kick for its next chain, then (behind a
 * full barrier, so that a kick is not lost) how many chains are already waiting; more than
 * the ring holds is the caller's to hand to Python (pending() raises there). */
static uint32_t queue_want_kick(queue_t *q)
{
    if (q->event_idx) {
        __atomic_store_n((uint16_t *)q->used.buf + 2 + 4 * (size_t)q->num, q->last_avail, __ATOMIC_RELAXED);
        log_used_write(q, 4 + 8 * (uint64_t)q->num, 2);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
    } else if (ring16(&q->used, 0)) { /* VRING_USED_F_NO_NOTIFY, ours or an earlier back-end's */
        __atomic_store_n((uint16_t *)q->used.buf, 0, __ATOMIC_RELAXED);
        log_used_write(q, 0, 2);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
    }
    return (uint16_t)(ring16(&q->avail, 1) - q->last_avail);
}

/* log_mark(log, gpa, length) -> int: virtio/dirtylog.py's DirtyLog.mark with exact bits
 * (mark_pages), for Python's own writes while the module is loaded. */
static PyObject *py_log_mark(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "log_mark takes 3 arguments");
        return NULL;
    }
    unsigned long long addr = PyLong_AsUnsignedLongLong(args[1]);
    long long len = PyLong_AsLongLong(args[2]);
    if (PyErr_Occurred())
        return NULL;
    Py_buffer b;
    if (PyObject_GetBuffer(args[0], &b, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS))
        return NULL;
    int missed = len > 0 ? mark_pages(b.buf, (uint64_t)b.len, addr, (uint64_t)len) : 0;
    PyBuffer_Release(&b);
    return PyLong_FromLong(missed);
}

/* Put src (len bytes) into the next RX chain if it is one writable descriptor big enough. */
static int rx_put(queue_t *q, const char *src, uint32_t len)
{
    uint16_t avail_idx = q->avail_seen;
    if (avail_idx == q->last_avail) {
        avail_idx = q->avail_seen = ring16(&q->avail, 1);
        if (avail_idx == q->last_avail)
            return 0;
    }
    __asm__ __volatile__("" ::: "memory");
    uint32_t head = ring16(&q->avail, 2 + q->last_avail % q->num);
    if (head >= q->num)
        return 0;
    desc_t d;
    read_desc(q, head, &d);
    if (d.flags != DESC_F_WRITE || d.len < len)
        return 0;
    char *dst = gpa(q, d.addr, len);
    if (!dst)
        return 0;
    prefetch_chain(q, avail_idx, 1, 1);
    memcpy(dst, src, len);
    if (q->has_log)
        log_write(q, d.addr, len);
    q->last_avail++;
    q->walked++;
    push_used(q, head, len);
    return 1;
}

typedef struct {
    PyObject *key; /* the ring's (rxq, counters) tuple, borrowed */
    queue_t q;
    Py_buffer counters;
    int added;
} target_t;

static int offload_ok(uint8_t flags, uint8_t gso, long caps)
{
    if ((flags & 1) && !(caps & 1))
        return 0;
    if ((gso & 0x80) && !(caps & 2))
        return 0;
    uint8_t type = gso & 0x7F;
    return type < 8 && ((caps >> (8 + type)) & 1);
}

typedef struct {
    target_t t[MAX_TARGETS];
    int n;
} targets_t;

static int targets_close(targets_t *ts)
{
    int rc = 0;
    for (int i = 0; i < ts->n; i++) {
        if (queue_close(&ts->t[i].q))
            rc = -1;
        PyBuffer_Release(&ts->t[i].counters);
    }
    ts->n = 0;
    return rc;
}

/* The answers a burst already had from Python's tables, so that frames of a few flows in
 * turn (a guest answering several others, the wire's frames for several guests) need no
 * Python object: CACHE_WAYS entries, chosen by the key's last byte, each an exact key.
 * forward_burst's tables do not change while it runs (no Python code of the port runs
 * between its lookups: it runs on the port's thread, this one, and the daemon's main
 * thread waits for the worker's burst, daemon/workers.py; other threads' Python does
 * run, on other ports), so a cached answer is the table's answer. uplink_burst's ``slow`` callback
 * runs Python between frames: it may empty the call's table in place
 * (PortTable.invalidate) and only add to ``wire_macs``, so uplink_burst clears its
 * address cache after every call of ``slow`` and keeps only positive MAC answers. */
#define CACHE_WAYS 8
#define SRC_WAYS 4 /* a guest's own addresses: a few */

typedef struct {
    Py_ssize_t len; /* 0: empty */
    unsigned char key[16];
    PyObject *value; /* a strong reference: the table entry */
    /* its parts, checked when it was cached (read without the GIL) */
    PyObject *rings;    /* a tuple of one or more (rxq, counters) */
    const char *mac;    /* 6 bytes */
    long caps;
    PyObject *device;
} dst_entry_t;

typedef struct {
    dst_entry_t e[CACHE_WAYS];
} dst_cache_t;

/* The cached entry for the address ``key`` (4 or 16 bytes), or NULL: no Python object
 * is touched (the GIL may be let go). */
static inline const dst_entry_t *dst_hit(const dst_cache_t *c, const unsigned char *key, Py_ssize_t len)
{
    const dst_entry_t *e = &c->e[key[len - 1] & (CACHE_WAYS - 1)];
    return e->len == len && addr_eq(e->key, key, len) ? e : NULL;
}

/* Look ``key`` up in ``table`` (a dict; with the GIL) and cache the entry, checked:
 * NULL without an exception if there is none, NULL with one if the lookup failed or the
 * entry is not (rings, mac, caps, device). */
static const dst_entry_t *dst_fill(dst_cache_t *c, PyObject *table, const unsigned char *key, Py_ssize_t len)
{
    PyObject *k = PyBytes_FromStringAndSize((const char *)key, len);
    if (!k)
        return NULL;
    PyObject *value = PyDict_GetItemWithError(table, k); /* borrowed */
    Py_DECREF(k);
    if (!value)
        return NULL;
    PyObject *rings = PyTuple_Check(value) && PyTuple_GET_SIZE(value) == 4 ? PyTuple_GET_ITEM(value, 0) : NULL;
    PyObject *mac = rings ? PyTuple_GET_ITEM(value, 1) : NULL;
    if (!rings || !PyTuple_Check(rings) || PyTuple_GET_SIZE(rings) < 1 || !PyBytes_Check(mac) ||
        PyBytes_GET_SIZE(mac) != 6 || !PyLong_Check(PyTuple_GET_ITEM(value, 2))) {
        PyErr_SetString(PyExc_TypeError, "_fastpath: bad table entry");
        return NULL;
    }
    long caps = PyLong_AsLong(PyTuple_GET_ITEM(value, 2));
    if (caps == -1 && PyErr_Occurred())
        return NULL;
    dst_entry_t *e = &c->e[key[len - 1] & (CACHE_WAYS - 1)];
    Py_INCREF(value);
    Py_XSETREF(e->value, value);
    memcpy(e->key, key, (size_t)len);
    e->len = len;
    e->rings = rings;
    e->mac = PyBytes_AS_STRING(mac);
    e->caps = caps;
    e->device = PyTuple_GET_ITEM(value, 3);
    return e;
}

static void dst_cache_clear(dst_cache_t *c)
{
    for (int i = 0; i < CACHE_WAYS; i++) {
        Py_CLEAR(c->e[i].value);
        c->e[i].len = 0;
    }
}

/* MACs and what a table said of them (1: in it, 0: not), the same way. */
typedef struct {
    struct {
        unsigned char mac[6];
        signed char answer; /* -1: empty */
    } e[CACHE_WAYS];
} mac_cache_t;

static void mac_cache_init(mac_cache_t *c)
{
    for (int i = 0; i < CACHE_WAYS; i++)
        c->e[i].answer = -1;
}

/* The cached answer for ``mac`` (1: in the container, 0: not), or -1: none cached; no
 * Python object is touched. */
static inline int mac_hit(const mac_cache_t *c, const unsigned char *mac)
{
    unsigned i = mac[5] & (CACHE_WAYS - 1);
    return c->e[i].answer >= 0 && mac_eq(c->e[i].mac, mac) ? c->e[i].answer : -1;
}

/* Whether ``mac`` is in ``container`` (a dict or set): 1, 0, or -1 with an exception; with
 * the GIL, unless the answer is cached (then taken only to ask). With ``positive_only`` a
 * "no" is not kept (the caller's container may grow meanwhile). */
static int mac_in(mac_cache_t *c, PyObject *container, const unsigned char *mac, int positive_only, gil_t *gil)
{
    int hit = mac_hit(c, mac);
    if (hit >= 0)
        return hit;
    gil_take(gil);
    unsigned i = mac[5] & (CACHE_WAYS - 1);
    PyObject *k = PyBytes_FromStringAndSize((const char *)mac, 6);
    if (!k)
        return -1;
    int found = PyDict_Check(container) ? PyDict_Contains(container, k) : PySet_Contains(container, k);
    Py_DECREF(k);
    if (found < 0 || (!found && positive_only))
        return found;
    memcpy(c->e[i].mac, mac, 6);
    c->e[i].answer = (signed char)found;
    return found;
}

/* CRC-32 (IEEE 802.3, reflected 0xEDB88320), as zlib.crc32: ``crc`` is the value so far
 * (0 to start), the result can be passed on. */
static uint32_t crc_table[256];

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}

static uint32_t crc32_update(uint32_t crc, const unsigned char *p, size_t n)
{
    crc = ~crc;
    while (n--)
        crc = crc_table[(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

/* net/frames.py's flow_hash, byte for byte (the same value for every input): the L3
 * source and destination, and for TCP/UDP of an unfragmented IPv4 packet (or directly
 * behind the IPv6 header) the two ports; 0 for a frame that is not IP. ``f`` is the
 * Ethernet frame, ``n`` its length. */
static uint32_t flow_hash(const unsigned char *f, uint32_t n)
{
    if (n < ETH_HLEN)
        return 0;
    uint16_t etype = (uint16_t)(f[12] << 8 | f[13]);
    uint32_t h, ports;
    int unfragmented, proto;
    if (etype == 0x0800 && n >= ETH_HLEN + 20) {
        h = crc32_update(0, f + ETH_HLEN + 12, 8);
        ports = ETH_HLEN + (uint32_t)(f[ETH_HLEN] & 0xF) * 4;
        unfragmented = !((f[ETH_HLEN + 6] & 0x3F) | f[ETH_HLEN + 7]); /* MF clear, offset 0 */
        proto = f[ETH_HLEN + 9];
    } else if (etype == 0x86DD && n >= ETH_HLEN + 40) {
        h = crc32_update(0, f + ETH_HLEN + 8, 32);
        ports = ETH_HLEN + 40;
        unfragmented = 1;
        proto = f[ETH_HLEN + 6];
    } else
        return 0;
    if (unfragmented && (proto == 6 || proto == 17) && n >= ports + 4)
        h = crc32_update(h, f + ports, 4);
    return h;
}

/* flow_hash(frame) -> int: the C accelerator's ring choice, for the tests (frames.flow_hash's twin). */
static PyObject *py_flow_hash(PyObject *module, PyObject *arg)
{
    (void)module;
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_C_CONTIGUOUS))
        return NULL;
    uint32_t h = (uint64_t)b.len > UINT32_MAX ? 0 : flow_hash(b.buf, (uint32_t)b.len);
    PyBuffer_Release(&b);
    return PyLong_FromUnsignedLong(h);
}

/* Put buf[:len] (12-byte header + frame; num_buffers set here) into an RX ring of the
 * table entry ``e`` (dst_fill's: rings, mac, caps, device), ``rings`` a tuple of (rxq, counters):
 * the only one, or with several the flow's (flow_hash modulo their number, as
 * device.py's deliver), if the target negotiated its offloads and the ring's next chain
 * is one writable descriptor big enough. Returns 1 when delivered (counted, the device
 * added to ``dirty``), 0 when Python must take it, -1 on a Python-level error (exception
 * set, nothing delivered), 2 when delivered but adding the device to ``dirty`` failed
 * (exception set). A target's first frame takes the GIL (``gil``) to open its ring and
 * mark it dirty; the rest need no Python object. */
static int deliver(targets_t *ts, const dst_entry_t *e, unsigned char *buf, uint32_t len, PyObject *dirty,
                   gil_t *gil)
{
    if ((buf[0] | buf[1]) && !offload_ok(buf[0], buf[1], e->caps))
        return 0;
    Py_ssize_t nrings = PyTuple_GET_SIZE(e->rings);
    PyObject *ring = PyTuple_GET_ITEM(e->rings, 0); /* one ring: no look at the frame */
    if (nrings > 1)
        ring = PyTuple_GET_ITEM(e->rings, (Py_ssize_t)(flow_hash(buf + HDR_LEN, len - HDR_LEN) % (uint64_t)nrings));
    target_t *t = NULL;
    for (int i = 0; i < ts->n; i++)
        if (ts->t[i].key == ring)
            t = &ts->t[i];
    if (!t) {
        if (ts->n == MAX_TARGETS)
            return 0;
        gil_take(gil);
        if (!PyTuple_Check(ring) || PyTuple_GET_SIZE(ring) != 2) {
            PyErr_SetString(PyExc_TypeError, "_fastpath: bad ring in a table entry");
            return -1;
        }
        t = &ts->t[ts->n];
        if (queue_open(&t->q, PyTuple_GET_ITEM(ring, 0)))
            return -1;
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(ring, 1), &t->counters, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS)) {
            queue_release(&t->q);
            return -1;
        }
        if (t->counters.len < 16) {
            PyBuffer_Release(&t->counters);
            queue_release(&t->q);
            PyErr_SetString(PyExc_ValueError, "_fastpath: counters buffer too small");
            return -1;
        }
        t->key = ring;
        t->added = 0;
        ts->n++;
    }
    buf[10] = 1; /* num_buffers */
    buf[11] = 0;
    if (!rx_put(&t->q, (const char *)buf, len))
        return 0;
    uint64_t *cnt = t->counters.buf;
    cnt[0] += 1;
    cnt[1] += len - HDR_LEN;
    if (!t->added) {
        gil_take(gil);
        if (PySet_Add(dirty, e->device))
            return 2;
        t->added = 1;
    }
    return 1;
}

static PyObject *forward_burst(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "forward_burst takes 8 arguments");
        return NULL;
    }
    PyObject *txq_obj = args[0], *sender_mac = args[2], *sender_ips = args[3];
    PyObject *table = args[4], *dirty = args[6];
    long budget = PyLong_AsLong(args[5]);
    if (budget == -1 && PyErr_Occurred())
        return NULL;
    if (!PyBytes_Check(sender_mac) || PyBytes_GET_SIZE(sender_mac) != 6 || !PyAnySet_Check(sender_ips) ||
        !PyDict_Check(table) || !PyAnySet_Check(dirty)) {
        PyErr_SetString(PyExc_TypeError, "forward_burst: bad argument types");
        return NULL;
    }
    const char *smac = PyBytes_AS_STRING(sender_mac);
    wire_t wire = {-1, NULL, NULL, 0, 0, 0, 0};
    if (args[7] != Py_None) {
        PyObject *w = args[7];
        if (!PyTuple_Check(w) || PyTuple_GET_SIZE(w) != 4 || !PyBytes_Check(PyTuple_GET_ITEM(w, 1)) ||
            PyBytes_GET_SIZE(PyTuple_GET_ITEM(w, 1)) != 6 || !PyDict_Check(PyTuple_GET_ITEM(w, 2))) {
            PyErr_SetString(PyExc_TypeError, "forward_burst: bad wire argument");
            return NULL;
        }
        wire.fd = (int)PyLong_AsLong(PyTuple_GET_ITEM(w, 0));
        wire.max_frame = PyLong_AsLong(PyTuple_GET_ITEM(w, 3));
        if (PyErr_Occurred())
            return NULL;
        wire.master_mac = PyBytes_AS_STRING(PyTuple_GET_ITEM(w, 1));
        wire.by_mac = PyTuple_GET_ITEM(w, 2);
        if (wire.fd < 0)
            wire.master_mac = NULL;
    }
    Py_buffer fb;
    if (PyObject_GetBuffer(args[1], &fb, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS))
        return NULL;
    queue_t tx;
    if (queue_open(&tx, txq_obj)) {
        PyBuffer_Release(&fb);
        return NULL;
    }
    targets_t targets;
    targets.n = 0;
    int status = ST_BUDGET, error = 0, taken = 0;
    long nframes = 0, length = 0;
    long long nbytes = 0;
    unsigned char *buf = fb.buf;
    struct {
        Py_ssize_t len; /* 0: empty */
        unsigned char key[16];
    } srcs[SRC_WAYS]; /* source addresses found in sender_ips (a guest's IPv4 and IPv6 ones) */
    memset(srcs, 0, sizeof srcs);
    mac_cache_t dst_macs; /* destination MACs: in wire.by_mac (local) or not (outside) */
    mac_cache_init(&dst_macs);
    dst_cache_t dsts; /* destination addresses found in the table */
    memset(&dsts, 0, sizeof dsts);
    gil_t gil = {NULL, 0};

    while (nframes < budget) {
        gil_frame(&gil); /* taken back below for whatever touches Python */
        uint16_t avail_idx = ring16(&tx.avail, 1);
        uint16_t pending = (uint16_t)(avail_idx - tx.last_avail);
        if (pending == 0) {
            status = ST_EMPTY;
            break;
        }
        if (pending > tx.num) {
            status = ST_SLOW_CHAIN;
            break;
        }
        __asm__ __volatile__("" ::: "memory"); /* read the ring entry after the index */
        uint32_t head = ring16(&tx.avail, 2 + tx.last_avail % tx.num);
        desc_t d;
        if (head >= tx.num) {
            status = ST_SLOW_CHAIN;
            break;
        }
        read_desc(&tx, head, &d);
        const char *src = d.flags ? NULL : gpa(&tx, d.addr, d.len);
        if (!src || d.len > (uint64_t)fb.len || d.len > SLOT_SIZE) {
            status = ST_SLOW_CHAIN;
            break;
        }
        prefetch_chain(&tx, avail_idx, 1, 0);
        buf = wire.master_mac ? stage[wire.n] : (unsigned char *)fb.buf; /* a wire frame stays there */
        memcpy(buf, src, d.len);
        tx.last_avail++;
        tx.walked++;
        push_used(&tx, head, 0);
        taken = 1; /* until forwarded or handed over (SLOW_FRAME) */
        uint32_t len = d.len;
        length = len;

        /* -- is it a frame the Python switch would send to one other guest as is? -- */
        status = ST_SLOW_FRAME;
        if (len < HDR_LEN + ETH_HLEN)
            break;
        unsigned char *eth = buf + HDR_LEN;
        uint32_t n = len - HDR_LEN;
        if ((eth[0] & 1) || !mac_eq(eth + 6, smac))
            break;
        const unsigned char *saddr, *daddr;
        Py_ssize_t alen = plain_ip(eth, n, &saddr, &daddr);
        if (!alen)
            break;
        /* The sources that were the sender's, the destinations found in the table and
         * what wire.by_mac said of destination MACs are remembered for the burst (srcs,
         * dst_hit, mac_hit): most frames need no Python object, and no GIL. */
        unsigned way = saddr[alen - 1] & (SRC_WAYS - 1);
        if (alen != srcs[way].len || !addr_eq(saddr, srcs[way].key, alen)) {
            gil_take(&gil);
            PyObject *skey = PyBytes_FromStringAndSize((const char *)saddr, alen);
            if (!skey) {
                error = 1;
                break;
            }
            int owned = PySet_Contains(sender_ips, skey);
            Py_DECREF(skey);
            if (owned < 0) {
                error = 1;
                break;
            }
            if (!owned)
                break;
            memcpy(srcs[way].key, saddr, (size_t)alen);
            srcs[way].len = alen;
        }
        if (wire.master_mac && !mac_eq(eth, wire.master_mac)) {
            int is_local = mac_in(&dst_macs, wire.by_mac, eth, 0, &gil);
            if (is_local < 0) {
                error = 1;
                break;
            }
            if (!is_local) { /* OUTSIDE: TO_UPLINK, from the master's MAC */
                if ((long)len > wire.max_frame && !buf[1])
                    break; /* MTU_EXCEEDED, Python counts it */
                memcpy(eth + 6, wire.master_mac, 6);
                if (wire.n + 1 == WIRE_BATCH)
                    gil_let_go(&gil); /* the stage is full: sent now, without the GIL */
                wire_stage(&wire, len);
                status = ST_BUDGET;
                length = 0;
                taken = 0;
                nframes++;
                nbytes += n;
                continue;
            }
        }
        const dst_entry_t *e = dst_hit(&dsts, daddr, alen);
        if (!e) {
            gil_take(&gil);
            e = dst_fill(&dsts, table, daddr, alen);
            if (!e) {
                if (PyErr_Occurred())
                    error = 1;
                break;
            }
        }
        if (!mac_eq(eth, e->mac))
            break;
        int r = deliver(&targets, e, buf, len, dirty, &gil);
        if (r == 0)
            break;
        if (r < 0) {
            error = 1;
            break;
        }
        status = ST_BUDGET;
        length = 0;
        taken = 0;
        nframes++;
        nbytes += n;
        if (r == 2) { /* forwarded, then marking the target dirty failed */
            error = 1;
            break;
        }
    }

    if (wire.master_mac) {
        if (status == ST_SLOW_FRAME && !error && buf != fb.buf)
            memcpy(fb.buf, buf, (size_t)length); /* Python switches it from its own buffer */
        if (!error && wire.n > 0)
            gil_let_go(&gil);
        wire_flush(&wire); /* without the GIL, unless an exception is pending or nothing is staged */
    }
    gil_take(&gil);
    PyObject *exc = NULL; /* an exception after a chain was taken: ERROR, not raised */
    if (error && tx.changed) {
        if (taken) { /* give the chain back: Python takes it again */
            tx.last_avail--;
            tx.used_idx--;
            tx.walked--;
        }
        exc = take_exception();
        error = 0;
        status = ST_ERROR;
    }

    dst_cache_clear(&dsts);
    if (targets_close(&targets))
        error = 1;
    if (queue_close(&tx))
        error = 1;
    PyBuffer_Release(&fb);
    if (error) {
        Py_XDECREF(exc);
        return NULL;
    }
    if (exc)
        return Py_BuildValue("(iNlLll)", status, exc, nframes, nbytes, wire.sent, wire.failed);
    return Py_BuildValue("(illLll)", status, length, nframes, nbytes, wire.sent, wire.failed);
}


#define RX_BATCH 32
/* Frames read from the wire wait here until they are delivered or handed to Python
 * (recvmmsg; a ring's frames are used where the kernel put them). */
static __thread unsigned char rx_stage[RX_BATCH][SLOT_SIZE]; /* one set per thread, as stage */
static __thread struct mmsghdr rx_msgs[RX_BATCH];
static __thread struct iovec rx_iov[RX_BATCH][2];

/* The uplink's RX ring (PACKET_RX_RING, TPACKET_V2, PACKET_VNET_HDR, PACKET_COPY_THRESH),
 * given by Python (daemon/uplink.py ``RxRing.args``) as (fd, map, frame_size, frame_nr,
 * cursor): ``map`` the mmap'd ring, ``cursor`` a bytearray(4), the next frame's index
 * (native u32), kept by Python between calls. A frame is the kernel's while its
 * tp_status lacks TP_STATUS_USER, ours until we store TP_STATUS_KERNEL (release).
 * A frame longer than the ring's slot is in the slot cut short with TP_STATUS_COPY and
 * whole in the socket's queue, in the same order: it is read from there (recvmsg). */
typedef struct {
    int fd;
    Py_buffer map, cur;
    uint32_t frame_size, frame_nr;
    int held; /* the frame at the cursor is ours and in use */
} ring_t;

static void ring_release(ring_t *r)
{
    PyBuffer_Release(&r->map);
    PyBuffer_Release(&r->cur);
}

/* Open a ring tuple: 0, or -1 with an exception. */
static int ring_open(ring_t *r, PyObject *spec)
{
    memset(r, 0, sizeof *r);
    if (!PyTuple_Check(spec) || PyTuple_GET_SIZE(spec) != 5) {
        PyErr_SetString(PyExc_TypeError, "_fastpath: a ring is (fd, map, frame_size, frame_nr, cursor)");
        return -1;
    }
    long fd = PyLong_AsLong(PyTuple_GET_ITEM(spec, 0));
    long fs = PyLong_AsLong(PyTuple_GET_ITEM(spec, 2)), fn = PyLong_AsLong(PyTuple_GET_ITEM(spec, 3));
    if (PyErr_Occurred())
        return -1;
    if (PyObject_GetBuffer(PyTuple_GET_ITEM(spec, 1), &r->map, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS))
        return -1;
    if (PyObject_GetBuffer(PyTuple_GET_ITEM(spec, 4), &r->cur, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS)) {
        PyBuffer_Release(&r->map);
        return -1;
    }
    if (fd < 0 || fs < (long)TPACKET2_HDRLEN + 64 || fs % TPACKET_ALIGNMENT || fn < 1 || r->cur.len < 4 ||
        (uint64_t)r->map.len < (uint64_t)fs * (uint64_t)fn) {
        ring_release(r);
        PyErr_SetString(PyExc_ValueError, "_fastpath: ring geometry out of range");
        return -1;
    }
    r->fd = (int)fd;
    r->frame_size = (uint32_t)fs;
    r->frame_nr = (uint32_t)fn;
    return 0;
}

static inline struct tpacket2_hdr *ring_frame(ring_t *r)
{
    uint32_t at;
    memcpy(&at, r->cur.buf, 4);
    return (struct tpacket2_hdr *)((char *)r->map.buf + (size_t)(at % r->frame_nr) * r->frame_size);
}

/* The socket's pending error (ENETDOWN when the master went down, ...), taken off it as
 * a read would take it: a ring is never read, and the error would stay (poll reporting
 * POLLERR for ever). 0 if there is none. */
static int ring_error(ring_t *r)
{
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(r->fd, SOL_SOCKET, SO_ERROR, &err, &len))
        return errno;
    return err;
}

/* Give the frame at the cursor back to the kernel and move on. */
static void ring_done(ring_t *r)
{
    if (!r->held)
        return;
    __atomic_store_n(&ring_frame(r)->tp_status, TP_STATUS_KERNEL, __ATOMIC_RELEASE);
    uint32_t at;
    memcpy(&at, r->cur.buf, 4);
    at = (at + 1) % r->frame_nr;
    memcpy(r->cur.buf, &at, 4);
    r->held = 0;
}

/* Read one datagram (10-byte header + frame) from fd into ``slot`` as the daemon's
 * buffers hold it; the total (12-byte header + frame), -1 truncated, 0 none, -2 error. */
static long recv_one(int fd, unsigned char *slot, size_t room)
{
    struct iovec iov[2] = {{slot, VNET_HDR_LEN}, {slot + HDR_LEN, room - HDR_LEN}};
    struct msghdr mh = {.msg_iov = iov, .msg_iovlen = 2};
    ssize_t n;
    do
        n = recvmsg(fd, &mh, MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -2;
    if ((mh.msg_flags & MSG_TRUNC) || n < VNET_HDR_LEN)
        return -1;
    return (long)n + (HDR_LEN - VNET_HDR_LEN);
}

/* The next frame of the ring: 1 with *buf (12-byte header + frame, in the ring or, for a
 * TP_STATUS_COPY frame, in ``slot``) and *total (-1: truncated, as MSG_TRUNC: longer
 * than ``room``, or cut short with no copy queued), 0 if there is none, -1 for a read
 * error (errno). The frame stays ours until ring_done. */
static int ring_next(ring_t *r, unsigned char *slot, size_t room, unsigned char **buf, long *total)
{
    struct tpacket2_hdr *h = ring_frame(r);
    uint32_t st = __atomic_load_n(&h->tp_status, __ATOMIC_ACQUIRE);
    if (!(st & TP_STATUS_USER))
        return 0;
    r->held = 1;
    if (st & TP_STATUS_COPY) { /* whole in the socket's queue, in order */
        long got = recv_one(r->fd, slot, room);
        if (got == -2)
            return -1;
        *buf = slot;
        *total = got == 0 ? -1 : got; /* gone (cannot happen): a truncated one */
        return 1;
    }
    uint32_t mac = h->tp_mac, snap = h->tp_snaplen;
    *total = -1;
    *buf = slot;
    if (snap < h->tp_len || mac < TPACKET2_HDRLEN + HDR_LEN || mac > r->frame_size || snap > r->frame_size - mac ||
        (size_t)snap + HDR_LEN > room)
        return 1; /* cut short with no copy, or longer than the daemon's buffer */
    unsigned char *eth = (unsigned char *)h + mac;
    memmove(eth - HDR_LEN, eth - VNET_HDR_LEN, VNET_HDR_LEN); /* the daemon's layout: header at 0, frame at 12 */
    *buf = eth - HDR_LEN;
    *total = (long)snap + HDR_LEN;
    return 1;
}

/* Hand ``frame`` (total bytes, or -1: truncated) to Python's per-frame path through
 * ``slow``, copied to ``fb`` first; returns the copies it flooded, -1 on error. */
static long hand_over(PyObject *slow, Py_buffer *fb, const unsigned char *frame, long total)
{
    if (total > 0)
        memcpy(fb->buf, frame, (size_t)total);
    PyObject *r = PyObject_CallFunction(slow, "l", total);
    if (!r)
        return -1;
    long copies = PyLong_AsLong(r);
    Py_DECREF(r);
    return (copies == -1 && PyErr_Occurred()) ? -1 : copies;
}

/* One uplink burst's state (uplink_burst below). */
typedef struct {
    PyObject *table, *wire_macs, *dirty, *slow;
    const char *mmac;
    Py_buffer fb;
    targets_t targets;
    long budget, delivered;
    int fatal;     /* stop now and raise */
    PyObject *exc; /* the first Python-level failure: Python takes the rest */
    mac_cache_t sources; /* source MACs seen in wire_macs (positive answers only) */
    dst_cache_t dsts;    /* destination addresses found in the table */
    gil_t gil;           /* let go while no Python object is needed */
} rx_t;

/* Deliver ``buf`` (total bytes, -1: truncated) to its guest when C may (see uplink_burst),
 * else hand it to Python. 0, or -1 (fatal: an exception from Python's own path). */
static int rx_frame(rx_t *x, unsigned char *buf, long total)
{
    int fast = 0, err = 0;
    x->budget--;
    while (!x->exc && total >= HDR_LEN + ETH_HLEN) { /* once: break = Python's */
        unsigned char *eth = buf + HDR_LEN;
        uint32_t n = (uint32_t)total - HDR_LEN;
        if (eth[0] & 1)
            break;
        if (!mac_eq(eth + 6, x->mmac)) {
            int seen = mac_in(&x->sources, x->wire_macs, eth + 6, 1, &x->gil);
            if (seen < 0) {
                err = 1;
                break;
            }
            if (!seen)
                break;
        }
        const unsigned char *saddr, *daddr;
        Py_ssize_t alen = plain_ip(eth, n, &saddr, &daddr);
        if (!alen || (alen == 16 && saddr[0] == 0xFE && (saddr[1] & 0xC0) == 0x80))
            break;
        const dst_entry_t *e = dst_hit(&x->dsts, daddr, alen);
        if (!e) {
            gil_take(&x->gil);
            e = dst_fill(&x->dsts, x->table, daddr, alen);
            if (!e) {
                if (PyErr_Occurred())
                    err = 1;
                break;
            }
        }
        unsigned char saved[6];
        int to_master = mac_eq(eth, x->mmac);
        if (to_master) {
            memcpy(saved, eth, 6);
            memcpy(eth, e->mac, 6);
        }
        int r = deliver(&x->targets, e, buf, (uint32_t)total, x->dirty, &x->gil);
        if (r == 1 || r == 2) {
            fast = 1;
            x->delivered++;
        }
        if ((r == 0 || r == -1) && to_master)
            memcpy(eth, saved, 6);
        if (r < 0 || r == 2)
            err = 1;
        break;
    }
    if (err) /* a Python-level failure: keep it, Python takes this frame (unless delivered) and the rest */
        x->exc = take_exception(); /* (the GIL is held: taken for what failed) */
    if (fast)
        return 0;
    gil_take(&x->gil);
    /* Python may deliver to the rings C has open: write their indices back first */
    if (targets_close(&x->targets))
        return -1;
    long copies = hand_over(x->slow, &x->fb, buf, total);
    /* Python may have changed what the table says (a queue it broke, a guest gone down:
     * PortTable.invalidate empties the burst's table in place): look up again */
    dst_cache_clear(&x->dsts);
    if (copies < 0) /* Python's own path raised: stop, raise it */
        return -1;
    x->budget -= copies;
    return 0;
}

/* The recvmmsg source: batches of RX_BATCH into rx_stage. Returns the burst's status. */
static int rx_recvmmsg(rx_t *x, int fd, int *rerrno)
{
    for (int i = 0; i < RX_BATCH; i++) {
        rx_iov[i][0] = (struct iovec){rx_stage[i], VNET_HDR_LEN};
        rx_iov[i][1] = (struct iovec){rx_stage[i] + HDR_LEN, (size_t)x->fb.len - HDR_LEN}; /* as Python's recv */
    }
    while (x->budget > 0) {
        unsigned want = x->budget < RX_BATCH ? (unsigned)x->budget : RX_BATCH;
        for (unsigned i = 0; i < want; i++) {
            memset(&rx_msgs[i], 0, sizeof rx_msgs[i]);
            rx_msgs[i].msg_hdr.msg_iov = rx_iov[i];
            rx_msgs[i].msg_hdr.msg_iovlen = 2;
        }
        gil_let_go(&x->gil); /* only this thread's rx_stage is touched */
        int got = recvmmsg(fd, rx_msgs, want, MSG_DONTWAIT, NULL);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return ST_EMPTY;
            *rerrno = errno;
            return ST_READ_ERROR;
        }
        if (got == 0)
            return ST_EMPTY;
        for (int i = 0; i < got; i++) { /* a batch already read is finished even past the budget */
            uint32_t got_len = rx_msgs[i].msg_len;
            long total = -1; /* truncated */
            if (!(rx_msgs[i].msg_hdr.msg_flags & MSG_TRUNC) && got_len >= VNET_HDR_LEN)
                total = (long)got_len + (HDR_LEN - VNET_HDR_LEN);
            if (rx_frame(x, rx_stage[i], total)) {
                x->fatal = 1;
                return ST_BUDGET;
            }
        }
    }
    return ST_BUDGET;
}

/* The ring source: frame by frame where the kernel put them, each given back once handled.
 * A pending socket error ends the burst first, as recvmmsg reports it before any frame. */
static int rx_ring(rx_t *x, ring_t *r, int *rerrno)
{
    if ((*rerrno = ring_error(r)) != 0)
        return ST_READ_ERROR;
    while (x->budget > 0) {
        unsigned char *buf;
        long total;
        gil_frame(&x->gil); /* the ring is C memory; rx_frame takes the GIL when it must */
        int got = ring_next(r, rx_stage[0], (size_t)x->fb.len, &buf, &total);
        if (got < 0) {
            *rerrno = errno;
            ring_done(r);
            return ST_READ_ERROR;
        }
        if (got == 0)
            return ST_EMPTY;
        int bad = rx_frame(x, buf, total);
        ring_done(r);
        if (bad) {
            x->fatal = 1;
            return ST_BUDGET;
        }
    }
    return ST_BUDGET;
}

/* uplink_burst(source, buf, table, master_mac, wire_macs, budget, dirty, slow)
 *   reads frames from the uplink: ``source`` is its socket (recvmmsg, RX_BATCH at a
 *   time, each 10-byte virtio_net_hdr + frame, placed as the daemon's 12-byte-header
 *   buffers) or its RX ring (a tuple, see ring_t: frames handled where the kernel put
 *   them, one at a time, no system call while the ring holds frames), and delivers
 *   each straight into a guest's RX ring when, and only when, Python's
 *   l2 switch would say TO_SLAVE(target) and change nothing else: unicast
 *   destination MAC; source MAC the master's or one already in ``wire_macs`` (the
 *   port's ``saw_on_wire`` would add nothing); a plain IPv4/IPv6 frame
 *   (``plain_ip``), for IPv6 not from a link-local source (``saw_on_wire`` records
 *   those); destination address in ``table`` (up, enabled targets: the same table
 *   as forward_burst's); offloads the target took; its next RX chain one writable
 *   descriptor big enough. A destination MAC that is the master's becomes the
 *   target's (``to_guest``). Every other frame, in order, is copied to ``buf`` and
 *   given to ``slow(length)`` (-1 for a truncated one), Python's per-frame path,
 *   which returns the copies it flooded: each frame costs one of ``budget``, a
 *   flood its copies too; a recvmmsg batch already read is finished even past the
 *   budget. Both sources give the same frames, lengths and truncations.
 *   A Python-level failure on a frame (a bad table entry, ...) hands that frame and
 *   the rest of the burst to ``slow`` and ends it with ERROR. The RX rings C has
 *   open are written back (indices, ``walked``) before every call of ``slow``, which
 *   may deliver into them too, and opened again when next needed.
 * Returns (status, detail, frames_delivered): EMPTY (the socket is drained), BUDGET,
 * READ_ERROR (detail: errno) or ERROR (detail: the exception).
 */
static PyObject *uplink_burst(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "uplink_burst takes 8 arguments");
        return NULL;
    }
    rx_t x;
    memset(&x, 0, sizeof x);
    mac_cache_init(&x.sources);
    x.budget = PyLong_AsLong(args[5]);
    if (PyErr_Occurred())
        return NULL;
    x.table = args[2];
    x.wire_macs = args[4];
    x.dirty = args[6];
    x.slow = args[7];
    PyObject *master = args[3];
    if (!PyDict_Check(x.table) || !PyBytes_Check(master) || PyBytes_GET_SIZE(master) != 6 ||
        !PyAnySet_Check(x.wire_macs) || !PyAnySet_Check(x.dirty) || !PyCallable_Check(x.slow)) {
        PyErr_SetString(PyExc_TypeError, "uplink_burst: bad argument types");
        return NULL;
    }
    x.mmac = PyBytes_AS_STRING(master);
    ring_t ring;
    int is_ring = PyTuple_Check(args[0]), fd = -1;
    if (is_ring) {
        if (ring_open(&ring, args[0]))
            return NULL;
    } else {
        fd = (int)PyLong_AsLong(args[0]);
        if (PyErr_Occurred())
            return NULL;
    }
    if (PyObject_GetBuffer(args[1], &x.fb, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS)) {
        if (is_ring)
            ring_release(&ring);
        return NULL;
    }
    if (x.fb.len > SLOT_SIZE || x.fb.len < HDR_LEN + ETH_HLEN) {
        PyBuffer_Release(&x.fb);
        if (is_ring)
            ring_release(&ring);
        PyErr_SetString(PyExc_ValueError, "uplink_burst: buffer size out of range");
        return NULL;
    }
    int rerrno = 0;
    int status = is_ring ? rx_ring(&x, &ring, &rerrno) : rx_recvmmsg(&x, fd, &rerrno);
    gil_take(&x.gil);
    if (is_ring)
        ring_release(&ring);
    dst_cache_clear(&x.dsts);
    int closing = targets_close(&x.targets);
    PyBuffer_Release(&x.fb);
    if (x.fatal || closing) {
        Py_XDECREF(x.exc);
        return NULL;
    }
    if (x.exc)
        return Py_BuildValue("(iNl)", ST_ERROR, x.exc, x.delivered);
    return Py_BuildValue("(iil)", status, rerrno, x.delivered);
}

/* ring_recv(ring, buf) -> int: Python's ``recv`` on a ring (daemon/uplink.py): the next
 * frame copied to ``buf`` as the daemon's buffers hold it; its total length, 0 if there
 * is none, -1 for a truncated one; OSError for a read error or a pending socket error. */
static PyObject *ring_recv(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "ring_recv takes 2 arguments");
        return NULL;
    }
    ring_t ring;
    if (ring_open(&ring, args[0]))
        return NULL;
    Py_buffer fb;
    if (PyObject_GetBuffer(args[1], &fb, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS)) {
        ring_release(&ring);
        return NULL;
    }
    long total = 0;
    int got = -1;
    if (fb.len > SLOT_SIZE || fb.len < HDR_LEN + ETH_HLEN)
        PyErr_SetString(PyExc_ValueError, "ring_recv: buffer size out of range");
    else {
        unsigned char *buf;
        if ((errno = ring_error(&ring)) != 0)
            got = -1;
        else
            got = ring_next(&ring, rx_stage[0], (size_t)fb.len, &buf, &total);
        if (got < 0)
            PyErr_SetFromErrno(PyExc_OSError);
        else if (got > 0 && total > 0)
            memcpy(fb.buf, buf, (size_t)total);
        ring_done(&ring);
    }
    PyBuffer_Release(&fb);
    ring_release(&ring);
    if (got < 0)
        return NULL;
    return PyLong_FromLong(got ? total : 0);
}

/* ------------------------------------------------------------------------------------------
 * WorkerCore: a worker thread's gate, and the bursts it serves without Python.
 *
 * With worker threads (daemon/workers.py), every burst that went through Python needed
 * the GIL at least once, and handing the GIL from one worker to another (a futex wake
 * of a thread whose CPU may be halted) cost more than the burst: guest -> guest traffic
 * was slower with two workers than with one. A WorkerCore lets a worker serve the kicks
 * of the TX rings Python has *planned* (register) entirely here, without the GIL:
 *
 * - The gate (workers.py's rule: a worker runs Python only while it holds its gate; the
 *   main loop holds every gate whenever it runs) is this object's lock and turnstile,
 *   PyThread locks that C takes without the GIL: enter/leave for the worker, hold/let_go
 *   for the main loop, as workers.Gate.
 * - wait(timeout) is the worker's selector wait: it lets the gate and the GIL go, waits
 *   on the loop's epoll descriptor and, with the gate held again but still without the
 *   GIL, serves every ready kick descriptor that has a plan (serve). It returns to Python
 *   (the GIL and the gate taken) as soon as an event is left for Python (any other
 *   descriptor, a kick serve handed over), or the timeout ends.
 * - A plan is a snapshot of what Python would do with a kick of one device's TX ring:
 *   the rings and memory (queue_t, opened once and kept), the sender's MAC and owned
 *   addresses, the port's destination table and local MACs, the wire. It stays right
 *   only while no Python code of the port runs: so plans are made (register) just before
 *   the wait, by Python, and all of them are written back and dropped (drop) before any
 *   Python code runs again: when wait returns, and when the main loop takes the gate
 *   (hold). Their indices and counters go back into the Python objects then, so Python
 *   never sees a stale one. A plan dropped with chains waiting (``more``: no kick will
 *   come for them) that wait did not hand to Python puts its device into ``backlog``
 *   (the selector's ``more``), planned again by the next select.
 * - serve does what device.py's drain_tx and datapath.py's flush would do for frames the
 *   C accelerator takes anyway (forward_burst's conditions, the l2 way), and hands the
 *   kick to Python (the event is returned; its handler finds the counter read and drains
 *   the ring from where this stopped) at the first anything else: a chain or frame that
 *   is not the simple case (not taken: Python takes it again), a target whose TX ring has
 *   chains waiting and no plan (flush's rule: Python drains it before publishing its RX
 *   ring), an unreadable kick. A burst ends at its budget (a quarter of the ring at most,
 *   fastpath.plan_budget: ``more``), served in the wait's next round, or handed to Python
 *   when the wait ends first. It counts no drop: anything that would be dropped is
 *   Python's.
 * - While serve takes a TX ring's chains, a ring without EVENT_IDX asks for no kicks
 *   (plan_quiet, as device.py's _drain and vhost-net's handle_tx): a DPDK driver checks
 *   used.flags after every burst and would otherwise kick (a system call) for each. It
 *   asks for kicks again when serve empties it, when serve hands the rest to Python, and,
 *   cut by its budget, when the wait ends or the plan is dropped (not between the
 *   wait's rounds: the next round serves it anyway). With EVENT_IDX the driver kicks
 *   once per avail_event written already.
 * - Busy polling (poll_us, ``[daemon] busy_poll_us``; vhost-net's busyloop_timeout): for
 *   poll_us after the last chain it took (in this wait or an earlier one: Python's timers
 *   end waits), the wait does not sleep: it looks at the
 *   planned TX rings (and, without blocking, at epoll) again and again, and a ring it
 *   emptied asks the driver for no kicks meanwhile (plan_quiet). A driver that polls its
 *   own rings (DPDK) then makes no system call per burst, and the daemon no wake-up. The
 *   rings ask for kicks again (plan_arm; chains found then are served or handed over)
 *   before the wait sleeps and before a plan is dropped: no ring is left quiet while
 *   Python, which serves a ring only when it is kicked, is in charge of it.
 * - Adaptive polling (poll_max_us, ``[daemon] adaptive_poll_us``, used while poll_us is 0;
 *   QEMU's IOThread poll-max-ns and adjust_polling_time, per ring as QEMU's per-handler
 *   AioPolledEvent): each TX ring has its own window (pstate_t, kept across plans by its
 *   kick descriptor), and the wait polls the rings whose window is open. At the end of a
 *   round that took a ring's chains, the gap between that round's start (the chains were
 *   found) and the end of the round that took its chains before decides: within the
 *   window, the window stays; in between, it doubles (from POLL_GROW_FIRST_US), up to
 *   poll_max_us; longer than poll_max_us, polling would not have found them, and the
 *   window is halved (POLL_SHRINK; below POLL_GROW_FIRST_US: 0, sleep). Halved, not shut
 *   (QEMU's default poll-shrink, 0, shuts it): a gap measured after a sleep holds the
 *   wake-up, and the driver's time waiting for it, so one long gap shut windows that then
 *   stayed shut, the guests waiting for the daemon's wake-ups and the daemon for the
 *   guests: a 256-entry 5tswap ping-pong ran at 1.5-2.0 Mpps instead of 5.2-5.5, for
 *   seconds at a time (bench/README.md). A ring whose bursts keep coming less than
 *   poll_max_us apart is polled for (no kick, no wake-up); one whose bursts come further
 *   apart is within a few bursts never polled for, however many such rings a loop
 *   serves; a ring gone quiet costs at most one window. A burst its budget cut, served
 *   over several rounds, is one burst (no gap: ``cut``). The time Python runs between
 *   two waits is not the guests': chains taken in a wait's last round count as taken at
 *   the next wait's start (``carry``; for poll_us's window too).
 * ------------------------------------------------------------------------------------------ */
#define CORE_PLANS 64
#define CORE_SLOTS 256
#define CORE_EVENTS 256
#define CORE_QUIET 1024 /* kick descriptors whose handler only reads them (RX rings') */
#define PLAN_DSTS 64
#define PLAN_OWNED 16
#define PLAN_RINGS 8
#define PLAN_LOCAL 64
#define CORE_POLL_MAX_US 1000000 /* config.py's MAX_BUSY_POLL_US */
#define POLL_GROW_FIRST_US 4      /* adaptive polling's first window (QEMU's: 4 us) */
#define POLL_SHRINK 2             /* ... divided by this after a gap longer than the most (QEMU's poll-shrink) */
#define CORE_PSTATES 256          /* adaptive polling: the rings whose window is kept */
#define PSTATE_PROBES 8           /* ... looked for this far from its hash */

typedef struct {
    PyObject *obj;    /* the SplitQueue (strong) */
    queue_t q;        /* queue_open_publish'd */
    int rx;           /* an RX ring of a target: published by serve */
    int call;         /* RX: its call descriptor, or -1 */
    int touched;      /* RX: frames pushed since its last publish */
    long call_failed; /* RX: interrupts that could not be sent */
    long rx_full;     /* RX: frames dropped, the ring empty (RX_RING_FULL) */
    PyObject *device; /* RX: the target's NetDevice (strong) */
    PyObject *dirty;  /* RX: its port's dirty set (strong) */
    PyObject *drops;  /* RX: its drop counters (strong) */
    int ntx;          /* RX: its device's started TX rings (slots): flush's rule */
    int tx[PLAN_RINGS];
} qslot_t;

typedef struct {
    int slot;
    Py_buffer counters; /* QueuePair.fast_rx */
} pring_t;

typedef struct {
    Py_ssize_t alen;
    unsigned char addr[16];
    unsigned char mac[6];
    long caps;
    int nrings, ntx, nheld;
    pring_t rings[PLAN_RINGS];
    int tx[PLAN_RINGS]; /* the target's started TX rings (slots) */
} pdst_t;

/* Adaptive polling's state of one TX ring, kept across its plans (see the theory above). */
typedef struct {
    unsigned key;  /* its kick descriptor + 1; 0: never used */
    double window; /* seconds; 0: the wait sleeps for it */
    double last;   /* the end of the round that last took its chains (CLOCK_MONOTONIC, seconds) */
} pstate_t;

typedef struct {
    int kick, tx, call; /* kick descriptor, TX ring's slot, its call descriptor (-1) */
    long budget;
    unsigned char mac[6];
    int nowned, ndst, nlocal;
    struct {
        Py_ssize_t len;
        unsigned char a[16];
    } owned[PLAN_OWNED];
    pdst_t *dst;
    unsigned char (*local)[6]; /* the port's by_mac (with a wire) */
    int wire_fd;               /* -1: no wire */
    unsigned char master_mac[6];
    long max_frame;
    PyObject *dev, *pair, *dp, *drops; /* strong: counters go back to them */
    Py_buffer buf;                     /* the device's frame buffer */
    int has_buf;
    long long packets, bytes, kicks; /* kicks: served here (NetDevice.core_kicks) */
    long call_failed, wire_sent, wire_failed;
    int more;                /* the budget ended the last burst: chains are waiting */
    int quiet;               /* its ring asks for no kicks: being served, cut by its budget, or polled */
    int polling;             /* the wait polls its ring now: serve_tx leaves it quiet once emptied */
    int took;                /* serve_tx took chains in this round */
    int cut;                 /* this round goes on with a burst its budget cut: no gap to go by */
    pstate_t *ps;            /* its adaptive polling state (c->pstates) */
    unsigned long long drained; /* the flush (c->flushes) that drained it last */
    unsigned long long round; /* the wait round that served it last */
} plan_t;

typedef struct {
    PyObject_HEAD
    PyThread_type_lock lock, turnstile;
    int epfd;
    int nplans, nslots;
    plan_t plans[CORE_PLANS];
    qslot_t slots[CORE_SLOTS];
    unsigned long long served, handed; /* kicks served here, kicks handed to Python */
    unsigned long long holds;          /* times the main loop took the gate */
    unsigned long long round;          /* wait rounds */
    unsigned long long flushes;        /* serve's flushes */
    int nquiet;
    int quiet[CORE_QUIET]; /* watch_quiet: read here, never handed to Python unless unreadable */
    PyObject *k_call_failed, *k_send_failed, *k_rx_full; /* DropReason members, the drops' keys */
    PyObject *backlog; /* a set, or NULL: the devices of plans dropped with chains waiting (``more``) */
    long poll_us;      /* busy_poll: how long the wait polls planned rings after the last chain */
    long poll_max_us;  /* adaptive polling (poll_us 0): the longest window */
    int took;          /* serve_tx took a chain in this round */
    int carry;         /* the last wait's last round took chains: they count as taken at the next wait's start */
    double last_chain; /* the end of the last round that took a chain (CLOCK_MONOTONIC, seconds) */
    pstate_t pstates[CORE_PSTATES]; /* adaptive polling, by kick descriptor (open addressing) */
    pstate_t spare;                 /* ... for a ring that found no entry: never polled for */
} core_t;

/* -- the gate (no GIL needed) -- */
static void gate_enter(core_t *c)
{
    PyThread_acquire_lock(c->turnstile, WAIT_LOCK);
    PyThread_release_lock(c->turnstile);
    PyThread_acquire_lock(c->lock, WAIT_LOCK);
}

static void gate_leave(core_t *c) { PyThread_release_lock(c->lock); }

/* -- plans -- */
/* Add n to obj.attr (``attr``), or to obj[key] (``key``): a counter that goes back to Python. */
static int number_add(PyObject *obj, const char *attr, PyObject *key, long long n)
{
    if (!n)
        return 0;
    PyObject *v = attr ? PyObject_GetAttrString(obj, attr) : PyObject_GetItem(obj, key);
    if (!v)
        return -1;
    PyObject *d = PyLong_FromLongLong(n), *sum = d ? PyNumber_Add(v, d) : NULL;
    Py_DECREF(v);
    Py_XDECREF(d);
    int rc = !sum ? -1 : attr ? PyObject_SetAttrString(obj, attr, sum) : PyObject_SetItem(obj, key, sum);
    Py_XDECREF(sum);
    return rc;
}

static int counter_add(PyObject *obj, const char *attr, long long n) { return number_add(obj, attr, NULL, n); }

static int drop_add(PyObject *drops, PyObject *key, long n) { return number_add(drops, NULL, key, n); }

/* Release what a plan holds (a registered one, or one register gave up on half made). */
static void plan_release(plan_t *p)
{
    if (p->dst)
        for (int d = 0; d < p->ndst; d++)
            for (int r = 0; r < p->dst[d].nheld; r++)
                PyBuffer_Release(&p->dst[d].rings[r].counters);
    PyMem_Free(p->dst);
    PyMem_Free(p->local);
    if (p->has_buf)
        PyBuffer_Release(&p->buf);
    Py_XDECREF(p->dev);
    Py_XDECREF(p->pair);
    Py_XDECREF(p->dp);
    Py_XDECREF(p->drops);
}

/* One step of core_drop: on failure keep the first exception aside (the next steps must
 * not run with one set) and go on. */
#define DROP_STEP(expr)                                       \
    do {                                                      \
        if (expr) {                                           \
            rc = -1;                                          \
            if (!etype)                                       \
                PyErr_Fetch(&etype, &evalue, &etb);           \
            else                                              \
                PyErr_Clear();                                \
        }                                                     \
    } while (0)

/* While serve_tx takes a plan's TX ring's chains (without EVENT_IDX), and while the wait
 * polls it (busy polling), the ring asks the driver for no kicks (virtqueue.py's
 * suppress_kicks: used.flags NO_NOTIFY; with EVENT_IDX, avail_event one behind the chains
 * taken, so a kick comes after 65535 more), which saves the driver a system call per
 * burst and, polling, the daemon a wake-up. plan_arm asks for kicks again (want_kick)
 * when the ring is empty, before the wait sleeps, when the rest is Python's, or the plan
 * is dropped: how many chains wait. */
static void plan_quiet(core_t *c, plan_t *p)
{
    queue_t *q = &c->slots[p->tx].q;
    if (q->event_idx)
        __atomic_store_n((uint16_t *)q->used.buf + 2 + 4 * (size_t)q->num, (uint16_t)(q->last_avail - 1),
                         __ATOMIC_RELAXED);
    else
        __atomic_store_n((uint16_t *)q->used.buf, 1, __ATOMIC_RELAXED); /* VRING_USED_F_NO_NOTIFY */
    p->quiet = 1;
}

static uint32_t plan_arm(core_t *c, plan_t *p)
{
    p->quiet = 0;
    return queue_want_kick(&c->slots[p->tx].q);
}

static int core_drop(core_t *c)
{
    int rc = 0;
    PyObject *etype = NULL, *evalue = NULL, *etb = NULL;
    for (int i = 0; i < c->nplans; i++) {
        plan_t *p = &c->plans[i];
        if (p->quiet && plan_arm(c, p)) /* Python serves it by its kicks from now on */
            p->more = 1;
        /* chains waiting and no kick to come (the ring is not re-armed): whoever drops the
         * plan (the main loop's hold, mid-wait) must leave them to the next select */
        if (p->more && c->backlog)
            DROP_STEP(PySet_Add(c->backlog, p->dev));
        DROP_STEP(counter_add(p->dev, "tx_packets", p->packets));
        DROP_STEP(counter_add(p->dev, "tx_bytes", p->bytes));
        DROP_STEP(counter_add(p->dev, "core_kicks", p->kicks));
        DROP_STEP(counter_add(p->pair, "tx_packets", p->packets));
        DROP_STEP(counter_add(p->dp, "uplink_tx", p->wire_sent));
        DROP_STEP(drop_add(p->drops, c->k_call_failed, p->call_failed));
        DROP_STEP(drop_add(p->drops, c->k_send_failed, p->wire_failed));
        plan_release(p);
    }
    c->nplans = 0;
    for (int i = 0; i < c->nslots; i++) {
        qslot_t *s = &c->slots[i];
        if (s->touched && s->dirty) /* flush publishes it */
            DROP_STEP(PySet_Add(s->dirty, s->device));
        if (s->drops) {
            DROP_STEP(drop_add(s->drops, c->k_call_failed, s->call_failed));
            DROP_STEP(drop_add(s->drops, c->k_rx_full, s->rx_full));
        }
        DROP_STEP(queue_close(&s->q));
        Py_XDECREF(s->obj);
        Py_XDECREF(s->device);
        Py_XDECREF(s->dirty);
        Py_XDECREF(s->drops);
    }
    c->nslots = 0;
    if (etype)
        PyErr_Restore(etype, evalue, etb);
    return rc;
}

/* The slot of the SplitQueue ``obj``, opened on first use (with the GIL): -1 with an exception. */
static int core_slot(core_t *c, PyObject *obj)
{
    for (int i = 0; i < c->nslots; i++)
        if (c->slots[i].obj == obj)
            return i;
    if (c->nslots == CORE_SLOTS) {
        PyErr_SetString(PyExc_OverflowError, "WorkerCore: too many rings");
        return -1;
    }
    qslot_t *s = &c->slots[c->nslots];
    memset(s, 0, sizeof *s);
    if (queue_open_publish(&s->q, obj))
        return -1;
    if (s->q.has_log) { /* a migration's dirty log: Python's (no plan while one is on) */
        queue_release(&s->q);
        PyErr_SetString(PyExc_ValueError, "WorkerCore: a ring logs its writes");
        return -1;
    }
    Py_INCREF(obj);
    s->obj = obj;
    s->call = -1;
    return c->nslots++;
}

static int bytes_of(PyObject *o, Py_ssize_t want, unsigned char *out)
{
    if (!PyBytes_Check(o) || (want && PyBytes_GET_SIZE(o) != want)) {
        PyErr_SetString(PyExc_TypeError, "WorkerCore: bad bytes argument");
        return -1;
    }
    memcpy(out, PyBytes_AS_STRING(o), (size_t)PyBytes_GET_SIZE(o));
    return 0;
}

static plan_t *core_plan(core_t *c, int fd);

/* The adaptive polling state of the ring kicked by ``kick``: kept from its last plan, or
 * new (a descriptor reused by another ring inherits a window, which its long gaps
 * halve). It lies within PSTATE_PROBES entries of its hash; none free there, the entry of
 * a ring without a plan that took chains longest ago is taken over; all with plans, the
 * ring gets c->spare, which never opens a window (bounded work at any number of rings). */
static pstate_t *core_pstate(core_t *c, int kick)
{
    unsigned h = (unsigned)kick % CORE_PSTATES;
    pstate_t *victim = NULL;
    for (unsigned i = 0; i < PSTATE_PROBES; i++) {
        pstate_t *ps = &c->pstates[(h + i) % CORE_PSTATES];
        if (ps->key == (unsigned)kick + 1)
            return ps;
        if (ps->key == 0) {
            victim = ps;
            break;
        }
        if ((!victim || ps->last < victim->last) && !core_plan(c, (int)(ps->key - 1)))
            victim = ps;
    }
    if (!victim)
        victim = &c->spare;
    *victim = (pstate_t){(unsigned)kick + 1, 0, 0};
    return victim;
}

/* register(kick, txq, call, buf, mac, owned, dsts, wire, dev, pair, dp, budget, more) -> None
 *   more: chains are waiting (a drain's budget ended): served in the first round, kick or not.
 *   dsts: ((addr, mac, caps, ((rxq, counters, call, device, dirty, drops), ...), (txq, ...)), ...)
 *   wire: None or (fd, master_mac, local_macs, max_frame).
 * On an exception nothing of the plan is kept (its rings may stay open until drop). */
static PyObject *core_register(core_t *c, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 13) {
        PyErr_SetString(PyExc_TypeError, "register takes 13 arguments");
        return NULL;
    }
    if (c->nplans == CORE_PLANS) {
        PyErr_SetString(PyExc_OverflowError, "WorkerCore: too many plans");
        return NULL;
    }
    int kick;
    if (fd_arg(args[0], &kick))
        return NULL;
    if (kick < 0) {
        PyErr_SetString(PyExc_ValueError, "WorkerCore: the kick descriptor is not a descriptor");
        return NULL;
    }
    for (int i = 0; i < c->nplans; i++)
        if (c->plans[i].kick == kick) {
            PyErr_SetString(PyExc_ValueError, "WorkerCore: the kick descriptor has a plan");
            return NULL;
        }
    plan_t p;
    memset(&p, 0, sizeof p);
    p.kick = kick;
    p.ps = core_pstate(c, kick);
    p.wire_fd = -1;
    p.call = -1;
    if ((args[2] != Py_None && fd_arg(args[2], &p.call)) || bytes_of(args[4], 6, p.mac))
        return NULL;
    p.budget = PyLong_AsLong(args[11]);
    if (p.budget == -1 && PyErr_Occurred())
        return NULL;
    if ((p.more = PyObject_IsTrue(args[12])) < 0)
        return NULL;
    if ((p.tx = core_slot(c, args[1])) < 0)
        return NULL;
    PyObject *owned = args[5], *dsts = args[6], *wire = args[7];
    if (!PyAnySet_Check(owned) || PySet_GET_SIZE(owned) > PLAN_OWNED || !PyTuple_Check(dsts) ||
        PyTuple_GET_SIZE(dsts) > PLAN_DSTS) {
        PyErr_SetString(PyExc_ValueError, "WorkerCore: addresses or destinations beyond a plan's");
        return NULL;
    }
    Py_ssize_t pos = 0;
    PyObject *item;
    Py_hash_t hash;
    while (_PySet_NextEntry(owned, &pos, &item, &hash)) {
        if (!PyBytes_Check(item) || (PyBytes_GET_SIZE(item) != 4 && PyBytes_GET_SIZE(item) != 16))
            continue; /* never a frame's address */
        p.owned[p.nowned].len = PyBytes_GET_SIZE(item);
        memcpy(p.owned[p.nowned].a, PyBytes_AS_STRING(item), (size_t)PyBytes_GET_SIZE(item));
        p.nowned++;
    }
    if (wire != Py_None) {
        PyObject *local;
        if (!PyTuple_Check(wire) || PyTuple_GET_SIZE(wire) != 4 || fd_arg(PyTuple_GET_ITEM(wire, 0), &p.wire_fd) ||
            bytes_of(PyTuple_GET_ITEM(wire, 1), 6, p.master_mac) ||
            !PyTuple_Check(local = PyTuple_GET_ITEM(wire, 2)) || PyTuple_GET_SIZE(local) > PLAN_LOCAL) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "WorkerCore: bad wire");
            return NULL;
        }
        p.max_frame = PyLong_AsLong(PyTuple_GET_ITEM(wire, 3));
        if (p.max_frame == -1 && PyErr_Occurred())
            return NULL;
        p.nlocal = (int)PyTuple_GET_SIZE(local);
        p.local = PyMem_Calloc((size_t)p.nlocal + 1, 6);
        if (!p.local)
            return PyErr_NoMemory();
        for (int i = 0; i < p.nlocal; i++)
            if (bytes_of(PyTuple_GET_ITEM(local, i), 6, p.local[i]))
                goto fail;
    }
    p.ndst = (int)PyTuple_GET_SIZE(dsts);
    p.dst = PyMem_Calloc((size_t)p.ndst + 1, sizeof *p.dst);
    if (!p.dst) {
        PyErr_NoMemory();
        goto fail;
    }
    for (int i = 0; i < p.ndst; i++) {
        PyObject *e = PyTuple_GET_ITEM(dsts, i), *rings, *txqs, *addr;
        pdst_t *d = &p.dst[i];
        if (!PyTuple_Check(e) || PyTuple_GET_SIZE(e) != 5 || !PyBytes_Check(addr = PyTuple_GET_ITEM(e, 0)) ||
            (PyBytes_GET_SIZE(addr) != 4 && PyBytes_GET_SIZE(addr) != 16) || !PyTuple_Check(rings = PyTuple_GET_ITEM(e, 3)) ||
            PyTuple_GET_SIZE(rings) < 1 || PyTuple_GET_SIZE(rings) > PLAN_RINGS ||
            !PyTuple_Check(txqs = PyTuple_GET_ITEM(e, 4)) || PyTuple_GET_SIZE(txqs) > PLAN_RINGS) {
            PyErr_SetString(PyExc_ValueError, "WorkerCore: bad destination");
            goto fail;
        }
        d->alen = PyBytes_GET_SIZE(addr);
        memcpy(d->addr, PyBytes_AS_STRING(addr), (size_t)d->alen);
        if (bytes_of(PyTuple_GET_ITEM(e, 1), 6, d->mac))
            goto fail;
        d->caps = PyLong_AsLong(PyTuple_GET_ITEM(e, 2));
        if (d->caps == -1 && PyErr_Occurred())
            goto fail;
        d->nrings = (int)PyTuple_GET_SIZE(rings);
        for (int r = 0; r < d->nrings; r++) {
            PyObject *ring = PyTuple_GET_ITEM(rings, r);
            if (!PyTuple_Check(ring) || PyTuple_GET_SIZE(ring) != 6) {
                PyErr_SetString(PyExc_ValueError, "WorkerCore: bad ring");
                goto fail;
            }
            int slot = core_slot(c, PyTuple_GET_ITEM(ring, 0));
            if (slot < 0)
                goto fail;
            qslot_t *s = &c->slots[slot];
            if (!s->rx) {
                if (PyTuple_GET_ITEM(ring, 2) != Py_None && fd_arg(PyTuple_GET_ITEM(ring, 2), &s->call))
                    goto fail;
                s->rx = 1;
                s->device = Py_NewRef(PyTuple_GET_ITEM(ring, 3));
                s->dirty = Py_NewRef(PyTuple_GET_ITEM(ring, 4));
                s->drops = Py_NewRef(PyTuple_GET_ITEM(ring, 5));
                if (!PyAnySet_Check(s->dirty)) {
                    PyErr_SetString(PyExc_TypeError, "WorkerCore: bad dirty set");
                    goto fail;
                }
            }
            d->rings[r].slot = slot;
            if (PyObject_GetBuffer(PyTuple_GET_ITEM(ring, 1), &d->rings[r].counters,
                                   PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS))
                goto fail;
            d->nheld++;
            if (d->rings[r].counters.len < 16) {
                PyErr_SetString(PyExc_ValueError, "WorkerCore: counters buffer too small");
                goto fail;
            }
        }
        d->ntx = (int)PyTuple_GET_SIZE(txqs);
        for (int t = 0; t < d->ntx; t++)
            if ((d->tx[t] = core_slot(c, PyTuple_GET_ITEM(txqs, t))) < 0)
                goto fail;
        for (int r = 0; r < d->nrings; r++) { /* every ring of the target knows its TX rings */
            qslot_t *s = &c->slots[d->rings[r].slot];
            s->ntx = d->ntx;
            memcpy(s->tx, d->tx, sizeof d->tx);
        }
    }
    if (PyObject_GetBuffer(args[3], &p.buf, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS))
        goto fail;
    p.has_buf = 1;
    p.dev = Py_NewRef(args[8]);
    p.pair = Py_NewRef(args[9]);
    p.dp = Py_NewRef(args[10]);
    p.drops = PyObject_GetAttrString(p.dev, "drops");
    if (!p.drops)
        goto fail;
    c->plans[c->nplans++] = p;
    Py_RETURN_NONE;
fail:
    plan_release(&p);
    return NULL;
}

/* -- serving a kick, without the GIL -- */
static int ring_waiting(const queue_t *q) { return ring16(&q->avail, 1) != q->last_avail; }

static int plan_local(const plan_t *p, const unsigned char *mac)
{
    for (int i = 0; i < p->nlocal; i++)
        if (mac_eq(p->local[i], mac))
            return 1;
    return 0;
}

/* One frame (buf[:len], its chain not yet taken): 1 when it went where forward_burst would
 * send it (a guest's RX ring, or staged for the wire) or was dropped as Python drops it
 * (RX_RING_FULL: the target's ring has no buffer at all), 0 when it is Python's. */
static int plan_frame(core_t *c, plan_t *p, wire_t *w, unsigned char *buf, uint32_t len)
{
    if (len < HDR_LEN + ETH_HLEN)
        return 0;
    unsigned char *eth = buf + HDR_LEN;
    uint32_t n = len - HDR_LEN;
    if ((eth[0] & 1) || !mac_eq(eth + 6, p->mac))
        return 0;
    const unsigned char *saddr, *daddr;
    Py_ssize_t alen = plain_ip(eth, n, &saddr, &daddr);
    if (!alen)
        return 0;
    int owned = 0;
    for (int i = 0; i < p->nowned && !owned; i++)
        owned = p->owned[i].len == alen && addr_eq(p->owned[i].a, saddr, alen);
    if (!owned)
        return 0;
    if (p->wire_fd >= 0 && !mac_eq(eth, p->master_mac) && !plan_local(p, eth)) {
        if ((long)len > p->max_frame && !buf[1])
            return 0; /* MTU_EXCEEDED: Python's */
        memcpy(stage[w->n], buf, len);
        memcpy(stage[w->n] + HDR_LEN + 6, p->master_mac, 6);
        wire_stage(w, len);
        return 1;
    }
    const pdst_t *d = NULL;
    for (int i = 0; i < p->ndst && !d; i++)
        if (p->dst[i].alen == alen && addr_eq(p->dst[i].addr, daddr, alen))
            d = &p->dst[i];
    if (!d || !mac_eq(eth, d->mac))
        return 0;
    if ((buf[0] | buf[1]) && !offload_ok(buf[0], buf[1], d->caps))
        return 0;
    const pring_t *ring = &d->rings[d->nrings > 1 ? flow_hash(eth, n) % (uint32_t)d->nrings : 0];
    qslot_t *s = &c->slots[ring->slot];
    buf[10] = 1; /* num_buffers */
    buf[11] = 0;
    if (!rx_put(&s->q, (const char *)buf, len)) {
        if (ring16(&s->q.avail, 1) != s->q.last_avail)
            return 0; /* a chain rx_put does not take: Python's */
        s->rx_full++;  /* no buffer at all: dropped, as device.py's deliver (RX_RING_FULL) */
        return 1;
    }
    uint64_t *cnt = ring->counters.buf;
    cnt[0] += 1;
    cnt[1] += n;
    s->touched = 1;
    return 1;
}

/* One burst of plan p's TX ring, device.py's _drain (gate held, no GIL): 0 when done (the
 * ring empty, published and asking for kicks, or the burst budget spent: ``more``, served
 * again in the next round), 1 when the rest is Python's. The targets are left touched. */
static int serve_tx(core_t *c, plan_t *p)
{
    p->round = c->round;
    p->more = 0;
    queue_t *q = &c->slots[p->tx].q;
    unsigned char *buf = p->buf.buf;
    wire_t w = {p->wire_fd, NULL, NULL, 0, 0, 0, 0};
    long frames = 0;
    int rc = 1;
    if (!q->event_idx && !p->quiet && ring_waiting(q))
        plan_quiet(c, p); /* no kick per burst while this one runs (device.py's _drain) */
    uint16_t avail_idx = ring16(&q->avail, 1);
    for (;;) {
        /* the index is read again only once the chains it gave are taken (as rx_put) */
        uint32_t pending = (uint16_t)(avail_idx - q->last_avail);
        if (pending == 0) {
            avail_idx = ring16(&q->avail, 1);
            pending = (uint16_t)(avail_idx - q->last_avail);
        }
        if (pending == 0) {
            if (w.n)
                wire_flush(&w); /* before the chains are given back: as forward_burst, all sent first */
            p->call_failed += queue_publish(q, p->call);
            if (p->polling) { /* the wait looks again soon: no kick wanted (plan_quiet) */
                if (!p->quiet)
                    plan_quiet(c, p);
                rc = 0;
                break;
            }
            pending = plan_arm(c, p);
            if (pending == 0) {
                rc = 0;
                break;
            }
            if (!q->event_idx)
                plan_quiet(c, p); /* more came: quiet again while they are taken */
            avail_idx = ring16(&q->avail, 1);
        }
        if (pending > q->num)
            break;
        if (frames >= p->budget) { /* as device.py's schedule_drain: the rest in the next round */
            if (w.n)
                wire_flush(&w);
            p->call_failed += queue_publish(q, p->call);
            p->more = 1;
            rc = 0;
            break;
        }
        __asm__ __volatile__("" ::: "memory");
        uint32_t head = ring16(&q->avail, 2 + q->last_avail % q->num);
        if (head >= q->num)
            break;
        desc_t d;
        read_desc(q, head, &d);
        const char *src = d.flags ? NULL : gpa(q, d.addr, d.len);
        if (!src || d.len > (uint64_t)p->buf.len || d.len > SLOT_SIZE)
            break;
        prefetch_chain(q, avail_idx, 1, 0);
        memcpy(buf, src, d.len);
        if (!plan_frame(c, p, &w, buf, d.len))
            break;
        q->last_avail++;
        q->walked++;
        push_used(q, head, 0);
        frames++;
        p->packets++;
        p->bytes += d.len - HDR_LEN;
    }
    if (w.n)
        wire_flush(&w);
    if (rc && p->quiet && !p->polling)
        plan_arm(c, p); /* Python drains the rest (device.py's _drain asks for no kicks itself) */
    p->took |= frames > 0;
    c->took |= frames > 0;
    p->wire_sent += w.sent;
    p->wire_failed += w.failed;
    return rc; /* 1: the sender's used chains and the targets are Python's to publish */
}

static plan_t *core_plan_of_tx(core_t *c, int slot)
{
    for (int i = 0; i < c->nplans; i++)
        if (c->plans[i].tx == slot)
            return &c->plans[i];
    return NULL;
}

/* Serve a kick of plan p (its counter read first if ``kicked``): its burst, then
 * datapath.py's flush: every RX ring frames went into is published, after one burst of
 * its device's TX ring if chains wait there (a run-to-completion driver answers at once;
 * each device drained once per flush, as there). 0 when all is done, 1 when the rest is
 * Python's: a burst handed back, or a ring to drain that has no plan (the touched rings
 * go to their port's dirty set when the plans are written back). */
static int core_serve(core_t *c, plan_t *p, int kicked)
{
    if (kicked && !kick_read(p->kick))
        return 1;
    if (serve_tx(c, p))
        return 1;
    unsigned long long flush = ++c->flushes;
    for (int i = 0; i < c->nslots; i++) {
        qslot_t *s = &c->slots[i];
        if (!s->touched)
            continue;
        for (int t = 0; t < s->ntx; t++) {
            if (!ring_waiting(&c->slots[s->tx[t]].q))
                continue;
            plan_t *tp = core_plan_of_tx(c, s->tx[t]);
            if (!tp)
                return 1;
            if (tp->drained == flush)
                continue;
            tp->drained = flush;
            if (serve_tx(c, tp))
                return 1;
            i = -1; /* it may have touched rings already passed: look again from the start */
            break;
        }
        if (i < 0)
            continue;
        s->call_failed += queue_publish(&s->q, s->call);
        s->touched = 0;
    }
    return 0;
}

static int core_quiet(core_t *c, int fd)
{
    for (int i = 0; i < c->nquiet; i++)
        if (c->quiet[i] == fd)
            return 1;
    return 0;
}

static plan_t *core_plan(core_t *c, int fd)
{
    for (int i = 0; i < c->nplans; i++)
        if (c->plans[i].kick == fd)
            return &c->plans[i];
    return NULL;
}

/* Whether the wait hands ``fd`` to Python already (its handler drains the ring). */
static int core_handed(const struct epoll_event *evs, int nout, int fd)
{
    for (int i = 0; i < nout; i++)
        if (evs[i].data.fd == fd)
            return 1;
    return 0;
}

/* CLOCK_MONOTONIC now, in seconds. */
static double mono_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* Adaptive polling: a ring's chains were found ``gap`` seconds after the ones before were
 * taken (see the theory). */
static void poll_adapt(core_t *c, pstate_t *ps, double gap)
{
    double most = (double)c->poll_max_us / 1e6;
    if (c->poll_us || gap <= ps->window || ps == &c->spare)
        return; /* a fixed window, or this one found them */
    double first = POLL_GROW_FIRST_US / 1e6;
    if (gap > most) { /* polling would not have found them: a smaller window, down to none */
        double shrunk = ps->window / POLL_SHRINK;
        ps->window = shrunk < first ? 0 : shrunk;
        return;
    }
    double grown = ps->window > 0 ? 2 * ps->window : first;
    ps->window = grown < most ? grown : most;
}

/* wait(timeout) -> [(fd, events), ...]: see the theory above. Called by the worker with
 * its gate and the GIL; returns with both, every plan written back and dropped. */
static PyObject *core_wait(core_t *c, PyObject *arg)
{
    double timeout = -1;
    if (arg != Py_None) {
        timeout = PyFloat_AsDouble(arg);
        if (timeout == -1 && PyErr_Occurred())
            return NULL;
        if (timeout < 0)
            timeout = 0;
    }
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    struct epoll_event evs[CORE_EVENTS];
    int nout = 0, err = 0, took_last = 0;
    PyThreadState *ts = PyEval_SaveThread();
    for (;;) {
        int ms = -1, more = 0;
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        double elapsed = (double)(now.tv_sec - start.tv_sec) + (double)(now.tv_nsec - start.tv_nsec) / 1e9;
        if (timeout >= 0) {
            double left = timeout - elapsed;
            ms = left <= 0 ? 0 : (int)(left * 1000 + 0.999);
            if (ms > 24 * 3600 * 1000)
                ms = 24 * 3600 * 1000;
        }
        double mono = (double)now.tv_sec + (double)now.tv_nsec / 1e9;
        int polling = 0;
        if (c->carry) { /* Python's time since the last wait is not the guests' */
            for (int i = 0; i < c->nplans; i++)
                if (c->plans[i].ps->last == c->last_chain)
                    c->plans[i].ps->last = mono;
            c->last_chain = mono;
            c->carry = 0;
        }
        for (int i = 0; i < c->nplans; i++) {
            plan_t *p = &c->plans[i];
            /* busy polling: every ring, for poll_us after the last chain; adaptive: its window */
            p->polling = ms != 0 && (c->poll_us ? mono < c->last_chain + (double)c->poll_us / 1e6
                                                : mono < p->ps->last + p->ps->window);
            if (p->polling && !p->quiet) /* polling: its chains are found without a kick */
                plan_quiet(c, p);
            else if (!p->polling && p->quiet && !p->more && plan_arm(c, p)) /* about to sleep: kicks again */
                p->more = 1;
            more |= p->more;
            polling |= p->polling;
        }
        unsigned long long holds = c->holds;
        gate_leave(c); /* the main loop may run here (plans dropped) */
        int n = epoll_wait(c->epfd, evs, CORE_EVENTS, more || polling ? 0 : ms);
        if (n < 0 && errno != EINTR)
            err = errno;
        gate_enter(c);
        took_last = 0;
        double found = mono_now(); /* the round's start */
        if (err)
            break;
        if (c->holds != holds)
            break; /* the main loop ran: these events may be of registrations it replaced
                    * (epoll is level-triggered: current ones are reported again) */
        c->round++;
        for (int i = 0; i < n; i++) {
            plan_t *p = core_plan(c, evs[i].data.fd);
            if (p && evs[i].events == EPOLLIN && core_serve(c, p, 1) == 0) {
                c->served++;
                p->kicks++;
                continue;
            }
            if (p) {
                p->more = 0; /* Python drains it */
                c->handed++;
            } else if (evs[i].events == EPOLLIN && core_quiet(c, evs[i].data.fd) && kick_read(evs[i].data.fd))
                continue; /* device.py's _rx_kick, done */
            evs[nout++] = evs[i];
        }
        for (int i = 0; i < c->nplans && !nout; i++) {
            plan_t *p = &c->plans[i];
            /* chains left by the budget, or (polling) put in since the ring went quiet */
            if (p->round == c->round || !(p->more || (p->quiet && ring_waiting(&c->slots[p->tx].q))))
                continue;
            p->cut = p->more;
            if (core_serve(c, p, 0)) {
                p->more = 0;
                c->handed++;
                evs[nout].data.fd = p->kick; /* Python drains it (the kick read already) */
                evs[nout++].events = EPOLLIN;
            }
        }
        if (c->took) /* polling goes on from the end of this round */
            c->last_chain = mono_now();
        for (int i = 0; i < c->nplans; i++) {
            plan_t *p = &c->plans[i];
            if (p->took && !p->cut) /* a burst its budget cut goes on: not a gap */
                poll_adapt(c, p->ps, found - p->ps->last);
            if (p->took)
                p->ps->last = c->last_chain;
            p->took = p->cut = 0;
        }
        took_last = c->took;
        c->took = 0;
        if (nout || ms == 0 || (n == 0 && !more && !polling && ms > 0))
            break; /* events for Python, or the time is up */
    }
    c->carry = took_last;
    for (int i = 0; i < c->nplans; i++) { /* chains waiting, no kick to come: Python's */
        plan_t *p = &c->plans[i];
        p->polling = 0;
        if (p->quiet && plan_arm(c, p) && !core_handed(evs, nout, p->kick))
            p->more = 1;
        if (!err && p->more && nout < CORE_EVENTS) {
            p->more = 0; /* handed over (else core_drop leaves it to the next select) */
            c->handed++;
            evs[nout].data.fd = p->kick;
            evs[nout++].events = EPOLLIN;
        }
    }
    PyEval_RestoreThread(ts);
    int dropped = core_drop(c);
    if (err) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (dropped)
        return NULL;
    PyObject *out = PyList_New(nout);
    for (int i = 0; out && i < nout; i++) {
        PyObject *t = Py_BuildValue("(iI)", evs[i].data.fd, evs[i].events);
        if (!t) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, i, t);
    }
    return out;
}

/* -- the gate, from Python (the GIL let go while waiting) -- */
static PyObject *core_enter(core_t *c, PyObject *unused)
{
    (void)unused;
    Py_BEGIN_ALLOW_THREADS gate_enter(c);
    Py_END_ALLOW_THREADS Py_RETURN_NONE;
}

static PyObject *core_leave(core_t *c, PyObject *unused)
{
    (void)unused;
    int dropped = core_drop(c); /* goes on to the end after a failure: the plans are gone */
    gate_leave(c);             /* even then: a gate kept by a thread that ends blocks hold for ever */
    if (dropped)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *core_hold(core_t *c, PyObject *unused)
{
    (void)unused;
    Py_BEGIN_ALLOW_THREADS PyThread_acquire_lock(c->turnstile, WAIT_LOCK);
    PyThread_acquire_lock(c->lock, WAIT_LOCK);
    PyThread_release_lock(c->turnstile);
    Py_END_ALLOW_THREADS c->holds++;
    if (core_drop(c)) /* the worker's plans, before the main loop's Python */
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *core_let_go(core_t *c, PyObject *unused)
{
    (void)unused;
    gate_leave(c);
    Py_RETURN_NONE;
}

/* watch_quiet(fd, on): a kick descriptor whose handler does nothing but read it (an RX
 * ring's: device.py's _rx_kick) is read here while registered (the selector's register
 * and unregister keep this in step with epoll), and handed to Python only if unreadable. */
static PyObject *core_watch_quiet(core_t *c, PyObject *const *args, Py_ssize_t nargs)
{
    int fd, on;
    if (nargs != 2 || fd_arg(args[0], &fd) || (on = PyObject_IsTrue(args[1])) < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "watch_quiet(fd, on)");
        return NULL;
    }
    for (int i = 0; i < c->nquiet; i++)
        if (c->quiet[i] == fd) {
            if (!on)
                c->quiet[i] = c->quiet[--c->nquiet];
            Py_RETURN_NONE;
        }
    if (on && fd >= 0 && c->nquiet < CORE_QUIET)
        c->quiet[c->nquiet++] = fd;
    Py_RETURN_NONE;
}

static PyObject *core_stats(core_t *c, PyObject *unused)
{
    (void)unused;
    return Py_BuildValue("{sKsK}", "served", c->served, "handed", c->handed);
}

static int core_init(core_t *c, PyObject *args, PyObject *kw)
{
    (void)kw;
    PyObject *k1, *k2, *k3, *backlog = NULL;
    if (!PyArg_ParseTuple(args, "iOOO|O", &c->epfd, &k1, &k2, &k3, &backlog))
        return -1;
    if (backlog && backlog != Py_None && !PyAnySet_Check(backlog)) {
        PyErr_SetString(PyExc_TypeError, "WorkerCore: the backlog is not a set");
        return -1;
    }
    Py_XSETREF(c->backlog, backlog && backlog != Py_None ? Py_NewRef(backlog) : NULL);
    Py_XSETREF(c->k_call_failed, Py_NewRef(k1));
    Py_XSETREF(c->k_send_failed, Py_NewRef(k2));
    Py_XSETREF(c->k_rx_full, Py_NewRef(k3));
    if (!c->lock && !(c->lock = PyThread_allocate_lock()))
        return -1;
    if (!c->turnstile && !(c->turnstile = PyThread_allocate_lock()))
        return -1;
    return 0;
}

static void core_dealloc(core_t *c)
{
    if (core_drop(c))
        PyErr_WriteUnraisable((PyObject *)c);
    Py_XDECREF(c->k_call_failed);
    Py_XDECREF(c->k_send_failed);
    Py_XDECREF(c->k_rx_full);
    Py_XDECREF(c->backlog);
    if (c->lock)
        PyThread_free_lock(c->lock);
    if (c->turnstile)
        PyThread_free_lock(c->turnstile);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

static PyObject *core_poll_window(core_t *c, PyObject *arg);

static PyMethodDef core_methods[] = {
    {"enter", (PyCFunction)core_enter, METH_NOARGS, "worker: take the gate, after the main loop if it waits"},
    {"leave", (PyCFunction)core_leave, METH_NOARGS, "worker: let the gate go"},
    {"hold", (PyCFunction)core_hold, METH_NOARGS, "main loop: take the gate (the worker's plans written back)"},
    {"let_go", (PyCFunction)core_let_go, METH_NOARGS, "main loop: let the gate go"},
    {"wait", (PyCFunction)core_wait, METH_O, "wait(timeout) -> [(fd, events)]: the worker's selector wait"},
    {"register", (PyCFunction)(void (*)(void))core_register, METH_FASTCALL, "register(...): plan a TX ring's kicks"},
    {"watch_quiet", (PyCFunction)(void (*)(void))core_watch_quiet, METH_FASTCALL,
     "watch_quiet(fd, on): a descriptor whose handler only reads it, read here"},
    {"stats", (PyCFunction)core_stats, METH_NOARGS, "{'served': kicks served here, 'handed': kicks handed to Python}"},
    {"poll_window_us", (PyCFunction)core_poll_window, METH_O,
     "poll_window_us(kick_fd) -> int: adaptive polling's window for that TX ring now (microseconds)"},
    {NULL, NULL, 0, NULL},
};

/* poll_us and poll_max_us: ``offset`` is the field's in core_t */
static PyObject *core_get_poll(core_t *c, void *offset)
{
    return PyLong_FromLong(*(long *)((char *)c + (size_t)offset));
}

static int core_set_poll(core_t *c, PyObject *value, void *offset)
{
    const char *name = (size_t)offset == offsetof(core_t, poll_us) ? "poll_us" : "poll_max_us";
    long us = value ? PyLong_AsLong(value) : -1;
    if (us == -1 && PyErr_Occurred())
        return -1;
    if (us < 0 || us > CORE_POLL_MAX_US) {
        PyErr_Format(PyExc_ValueError, "WorkerCore: %s must be between 0 and %d", name, CORE_POLL_MAX_US);
        return -1;
    }
    *(long *)((char *)c + (size_t)offset) = us;
    for (int i = 0; i < CORE_PSTATES; i++)
        if (c->pstates[i].window > (double)c->poll_max_us / 1e6)
            c->pstates[i].window = (double)c->poll_max_us / 1e6;
    return 0;
}

static PyObject *core_poll_window(core_t *c, PyObject *arg)
{
    int kick;
    if (fd_arg(arg, &kick))
        return NULL;
    for (int i = 0; i < CORE_PSTATES && kick >= 0; i++)
        if (c->pstates[i].key == (unsigned)kick + 1)
            return PyLong_FromLong((long)(c->pstates[i].window * 1e6 + 0.5));
    return PyLong_FromLong(0);
}

static PyGetSetDef core_getset[] = {
    {"poll_us", (getter)core_get_poll, (setter)core_set_poll,
     "busy polling: microseconds the wait polls its planned TX rings (no kicks asked for) after the last chain; 0: "
     "none (adaptive polling, if poll_max_us)",
     (void *)offsetof(core_t, poll_us)},
    {"poll_max_us", (getter)core_get_poll, (setter)core_set_poll,
     "adaptive polling (while poll_us is 0): the longest window, grown while chains come within it; 0: none",
     (void *)offsetof(core_t, poll_max_us)},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject core_type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "vhost_ipvlan._fastpath.WorkerCore",
    .tp_basicsize = sizeof(core_t),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "WorkerCore(epoll_fd, call_failed_key, send_failed_key, rx_full_key, backlog=None): a worker's gate "
              "and GIL-free bursts (backlog: a set the devices of plans dropped with chains waiting go to); "
              "poll_us: busy polling; poll_max_us: adaptive polling",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)core_init,
    .tp_dealloc = (destructor)core_dealloc,
    .tp_methods = core_methods,
    .tp_getset = core_getset,
};

static PyMethodDef methods[] = {
    {"forward_burst", (PyCFunction)(void (*)(void))forward_burst, METH_FASTCALL,
     "forward_burst(txq, buf, sender_mac, sender_ips, table, budget, dirty, wire) -> "
     "(status, length, frames, bytes, wire_sent, wire_failed)"},
    {"uplink_burst", (PyCFunction)(void (*)(void))uplink_burst, METH_FASTCALL,
     "uplink_burst(source, buf, table, master_mac, wire_macs, budget, dirty, slow) -> (status, detail, delivered)"},
    {"ring_recv", (PyCFunction)(void (*)(void))ring_recv, METH_FASTCALL,
     "ring_recv(ring, buf) -> int: the next frame of an RX ring copied to buf (length, 0 none, -1 truncated)"},
    {"flow_hash", py_flow_hash, METH_O, "flow_hash(frame) -> int: net.frames.flow_hash computed in C"},
    {"log_mark", (PyCFunction)(void (*)(void))py_log_mark, METH_FASTCALL,
     "log_mark(log, gpa, length) -> int: mark the pages in a dirty log, atomically; 1 if some lay beyond it"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastpath", "The guest-to-guest hot loop in C (see _fastpath.c).", -1, methods,
};

PyMODINIT_FUNC PyInit__fastpath(void)
{
    crc_init();
    for (int i = 0; i < N_COUNT; i++)
        if (!names[i] && !(names[i] = PyUnicode_InternFromString(name_text[i])))
            return NULL;
    if (PyType_Ready(&core_type))
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    Py_INCREF(&core_type);
    if (PyModule_AddObject(m, "WorkerCore", (PyObject *)&core_type)) {
        Py_DECREF(&core_type);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "EMPTY", ST_EMPTY) || PyModule_AddIntConstant(m, "BUDGET", ST_BUDGET) ||
        PyModule_AddIntConstant(m, "SLOW_FRAME", ST_SLOW_FRAME) ||
        PyModule_AddIntConstant(m, "SLOW_CHAIN", ST_SLOW_CHAIN) || PyModule_AddIntConstant(m, "ERROR", ST_ERROR) ||
        PyModule_AddIntConstant(m, "READ_ERROR", ST_READ_ERROR)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
