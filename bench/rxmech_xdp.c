/*
 * bench/rxmech_xdp.c: AF_XDP receive on a master (issue 11: AF_XDP measured against the
 * packet socket's mechanisms of rxmech.c, same sender, same report).
 *
 *   rxmech_xdp drv|skb IFACE SECONDS   bind an AF_XDP socket to IFACE's queue 0 (copy mode:
 *                                      veth has no zero-copy) with libxdp's default program
 *                                      (every frame of the queue to the socket) attached
 *                                      natively (drv) or generically (skb); 4096 frames of
 *                                      2 KiB UMEM, rings of 2048; each frame is copied out
 *                                      into a slot as rxmech.c's receivers do, its buffer
 *                                      given back to the fill ring, poll when empty
 *
 * Prints frames/s, the socket's drops (XDP_STATISTICS rx_dropped + rx_ring_full) and the
 * receiver's CPU time per frame, the line format of rxmech.c. The XDP program leaves with
 * the socket. Build: gcc -O2 rxmech_xdp.c -lxdp -lbpf (Debian: libxdp-dev, libbpf-dev).
 */
#define _GNU_SOURCE
#include <linux/if_link.h>
#include <linux/if_xdp.h>
#include <net/if.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <bpf/libbpf.h>
#include <xdp/libxdp.h>
#include <xdp/xsk.h>

#include "rxmech.h"

#define NFRAMES 4096
#define FSIZE 2048
#define RING 2048
#define BATCH 32
#define SLOT 2048

int main(int argc, char **argv)
{
    if (argc < 4 || (strcmp(argv[1], "drv") && strcmp(argv[1], "skb"))) {
        fprintf(stderr, "usage: rxmech_xdp drv|skb IFACE SECONDS\n");
        return 2;
    }
    libbpf_set_print(NULL); /* quiet: libxdp falls back to a single program without bpffs */
    libxdp_set_print(NULL);
    const char *iface = argv[2];
    double secs = atof(argv[3]);
    void *area;
    if (posix_memalign(&area, (size_t)getpagesize(), (size_t)NFRAMES * FSIZE)) {
        perror("posix_memalign");
        return 1;
    }
    struct xsk_ring_prod fq, tx;
    struct xsk_ring_cons cq, rx;
    struct xsk_umem *umem;
    struct xsk_umem_config ucfg = {.fill_size = RING * 2, .comp_size = RING, .frame_size = FSIZE,
                                   .frame_headroom = 0, .flags = 0};
    int err = xsk_umem__create(&umem, area, (size_t)NFRAMES * FSIZE, &fq, &cq, &ucfg);
    if (err) {
        fprintf(stderr, "xsk_umem__create: %s\n", strerror(-err));
        return 1;
    }
    struct xsk_socket_config cfg = {.rx_size = RING, .tx_size = RING, .libxdp_flags = 0,
                                    .xdp_flags = !strcmp(argv[1], "drv") ? XDP_FLAGS_DRV_MODE : XDP_FLAGS_SKB_MODE,
                                    .bind_flags = XDP_COPY};
    struct xsk_socket *xsk;
    err = xsk_socket__create(&xsk, iface, 0, umem, &rx, &tx, &cfg);
    if (err) {
        fprintf(stderr, "xsk_socket__create (%s mode): %s\n", argv[1], strerror(-err));
        return 1;
    }
    unsigned idx;
    if (xsk_ring_prod__reserve(&fq, NFRAMES, &idx) != NFRAMES) {
        fprintf(stderr, "fill ring reserve failed\n");
        return 1;
    }
    for (unsigned i = 0; i < NFRAMES; i++)
        *xsk_ring_prod__fill_addr(&fq, idx++) = (unsigned long long)i * FSIZE;
    xsk_ring_prod__submit(&fq, NFRAMES);

    static unsigned char slot[SLOT];
    unsigned long long frames = 0;
    struct pollfd pfd = {xsk_socket__fd(xsk), POLLIN, 0};
    double c0 = cpu(), t0 = now(), end = t0 + secs;
    while (now() < end) {
        unsigned at;
        unsigned got = xsk_ring_cons__peek(&rx, BATCH, &at);
        if (!got) {
            poll(&pfd, 1, 100);
            continue;
        }
        unsigned fat;
        while (xsk_ring_prod__reserve(&fq, got, &fat) != got)
            ;
        for (unsigned i = 0; i < got; i++) {
            const struct xdp_desc *d = xsk_ring_cons__rx_desc(&rx, at + i);
            unsigned char *pkt = xsk_umem__get_data(area, d->addr);
            memcpy(slot + 12, pkt, d->len < SLOT - 12 ? d->len : SLOT - 12);
            lat_note(slot + 12, d->len);
            *xsk_ring_prod__fill_addr(&fq, fat + i) = xsk_umem__extract_addr(d->addr);
        }
        xsk_ring_prod__submit(&fq, got);
        xsk_ring_cons__release(&rx, got);
        frames += got;
    }
    double t = now() - t0, c = cpu() - c0;
    struct xdp_statistics st;
    socklen_t len = sizeof st;
    memset(&st, 0, sizeof st);
    getsockopt(xsk_socket__fd(xsk), SOL_XDP, XDP_STATISTICS, &st, &len);
    printf("AF_XDP (%s, copy): %.3f Mpps, %llu dropped by the socket, %.0f ns CPU per frame\n", argv[1],
           (double)frames / t / 1e6, (unsigned long long)(st.rx_dropped + st.rx_ring_full),
           frames ? c * 1e9 / (double)frames : 0.0);
    lat_report();
    xsk_socket__delete(xsk);
    xsk_umem__delete(umem);
    free(area);
    return 0;
}
