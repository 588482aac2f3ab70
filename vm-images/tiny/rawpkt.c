/* rawpkt: send, or count, raw Ethernet frames of one EtherType (busybox has no raw
 * frame sender). Built static into the tiny guest by build-tiny.sh and kept next to
 * the image, so the test host can run the same binary in its namespaces.
 *
 *   rawpkt send IFACE DSTMAC ETHERTYPE COUNT
 *       COUNT frames DSTMAC <- IFACE's MAC, EtherType ETHERTYPE (hex), 46 bytes of
 *       payload; prints "rawpkt: sent N of COUNT" (and the error, if a send failed).
 *   rawpkt listen IFACE ETHERTYPE FILE
 *       counts the frames of ETHERTYPE the stack of IFACE receives (a protocol
 *       socket, so after any rx_handler; frames the host itself sends are not
 *       counted) and keeps FILE at "RawIn N" (written atomically), forever, also
 *       across the interface going down and up again.
 *
 * Exit status: 0 when everything was sent / listening ended normally, 1 on a send
 * error, 2 on bad usage or setup failure.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

static int die(const char *what)
{
    fprintf(stderr, "rawpkt: %s: %s\n", what, strerror(errno));
    return 2;
}

static int parse_mac(const char *text, unsigned char mac[6])
{
    unsigned int b[6];
    if (sscanf(text, "%x:%x:%x:%x:%x:%x", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5]) != 6)
        return -1;
    for (int i = 0; i < 6; i++) {
        if (b[i] > 0xff)
            return -1;
        mac[i] = (unsigned char)b[i];
    }
    return 0;
}

static int open_bound(const char *ifname, unsigned short proto, int *ifindex)
{
    int fd = socket(AF_PACKET, SOCK_RAW, htons(proto));
    if (fd < 0)
        return -1;
    struct sockaddr_ll sll = {0};
    sll.sll_family = AF_PACKET;
    sll.sll_protocol = htons(proto);
    sll.sll_ifindex = (int)if_nametoindex(ifname);
    if (sll.sll_ifindex == 0 || bind(fd, (struct sockaddr *)&sll, sizeof sll) < 0) {
        close(fd);
        return -1;
    }
    *ifindex = sll.sll_ifindex;
    return fd;
}

static int do_send(const char *ifname, const char *dst, unsigned short type, long count)
{
    unsigned char frame[ETH_ZLEN] = {0};
    int ifindex;
    if (parse_mac(dst, frame) < 0) {
        fprintf(stderr, "rawpkt: bad MAC %s\n", dst);
        return 2;
    }
    int fd = open_bound(ifname, 0, &ifindex);
    if (fd < 0)
        return die(ifname);
    struct ifreq ifr = {0};
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", ifname);
    if (ioctl(fd, SIOCGIFHWADDR, &ifr) < 0)
        return die("SIOCGIFHWADDR");
    memcpy(frame + 6, ifr.ifr_hwaddr.sa_data, 6);
    frame[12] = (unsigned char)(type >> 8);
    frame[13] = (unsigned char)type;
    memcpy(frame + 14, "vhost-ipvlan conformance", 24);
    struct sockaddr_ll to = {0};
    to.sll_family = AF_PACKET;
    to.sll_ifindex = ifindex;
    to.sll_halen = 6;
    memcpy(to.sll_addr, frame, 6);
    long sent = 0;
    int err = 0;
    for (long i = 0; i < count; i++) {
        if (sendto(fd, frame, sizeof frame, 0, (struct sockaddr *)&to, sizeof to) == (ssize_t)sizeof frame)
            sent++;
        else
            err = errno;
    }
    printf("rawpkt: sent %ld of %ld%s%s\n", sent, count, err ? ": " : "", err ? strerror(err) : "");
    return sent == count ? 0 : 1;
}

static int put_count(const char *file, long n)
{
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", file);
    FILE *f = fopen(tmp, "w");
    if (f == NULL)
        return -1;
    fprintf(f, "RawIn %ld\n", n);
    if (fclose(f) != 0)
        return -1;
    return rename(tmp, file);
}

static int do_listen(const char *ifname, unsigned short type, const char *file)
{
    int ifindex;
    int fd = open_bound(ifname, type, &ifindex);
    if (fd < 0)
        return die(ifname);
    long n = 0;
    if (put_count(file, n) < 0)
        return die(file);
    for (;;) {
        unsigned char buf[2048];
        struct sockaddr_ll from;
        socklen_t len = sizeof from;
        if (recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &len) < 0) {
            if (errno == EINTR || errno == ENETDOWN)  /* the link went down (and may come back) */
                continue;
            return die("recvfrom");
        }
        if (from.sll_pkttype == PACKET_OUTGOING)
            continue;
        if (put_count(file, ++n) < 0)
            return die(file);
    }
}

int main(int argc, char **argv)
{
    if (argc == 6 && strcmp(argv[1], "send") == 0)
        return do_send(argv[2], argv[3], (unsigned short)strtoul(argv[4], NULL, 16), strtol(argv[5], NULL, 10));
    if (argc == 5 && strcmp(argv[1], "listen") == 0)
        return do_listen(argv[2], (unsigned short)strtoul(argv[3], NULL, 16), argv[4]);
    fprintf(stderr, "usage: rawpkt send IFACE DSTMAC ETHERTYPE COUNT | rawpkt listen IFACE ETHERTYPE FILE\n");
    return 2;
}
