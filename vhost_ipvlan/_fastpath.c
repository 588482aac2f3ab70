/*
 * vhost_ipvlan._fastpath: the guest-to-guest hot loop in C.
 *
 * Theory of operation. The pure-Python data path (daemon/device.py, daemon/datapath.py,
 * virtio/virtqueue.py, switch/l2.py) is the reference and stays complete.
 * This module only accelerates the common case and works on the very same
 * state: a ``SplitQueue``'s ring buffers (``_desc``, ``_avail``, ``_used``), its
 * indices (``last_avail``, ``used_idx``, written back before returning) and its
 * ``GuestMemory`` regions (``mem._by_gpa``).
 *
 * forward_burst(txq, buf, sender_mac, sender_ips, table, budget, dirty)
 *   takes chains from the sender's TX ring, one readable descriptor each, copies
 *   the frame (12-byte virtio_net_hdr + Ethernet) into ``buf``, and forwards it
 *   straight into another guest's RX ring when, and only when, the Python switch
 *   would say TO_SLAVE(target) with no MAC translation:
 *     - IPv4 (valid version, IHL, total length) or IPv6 (valid version, payload
 *       length, next header neither ICMPv6 nor an extension header), not tagged;
 *       not UDP with a DHCP/DHCPv6 port (67, 68, 546, 547) on either side or a
 *       header cut short (the guards in switch/guard.py decide those);
 *     - source MAC == sender_mac, source address in sender_ips (the addresses the
 *       port says the sender owns);
 *     - destination address in ``table`` (built by Python from the port: only up
 *       slaves whose RX queue is started and enabled), destination MAC == that
 *       target's MAC, target != sender;
 *     - the header's offloads are ones the target negotiated;
 *     - the target's next RX chain is one writable descriptor big enough.
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
 * table: {dst_ip_bytes: (rxq, mac_bytes, caps_int, counters_bytearray16, device)}
 *   caps: bit 0 takes NEEDS_CSUM, bit 1 takes ECN, bits 8..15 the gso_type mask.
 *   counters: two native u64, rx packets and rx bytes, added to by C.
 * dirty: a set; the target's ``device`` is added once it received a frame (Python
 *   publishes its used index and interrupts it after the burst).
 * Returns (status, length, frames_forwarded, bytes_forwarded).
 *
 * Ring indices are accessed as whole 16-bit words (see virtqueue.py's rules).
 * Little-endian hosts only, like the rest of the data path.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define HDR_LEN 12
#define ETH_HLEN 14
#define MAX_REGIONS 16
#define MAX_TARGETS 16
#define DESC_F_WRITE 2

enum { ST_EMPTY = 0, ST_BUDGET = 1, ST_SLOW_FRAME = 2, ST_SLOW_CHAIN = 3, ST_ERROR = 4 };

typedef struct {
    uint64_t start, end;
    char *ptr;
} region_t;

typedef struct {
    PyObject *obj;
    Py_buffer desc, avail, used;
    int nbufs; /* how many of desc/avail/used are held */
    Py_buffer rbuf[MAX_REGIONS];
    region_t reg[MAX_REGIONS];
    int nreg;
    uint32_t num;
    uint16_t last_avail, used_idx;
    unsigned long long walked;
    int changed;
} queue_t;

static void queue_release(queue_t *q)
{
    Py_buffer *bufs[3] = {&q->desc, &q->avail, &q->used};
    for (int i = 0; i < q->nbufs; i++)
        PyBuffer_Release(bufs[i]);
    for (int i = 0; i < q->nreg; i++)
        PyBuffer_Release(&q->rbuf[i]);
    q->nbufs = q->nreg = 0;
}

static int get_u64_attr(PyObject *obj, const char *name, unsigned long long *out)
{
    PyObject *v = PyObject_GetAttrString(obj, name);
    if (!v)
        return -1;
    *out = PyLong_AsUnsignedLongLong(v);
    Py_DECREF(v);
    return (*out == (unsigned long long)-1 && PyErr_Occurred()) ? -1 : 0;
}

static int get_buf_attr(PyObject *obj, const char *name, Py_buffer *view)
{
    PyObject *v = PyObject_GetAttrString(obj, name);
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
    if (get_u64_attr(obj, "num", &num) || get_u64_attr(obj, "last_avail", &last_avail) ||
        get_u64_attr(obj, "used_idx", &used_idx) || get_u64_attr(obj, "walked", &q->walked))
        return -1;
    if (num == 0 || num > 32768) {
        PyErr_SetString(PyExc_ValueError, "queue size out of range");
        return -1;
    }
    q->num = (uint32_t)num;
    q->last_avail = (uint16_t)last_avail;
    q->used_idx = (uint16_t)used_idx;
    if (get_buf_attr(obj, "_desc", &q->desc))
        return -1;
    q->nbufs = 1;
    if (get_buf_attr(obj, "_avail", &q->avail))
        goto fail;
    q->nbufs = 2;
    if (get_buf_attr(obj, "_used", &q->used))
        goto fail;
    q->nbufs = 3;
    if ((uint64_t)q->desc.len < 16ULL * num || (uint64_t)q->avail.len < 6 + 2ULL * num ||
        (uint64_t)q->used.len < 6 + 8ULL * num) {
        PyErr_SetString(PyExc_ValueError, "ring buffers smaller than the queue size");
        goto fail;
    }
    PyObject *mem = PyObject_GetAttrString(obj, "mem");
    if (!mem)
        goto fail;
    PyObject *regions = PyObject_GetAttrString(mem, "_by_gpa");
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

/* Write the indices back to the Python object and release. -1 with an exception on failure. */
static int queue_close(queue_t *q)
{
    int rc = 0;
    if (q->changed) {
        PyObject *la = PyLong_FromUnsignedLong(q->last_avail);
        PyObject *ui = PyLong_FromUnsignedLong(q->used_idx);
        PyObject *wk = PyLong_FromUnsignedLongLong(q->walked);
        if (!la || !ui || !wk || PyObject_SetAttrString(q->obj, "last_avail", la) ||
            PyObject_SetAttrString(q->obj, "used_idx", ui) || PyObject_SetAttrString(q->obj, "walked", wk))
            rc = -1;
        Py_XDECREF(la);
        Py_XDECREF(ui);
        Py_XDECREF(wk);
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

static inline void push_used(queue_t *q, uint32_t head, uint32_t len)
{
    uint32_t elem[2] = {head, len};
    memcpy((char *)q->used.buf + 4 + 8 * (size_t)(q->used_idx % q->num), elem, 8);
    q->used_idx++;
    q->changed = 1;
}

/* Put src (len bytes) into the next RX chain if it is one writable descriptor big enough. */
static int rx_put(queue_t *q, const char *src, uint32_t len)
{
    uint16_t avail_idx = ring16(&q->avail, 1);
    if (avail_idx == q->last_avail)
        return 0;
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
    memcpy(dst, src, len);
    q->last_avail++;
    q->walked++;
    push_used(q, head, len);
    return 1;
}

typedef struct {
    PyObject *key; /* the table value tuple, borrowed */
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

static PyObject *forward_burst(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "forward_burst takes 7 arguments");
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
    Py_buffer fb;
    if (PyObject_GetBuffer(args[1], &fb, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS))
        return NULL;
    queue_t tx;
    if (queue_open(&tx, txq_obj)) {
        PyBuffer_Release(&fb);
        return NULL;
    }
    target_t targets[MAX_TARGETS];
    int ntargets = 0;
    int status = ST_BUDGET, error = 0, taken = 0;
    long nframes = 0, length = 0;
    long long nbytes = 0;
    unsigned char *buf = fb.buf;
    unsigned char src_key[16], dst_key[16];
    Py_ssize_t src_len = 0, dst_len = 0;
    PyObject *dst_value = NULL; /* a strong reference: the table entry for dst_key */

    while (nframes < budget) {
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
        if (!src || d.len > (uint64_t)fb.len) {
            status = ST_SLOW_CHAIN;
            break;
        }
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
        if ((eth[0] & 1) || memcmp(eth + 6, smac, 6) != 0)
            break;
        uint16_t etype = (uint16_t)(eth[12] << 8 | eth[13]);
        const unsigned char *saddr, *daddr;
        Py_ssize_t alen;
        if (etype == 0x0800) {
            if (n < ETH_HLEN + 20)
                break;
            unsigned char *ip = eth + ETH_HLEN;
            uint32_t ihl = ip[0] & 0x0F, total = (uint32_t)(ip[2] << 8 | ip[3]);
            if ((ip[0] >> 4) != 4 || ihl < 5 || ihl * 4 > total || ETH_HLEN + total > n)
                break;
            if (ip[9] == 17 && !((ip[6] & 0x1F) | ip[7]) && guarded_udp(ip + ihl * 4, total - ihl * 4))
                break;
            saddr = ip + 12;
            daddr = ip + 16;
            alen = 4;
        } else if (etype == 0x86DD) {
            if (n < ETH_HLEN + 40)
                break;
            unsigned char *ip = eth + ETH_HLEN;
            uint32_t plen = (uint32_t)(ip[4] << 8 | ip[5]);
            if ((ip[0] >> 4) != 6 || ETH_HLEN + 40 + plen > n || ip[6] == 58 || ip[6] == 0 || ip[6] == 43 ||
                ip[6] == 44 || ip[6] == 60)
                break; /* ICMPv6 and extension headers: the guards' (NDP, RA, a walk) */
            if (ip[6] == 17 && guarded_udp(ip + 40, plen))
                break;
            saddr = ip + 8;
            daddr = ip + 24;
            alen = 16;
        } else {
            break;
        }
        /* The last source that was the sender's and the last destination found in the
         * table are remembered for the burst (frames of one flow come in runs), so most
         * frames need no Python object: only exact byte matches of a positive answer. */
        if (alen != src_len || memcmp(saddr, src_key, (size_t)alen) != 0) {
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
            memcpy(src_key, saddr, (size_t)alen);
            src_len = alen;
        }
        PyObject *value = dst_value;
        if (!value || alen != dst_len || memcmp(daddr, dst_key, (size_t)alen) != 0) {
            PyObject *dkey = PyBytes_FromStringAndSize((const char *)daddr, alen);
            if (!dkey) {
                error = 1;
                break;
            }
            value = PyDict_GetItemWithError(table, dkey); /* borrowed */
            Py_DECREF(dkey);
            if (!value) {
                if (PyErr_Occurred())
                    error = 1;
                break;
            }
            Py_INCREF(value);
            Py_XDECREF(dst_value);
            dst_value = value;
            memcpy(dst_key, daddr, (size_t)alen);
            dst_len = alen;
        }
        if (!PyTuple_Check(value) || PyTuple_GET_SIZE(value) != 5) {
            PyErr_SetString(PyExc_TypeError, "forward_burst: bad table entry");
            error = 1;
            break;
        }
        PyObject *tq = PyTuple_GET_ITEM(value, 0), *tmac = PyTuple_GET_ITEM(value, 1);
        if (tq == txq_obj || !PyBytes_Check(tmac) || PyBytes_GET_SIZE(tmac) != 6 ||
            memcmp(eth, PyBytes_AS_STRING(tmac), 6) != 0)
            break;
        long caps = PyLong_AsLong(PyTuple_GET_ITEM(value, 2));
        if (caps == -1 && PyErr_Occurred()) {
            error = 1;
            break;
        }
        if ((buf[0] | buf[1]) && !offload_ok(buf[0], buf[1], caps))
            break;
        target_t *t = NULL;
        for (int i = 0; i < ntargets; i++)
            if (targets[i].key == value)
                t = &targets[i];
        if (!t) {
            if (ntargets == MAX_TARGETS)
                break;
            t = &targets[ntargets];
            if (queue_open(&t->q, tq)) {
                error = 1;
                break;
            }
            if (PyObject_GetBuffer(PyTuple_GET_ITEM(value, 3), &t->counters, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS)) {
                queue_release(&t->q);
                error = 1;
                break;
            }
            if (t->counters.len < 16) {
                PyBuffer_Release(&t->counters);
                queue_release(&t->q);
                PyErr_SetString(PyExc_ValueError, "forward_burst: counters buffer too small");
                error = 1;
                break;
            }
            t->key = value;
            t->added = 0;
            ntargets++;
        }
        buf[10] = 1; /* num_buffers */
        buf[11] = 0;
        if (!rx_put(&t->q, (const char *)buf, len))
            break;
        uint64_t *cnt = t->counters.buf;
        cnt[0] += 1;
        cnt[1] += n;
        status = ST_BUDGET;
        length = 0;
        taken = 0;
        nframes++;
        nbytes += n;
        if (!t->added) {
            if (PySet_Add(dirty, PyTuple_GET_ITEM(value, 4))) {
                error = 1;
                break;
            }
            t->added = 1;
        }
    }

    PyObject *exc = NULL; /* an exception after a chain was taken: ERROR, not raised */
    if (error && tx.changed) {
        if (taken) { /* give the chain back: Python takes it again */
            tx.last_avail--;
            tx.used_idx--;
            tx.walked--;
        }
        PyObject *type, *tb;
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
        error = 0;
        status = ST_ERROR;
    }

    Py_XDECREF(dst_value);
    for (int i = 0; i < ntargets; i++) {
        if (queue_close(&targets[i].q))
            error = 1;
        PyBuffer_Release(&targets[i].counters);
    }
    if (queue_close(&tx))
        error = 1;
    PyBuffer_Release(&fb);
    if (error) {
        Py_XDECREF(exc);
        return NULL;
    }
    if (exc)
        return Py_BuildValue("(iNlL)", status, exc, nframes, nbytes);
    return Py_BuildValue("(illL)", status, length, nframes, nbytes);
}

static PyMethodDef methods[] = {
    {"forward_burst", (PyCFunction)(void (*)(void))forward_burst, METH_FASTCALL,
     "forward_burst(txq, buf, sender_mac, sender_ips, table, budget, dirty) -> "
     "(status, length, frames, bytes)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastpath", "The guest-to-guest hot loop in C (see _fastpath.c).", -1, methods,
};

PyMODINIT_FUNC PyInit__fastpath(void)
{
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    if (PyModule_AddIntConstant(m, "EMPTY", ST_EMPTY) || PyModule_AddIntConstant(m, "BUDGET", ST_BUDGET) ||
        PyModule_AddIntConstant(m, "SLOW_FRAME", ST_SLOW_FRAME) ||
        PyModule_AddIntConstant(m, "SLOW_CHAIN", ST_SLOW_CHAIN) || PyModule_AddIntConstant(m, "ERROR", ST_ERROR)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
