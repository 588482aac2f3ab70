/*
 * vhost_ipvlan._guard: guest memory that may shrink under us, without dying of SIGBUS.
 *
 * A front-end hands over its guest RAM as file descriptors that the daemon maps
 * MAP_SHARED. If the front-end later truncates such a file, the next access to a
 * page past the new end raises SIGBUS, which would kill the whole daemon (every
 * guest). Sealed memfds (F_SEAL_SHRINK) cannot shrink and need nothing; this
 * module is for everything else (DPDK's memfds, hugetlbfs and other files).
 *
 * ``map(fd, length)`` maps ``length`` bytes of ``fd`` from offset 0, shared and
 * writable, and returns a ``Mapping`` (a writable buffer) that is registered with
 * a SIGBUS handler, installed on first use. Rules:
 *   - A SIGBUS raised by the kernel (si_code > 0) for an address inside a
 *     registered mapping is handled: anonymous zero-filled memory is mapped over
 *     the whole mapping (MAP_FIXED: one mmap, one VMA, whatever is touched next;
 *     the connection is closed anyway), the mapping is flagged ``poisoned``, and 8
 *     bytes are written to the notification eventfd (``set_notify``) so the event
 *     loop learns of it. The faulting access is then retried and succeeds (on
 *     zeros). Replacing page by page split the mapping at every fault: a guest's
 *     ring pointing at every other page of a truncated file reached
 *     vm.max_map_count in one drain, and the failing mmap let the SIGBUS kill.
 *   - Any other SIGBUS goes to the handler that was installed before ours (the
 *     default one kills the process as it would have; faulthandler's dumps a
 *     traceback first).
 *   - On hugetlbfs (``f_type`` HUGETLBFS_MAGIC) the page is the huge page, and the
 *     mapping, its slot and its munmap cover ``length`` rounded up to it (the
 *     kernel maps that much): the replacement is always whole huge pages, which
 *     hugetlbfs requires (a partial one fails, and the process would die of the
 *     SIGBUS), and the unmapping does not fail (and leak the mapping).
 *   - A ``Mapping`` is unregistered before it is unmapped (when its last buffer
 *     export is gone and it is deallocated). Slots are written by the thread
 *     holding the GIL and read by the handler with acquire/release ordering.
 * The handler only calls async-signal-safe functions (mmap, write, sigaction)
 * and keeps errno.
 *
 * ``fstatfs_type(fd)`` returns the ``f_type`` of the file system holding ``fd``'s
 * file (as an unsigned 32-bit magic: TMPFS_MAGIC, HUGETLBFS_MAGIC, ...); Python
 * has no fstatfs. OSError if the call fails.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/vfs.h>
#include <unistd.h>

#define MAX_SLOTS 1024
#define HUGETLBFS_MAGIC 0x958458f6

typedef struct {
    uintptr_t start; /* [start, end); end == 0: the slot is free */
    uintptr_t end;
    uintptr_t gran;  /* page size of the mapping (huge pages on hugetlbfs) */
    int poisoned;
} slot_t;

static slot_t slots[MAX_SLOTS];
static int notify_fd = -1;
static struct sigaction previous;
static int installed;

static void chain(int sig, siginfo_t *info, void *ctx)
{
    if (previous.sa_flags & SA_SIGINFO) {
        previous.sa_sigaction(sig, info, ctx);
        return;
    }
    if (previous.sa_handler == SIG_DFL || previous.sa_handler == SIG_IGN) {
        /* back to the default action: the access faults again and the process dies as it would have */
        struct sigaction dfl;
        memset(&dfl, 0, sizeof dfl);
        dfl.sa_handler = SIG_DFL;
        sigemptyset(&dfl.sa_mask);
        sigaction(sig, &dfl, NULL);
        if (info->si_code <= 0) /* sent, not a fault: nothing would raise it again */
            raise(sig);
        return;
    }
    previous.sa_handler(sig);
}

static void on_sigbus(int sig, siginfo_t *info, void *ctx)
{
    int saved = errno;
    uintptr_t addr = (uintptr_t)info->si_addr;
    if (info->si_code > 0) {
        for (int i = 0; i < MAX_SLOTS; i++) {
            uintptr_t end = __atomic_load_n(&slots[i].end, __ATOMIC_ACQUIRE);
            uintptr_t start = slots[i].start;
            if (end == 0 || addr < start || addr >= end)
                continue;
            /* the whole mapping at once: page by page, every replacement split the
             * mapping (two more VMAs each) and a ring walk touching every other page
             * reached vm.max_map_count, where mmap fails and the SIGBUS kills */
            void *p = mmap((void *)start, end - start, PROT_READ | PROT_WRITE,
                           MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p == MAP_FAILED)
                break;
            __atomic_store_n(&slots[i].poisoned, 1, __ATOMIC_RELEASE);
            int fd = __atomic_load_n(&notify_fd, __ATOMIC_ACQUIRE);
            if (fd >= 0) {
                uint64_t one = 1;
                ssize_t n = write(fd, &one, sizeof one);
                (void)n;
            }
            errno = saved;
            return;
        }
    }
    errno = saved;
    chain(sig, info, ctx);
}

static int install(void)
{
    if (installed)
        return 0;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGBUS, &sa, &previous) != 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    installed = 1;
    return 0;
}

/* -- Mapping ------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    char *ptr;
    Py_ssize_t len;    /* what the buffer exposes */
    size_t maplen;     /* what is mapped: len, rounded up to the huge page on hugetlbfs */
    int slot;
} Mapping;

static void mapping_dealloc(Mapping *self)
{
    if (self->slot >= 0) {
        __atomic_store_n(&slots[self->slot].end, 0, __ATOMIC_RELEASE);
        slots[self->slot].start = 0;
        slots[self->slot].poisoned = 0;
    }
    if (self->ptr != NULL)
        munmap(self->ptr, self->maplen);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int mapping_getbuffer(Mapping *self, Py_buffer *view, int flags)
{
    return PyBuffer_FillInfo(view, (PyObject *)self, self->ptr, self->len, 0, flags);
}

static PyBufferProcs mapping_as_buffer = {
    .bf_getbuffer = (getbufferproc)mapping_getbuffer,
};

static PyObject *mapping_poisoned(Mapping *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(self->slot >= 0 && __atomic_load_n(&slots[self->slot].poisoned, __ATOMIC_ACQUIRE));
}

static PyGetSetDef mapping_getset[] = {
    {"poisoned", (getter)mapping_poisoned, NULL, "a page was replaced: the file shrank under the mapping", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static Py_ssize_t mapping_length(Mapping *self)
{
    return self->len;
}

static PySequenceMethods mapping_as_sequence = {
    .sq_length = (lenfunc)mapping_length,
};

static PyTypeObject MappingType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "vhost_ipvlan._guard.Mapping",
    .tp_basicsize = sizeof(Mapping),
    .tp_dealloc = (destructor)mapping_dealloc,
    .tp_as_buffer = &mapping_as_buffer,
    .tp_as_sequence = &mapping_as_sequence,
    .tp_getset = mapping_getset,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A shared, writable file mapping whose shrinking file cannot kill the process.",
};

static int free_slot(void)
{
    for (int i = 0; i < MAX_SLOTS; i++)
        if (__atomic_load_n(&slots[i].end, __ATOMIC_ACQUIRE) == 0)
            return i;
    return -1;
}

static PyObject *guard_map(PyObject *mod, PyObject *args)
{
    (void)mod;
    int fd;
    Py_ssize_t len;
    if (!PyArg_ParseTuple(args, "in:map", &fd, &len))
        return NULL;
    if (len <= 0) {
        PyErr_SetString(PyExc_ValueError, "mapping length must be positive");
        return NULL;
    }
    if (free_slot() < 0) {
        PyErr_SetString(PyExc_OSError, "too many guarded mappings");
        return NULL;
    }
    if (install() != 0)
        return NULL;
    long page = sysconf(_SC_PAGESIZE);
    uintptr_t gran = (uintptr_t)page;
    size_t maplen = (size_t)len;
    struct statfs st;
    if (fstatfs(fd, &st) == 0 && (unsigned long)st.f_type == HUGETLBFS_MAGIC && st.f_bsize > page &&
        (st.f_bsize & (st.f_bsize - 1)) == 0) {
        gran = (uintptr_t)st.f_bsize; /* the huge page size */
        if (maplen > SIZE_MAX - (gran - 1)) {
            PyErr_SetString(PyExc_OverflowError, "mapping length too large");
            return NULL;
        }
        maplen = (maplen + gran - 1) & ~(size_t)(gran - 1);
    }
    Mapping *self = PyObject_New(Mapping, &MappingType);
    if (self == NULL)
        return NULL;
    self->ptr = NULL;
    self->len = len;
    self->maplen = maplen;
    self->slot = -1;
    void *p;
    Py_BEGIN_ALLOW_THREADS
    p = mmap(NULL, maplen, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    Py_END_ALLOW_THREADS
    if (p == MAP_FAILED) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(self);
        return NULL;
    }
    self->ptr = p;
    /* picked with the GIL held again: another thread may have taken a slot during mmap */
    int slot = free_slot();
    if (slot < 0) {
        PyErr_SetString(PyExc_OSError, "too many guarded mappings");
        Py_DECREF(self);
        return NULL;
    }
    slots[slot].start = (uintptr_t)p;
    slots[slot].gran = gran;
    slots[slot].poisoned = 0;
    __atomic_store_n(&slots[slot].end, (uintptr_t)p + (uintptr_t)maplen, __ATOMIC_RELEASE);
    self->slot = slot;
    return (PyObject *)self;
}

static PyObject *guard_set_notify(PyObject *mod, PyObject *args)
{
    (void)mod;
    int fd;
    if (!PyArg_ParseTuple(args, "i:set_notify", &fd))
        return NULL;
    __atomic_store_n(&notify_fd, fd, __ATOMIC_RELEASE);
    Py_RETURN_NONE;
}

static PyObject *guard_active(PyObject *mod, PyObject *noargs)
{
    (void)mod;
    (void)noargs;
    int n = 0;
    for (int i = 0; i < MAX_SLOTS; i++)
        n += __atomic_load_n(&slots[i].end, __ATOMIC_ACQUIRE) != 0;
    return PyLong_FromLong(n);
}

static PyObject *guard_fstatfs_type(PyObject *mod, PyObject *args)
{
    (void)mod;
    int fd;
    if (!PyArg_ParseTuple(args, "i:fstatfs_type", &fd))
        return NULL;
    struct statfs st;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = fstatfs(fd, &st);
    Py_END_ALLOW_THREADS
    if (rc != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    /* magics are 32-bit; f_type is a signed word (negative on 32-bit for 0x9584...) */
    return PyLong_FromUnsignedLong((unsigned long)st.f_type & 0xffffffffUL);
}

static PyMethodDef guard_methods[] = {
    {"map", guard_map, METH_VARARGS, "map(fd, length) -> Mapping: shared, writable, from offset 0, guarded"},
    {"set_notify", guard_set_notify, METH_VARARGS, "set_notify(fd): eventfd written when a page is replaced (-1: none)"},
    {"active", guard_active, METH_NOARGS, "number of registered mappings"},
    {"fstatfs_type", guard_fstatfs_type, METH_VARARGS, "fstatfs_type(fd) -> int: f_type of the file system holding fd's file"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef guard_module = {
    PyModuleDef_HEAD_INIT, "vhost_ipvlan._guard", "SIGBUS guard for guest memory mappings.", -1, guard_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__guard(void)
{
    if (PyType_Ready(&MappingType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&guard_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&MappingType);
    if (PyModule_AddObject(m, "Mapping", (PyObject *)&MappingType) < 0) {
        Py_DECREF(&MappingType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
