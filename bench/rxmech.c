/*
 * bench/rxmech.c: batched AF_PACKET receive on a master, recvmmsg vs a TPACKET_V3 ring
 * (issue 11: which one the C accelerator's wire -> guest path should use).
 *
 *   rxmech send IFACE SECONDS SIZE     blast SIZE-byte UDP frames out IFACE (sendmmsg, 32 a
 *                                      call, PACKET_VNET_HDR, PACKET_QDISC_BYPASS) and report
 *                                      the sender's rate and CPU per frame
 *   rxmech sendq IFACE SECONDS SIZE    the same without PACKET_QDISC_BYPASS (the daemon's
 *                                      uplink: through the master's qdisc)
 *   rxmech pace IFACE SECONDS SIZE RATE  send RATE frames/s, one at a time, each carrying its
 *                                      send time (rxmech.h): the receivers then report the
 *                                      delay they add (median, p99) besides the rate
 *   rxmech txring IFACE SECONDS SIZE   the same through a PACKET_TX_RING (TPACKET_V2, 32
 *                                      frames written per send() kick), PACKET_VNET_HDR
 *   rxmech recvmmsg IFACE SECONDS      read with recvmmsg, 32 a call, PACKET_VNET_HDR, as
 *                                      _fastpath.c's uplink_burst does (copy into its slots)
 *   rxmech tpacket3 IFACE SECONDS      read a TPACKET_V3 ring (PACKET_VNET_HDR, 64 x 1 MiB
 *                                      blocks, poll when empty), copying each frame out
 *                                      into the same slots (a guest RX copy follows in both)
 *   rxmech tpacket2 IFACE SECONDS      read a TPACKET_V2 ring as the daemon's uplink does
 *                                      (daemon/uplink.py: 2048 slots of 2 KiB, PACKET_VNET_HDR,
 *                                      PACKET_COPY_THRESH), frame by frame, poll when empty
 * (AF_XDP, the same receiver on an XDP socket: rxmech_xdp.c.)
 *
 * The receiver prints frames/s, the socket's drops (PACKET_STATISTICS) and its own CPU
 * time per frame (user + system, getrusage): the cost the daemon's thread pays.
 * bench/rxmech.sh builds it and runs both receivers against the same sender on a veth.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "rxmech.h"

#define BATCH 32
#define SLOT 2048

static int open_sock(const char *iface, int vnet)
{
    int fd = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
    if (fd < 0) {
        perror("socket");
        exit(1);
    }
    int one = 1, big = 8 << 20;
    if (vnet)
        setsockopt(fd, SOL_PACKET, PACKET_VNET_HDR, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big);
    struct sockaddr_ll sll = {.sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL),
                              .sll_ifindex = (int)if_nametoindex(iface)};
    if (bind(fd, (struct sockaddr *)&sll, sizeof sll)) {
        perror("bind");
        exit(1);
    }
    return fd;
}

static void report(const char *what, int fd, unsigned long long frames, double secs, double cpus)
{
    struct tpacket_stats_v3 st;
    socklen_t len = sizeof st;
    memset(&st, 0, sizeof st);
    getsockopt(fd, SOL_PACKET, PACKET_STATISTICS, &st, &len);
    printf("%s: %.3f Mpps, %u dropped by the socket, %.0f ns CPU per frame\n", what, (double)frames / secs / 1e6,
           st.tp_drops, frames ? cpus * 1e9 / (double)frames : 0.0);
    lat_report();
}

static unsigned char tframe[SLOT]; /* 10-byte virtio_net_hdr + a UDP frame */

static int build_frame(int size)
{
    memset(tframe, 0, sizeof tframe);
    unsigned char *eth = tframe + 10;
    memcpy(eth, "\x02\x00\x00\x00\x00\x01\x02\x99\x00\x00\x00\x01\x08\x00", 14);
    unsigned char *ip = eth + 14;
    ip[0] = 0x45;
    ip[2] = (unsigned char)((size - 14) >> 8);
    ip[3] = (unsigned char)(size - 14);
    ip[8] = 64;
    ip[9] = 17;
    memcpy(ip + 12, "\xc0\x00\x02\x01\xc6\x12\x00\x01", 8);
    return 10 + size;
}

static void do_send(const char *iface, double secs, int size, int bypass)
{
    int fd = open_sock(iface, 1);
    setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &bypass, sizeof bypass);
    struct iovec iov = {tframe, (size_t)build_frame(size)};
    struct mmsghdr msgs[BATCH];
    unsigned long long frames = 0;
    double c0 = cpu(), t0 = now(), end = t0 + secs;
    while (now() < end) {
        for (int i = 0; i < BATCH; i++)
            msgs[i] = (struct mmsghdr){.msg_hdr = {.msg_iov = &iov, .msg_iovlen = 1}};
        int n = sendmmsg(fd, msgs, BATCH, 0);
        if (n > 0)
            frames += (unsigned)n;
    }
    report(bypass ? "sendmmsg(32)" : "sendmmsg(32), through the qdisc", fd, frames, now() - t0, cpu() - c0);
}

static void do_pace(const char *iface, double secs, int size, double rate)
{
    int fd = open_sock(iface, 1);
    int len = build_frame(size < LAT_AT + 16 ? LAT_AT + 16 : size);
    unsigned long long frames = 0;
    double c0 = cpu(), t0 = now(), end = t0 + secs, next = t0;
    while (now() < end) {
        lat_stamp(tframe + 10);
        if (send(fd, tframe, (size_t)len, 0) > 0)
            frames++;
        next += 1.0 / rate;
        double wait = next - now();
        if (wait > 0) {
            struct timespec ts = {(time_t)wait, (long)((wait - (double)(time_t)wait) * 1e9)};
            nanosleep(&ts, NULL);
        }
    }
    report("paced send", fd, frames, now() - t0, cpu() - c0);
}

static void do_txring(const char *iface, double secs, int size)
{
    int fd = open_sock(iface, 1);
    int one = 1, v = TPACKET_V2;
    setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one);
    setsockopt(fd, SOL_PACKET, PACKET_VERSION, &v, sizeof v);
    struct tpacket_req req = {.tp_block_size = 1 << 16, .tp_block_nr = 16, .tp_frame_size = SLOT,
                              .tp_frame_nr = (1 << 16) / SLOT * 16};
    if (setsockopt(fd, SOL_PACKET, PACKET_TX_RING, &req, sizeof req)) {
        perror("PACKET_TX_RING");
        exit(1);
    }
    unsigned char *ring = mmap(NULL, (size_t)req.tp_block_size * req.tp_block_nr, PROT_READ | PROT_WRITE,
                               MAP_SHARED, fd, 0);
    if (ring == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    int len = build_frame(size);
    size_t data = TPACKET2_HDRLEN - sizeof(struct sockaddr_ll);
    unsigned idx = 0;
    unsigned long long frames = 0;
    double c0 = cpu(), t0 = now(), end = t0 + secs;
    while (now() < end) {
        int queued = 0;
        for (; queued < BATCH; queued++) {
            struct tpacket2_hdr *h = (void *)(ring + (size_t)idx * SLOT);
            if (__atomic_load_n(&h->tp_status, __ATOMIC_ACQUIRE) != TP_STATUS_AVAILABLE)
                break;
            memcpy((unsigned char *)h + data, tframe, (size_t)len);
            h->tp_len = (unsigned)len;
            __atomic_store_n(&h->tp_status, TP_STATUS_SEND_REQUEST, __ATOMIC_RELEASE);
            idx = (idx + 1) % req.tp_frame_nr;
        }
        if (send(fd, NULL, 0, 0) >= 0)
            frames += (unsigned)queued;
    }
    report("TX ring (V2)", fd, frames, now() - t0, cpu() - c0);
}

static void do_recvmmsg(const char *iface, double secs)
{
    int fd = open_sock(iface, 1);
    static unsigned char slots[BATCH][SLOT];
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH][2];
    for (int i = 0; i < BATCH; i++) {
        iov[i][0] = (struct iovec){slots[i], 10};
        iov[i][1] = (struct iovec){slots[i] + 12, SLOT - 12};
    }
    unsigned long long frames = 0;
    struct timespec to = {0, 100000000};
    double c0 = cpu(), t0 = now(), end = t0 + secs;
    while (now() < end) {
        for (int i = 0; i < BATCH; i++)
            msgs[i] = (struct mmsghdr){.msg_hdr = {.msg_iov = iov[i], .msg_iovlen = 2}};
        int n = recvmmsg(fd, msgs, BATCH, MSG_WAITFORONE, &to);
        for (int i = 0; i < n; i++)
            lat_note(slots[i] + 12, msgs[i].msg_len - 10);
        if (n > 0)
            frames += (unsigned)n;
    }
    report("recvmmsg(32)", fd, frames, now() - t0, cpu() - c0);
}

static void do_tpacket3(const char *iface, double secs)
{
    int fd = open_sock(iface, 1);
    int v = TPACKET_V3;
    setsockopt(fd, SOL_PACKET, PACKET_VERSION, &v, sizeof v);
    struct tpacket_req3 req = {.tp_block_size = 1 << 20, .tp_block_nr = 64, .tp_frame_size = SLOT,
                               .tp_frame_nr = (1 << 20) / SLOT * 64, .tp_retire_blk_tov = 1};
    if (setsockopt(fd, SOL_PACKET, PACKET_RX_RING, &req, sizeof req)) {
        perror("PACKET_RX_RING");
        exit(1);
    }
    size_t len = (size_t)req.tp_block_size * req.tp_block_nr;
    unsigned char *ring = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_LOCKED, fd, 0);
    if (ring == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    static unsigned char slot[SLOT];
    unsigned long long frames = 0;
    unsigned block = 0;
    struct pollfd pfd = {fd, POLLIN | POLLERR, 0};
    double c0 = cpu(), t0 = now(), end = t0 + secs;
    while (now() < end) {
        struct tpacket_block_desc *bd = (void *)(ring + (size_t)block * req.tp_block_size);
        if (!(__atomic_load_n(&bd->hdr.bh1.block_status, __ATOMIC_ACQUIRE) & TP_STATUS_USER)) {
            poll(&pfd, 1, 100);
            continue;
        }
        struct tpacket3_hdr *h = (void *)((unsigned char *)bd + bd->hdr.bh1.offset_to_first_pkt);
        for (unsigned i = 0; i < bd->hdr.bh1.num_pkts; i++) {
            /* the virtio_net_hdr precedes the frame (tp_mac - 10) with PACKET_VNET_HDR */
            unsigned char *mac = (unsigned char *)h + h->tp_mac;
            memcpy(slot, mac - 10, 10);
            memcpy(slot + 12, mac, h->tp_snaplen < SLOT - 12 ? h->tp_snaplen : SLOT - 12);
            lat_note(slot + 12, h->tp_snaplen);
            frames++;
            h = (void *)((unsigned char *)h + h->tp_next_offset);
        }
        __atomic_store_n(&bd->hdr.bh1.block_status, TP_STATUS_KERNEL, __ATOMIC_RELEASE);
        block = (block + 1) % req.tp_block_nr;
    }
    report("TPACKET_V3 ring", fd, frames, now() - t0, cpu() - c0);
}

static void do_tpacket2(const char *iface, double secs)
{
    int fd = open_sock(iface, 1);
    int v = TPACKET_V2, one = 1;
    setsockopt(fd, SOL_PACKET, PACKET_VERSION, &v, sizeof v);
    setsockopt(fd, SOL_PACKET, PACKET_COPY_THRESH, &one, sizeof one);
    struct tpacket_req req = {.tp_block_size = 1 << 16, .tp_block_nr = 64, .tp_frame_size = SLOT,
                              .tp_frame_nr = (1 << 16) / SLOT * 64};
    if (setsockopt(fd, SOL_PACKET, PACKET_RX_RING, &req, sizeof req)) {
        perror("PACKET_RX_RING");
        exit(1);
    }
    unsigned char *ring = mmap(NULL, (size_t)req.tp_block_size * req.tp_block_nr, PROT_READ | PROT_WRITE,
                               MAP_SHARED, fd, 0);
    if (ring == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    static unsigned char slot[SLOT];
    unsigned long long frames = 0;
    unsigned idx = 0;
    struct pollfd pfd = {fd, POLLIN | POLLERR, 0};
    double c0 = cpu(), t0 = now(), end = t0 + secs;
    while (now() < end) {
        struct tpacket2_hdr *h = (void *)(ring + (size_t)idx * SLOT);
        if (!(__atomic_load_n(&h->tp_status, __ATOMIC_ACQUIRE) & TP_STATUS_USER)) {
            poll(&pfd, 1, 100);
            continue;
        }
        unsigned char *mac = (unsigned char *)h + h->tp_mac;
        memcpy(slot, mac - 10, 10);
        memcpy(slot + 12, mac, h->tp_snaplen < SLOT - 12 ? h->tp_snaplen : SLOT - 12);
        lat_note(slot + 12, h->tp_snaplen);
        frames++;
        __atomic_store_n(&h->tp_status, TP_STATUS_KERNEL, __ATOMIC_RELEASE);
        idx = (idx + 1) % req.tp_frame_nr;
    }
    report("TPACKET_V2 ring", fd, frames, now() - t0, cpu() - c0);
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: rxmech send|sendq|pace|txring|recvmmsg|tpacket3|tpacket2 IFACE SECONDS [SIZE]\n");
        return 2;
    }
    double secs = atof(argv[3]);
    if (!strcmp(argv[1], "send"))
        do_send(argv[2], secs, argc > 4 ? atoi(argv[4]) : 64, 1);
    else if (!strcmp(argv[1], "sendq"))
        do_send(argv[2], secs, argc > 4 ? atoi(argv[4]) : 64, 0);
    else if (!strcmp(argv[1], "pace"))
        do_pace(argv[2], secs, argc > 4 ? atoi(argv[4]) : 64, argc > 5 ? atof(argv[5]) : 1000);
    else if (!strcmp(argv[1], "txring"))
        do_txring(argv[2], secs, argc > 4 ? atoi(argv[4]) : 64);
    else if (!strcmp(argv[1], "recvmmsg"))
        do_recvmmsg(argv[2], secs);
    else if (!strcmp(argv[1], "tpacket3"))
        do_tpacket3(argv[2], secs);
    else if (!strcmp(argv[1], "tpacket2"))
        do_tpacket2(argv[2], secs);
    else
        return 2;
    return 0;
}
