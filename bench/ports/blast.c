/*
 * blast: the live benchmark's sender. Sends 64-byte UDP frames out of an
 * interface as fast as it can for a given time, in batches with sendmmsg on
 * an AF_PACKET socket (tcpreplay --topspeed was too slow here to outrun a
 * switch). Prints the number of frames sent.
 *
 *   blast IFACE SRC_MAC DST_MAC SECONDS
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define BATCH 64

static void mac(const char *s, unsigned char *out) {
  sscanf(s, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &out[0], &out[1], &out[2], &out[3], &out[4], &out[5]);
}

int main(int argc, char **argv) {
  if (argc != 5) { fprintf(stderr, "usage: blast IFACE SRC_MAC DST_MAC SECONDS\n"); return 2; }
  int fd = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
  if (fd < 0) { perror("socket"); return 1; }
  struct sockaddr_ll sll = { .sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL), .sll_ifindex = (int)if_nametoindex(argv[1]) };
  if (bind(fd, (struct sockaddr *)&sll, sizeof sll) < 0) { perror("bind"); return 1; }
  unsigned char frame[BATCH][60];
  struct iovec iov[BATCH];
  struct mmsghdr msgs[BATCH];
  memset(msgs, 0, sizeof msgs);
  for (int i = 0; i < BATCH; i++) {
    unsigned char *f = frame[i];
    memset(f, 0, 60);
    mac(argv[3], f); mac(argv[2], f + 6);
    f[12] = 0x08; f[13] = 0x00;                          /* IPv4 */
    f[14] = 0x45; f[16] = 0; f[17] = 46;                 /* total length 46 */
    f[22] = 64; f[23] = 17;                              /* ttl, UDP */
    f[26] = 10; f[27] = 99; f[28] = 0; f[29] = 1;        /* 10.99.0.1 */
    f[30] = 10; f[31] = 99; f[32] = 0; f[33] = 2;        /* 10.99.0.2 */
    unsigned s = 0; for (int j = 14; j < 34; j += 2) s += (f[j] << 8) | f[j + 1];
    while (s >> 16) s = (s & 0xffff) + (s >> 16);
    f[24] = (~s >> 8) & 0xff; f[25] = ~s & 0xff;
    f[34] = 0x13; f[35] = 0x88 + i; f[36] = 0x13; f[37] = 0x89; /* ports 5000+i -> 5001: BATCH flows */
    f[38] = 0; f[39] = 26;
    iov[i].iov_base = f; iov[i].iov_len = 60;
    msgs[i].msg_hdr.msg_iov = &iov[i]; msgs[i].msg_hdr.msg_iovlen = 1;
  }
  struct timespec t0, t;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  double secs = atof(argv[4]);
  unsigned long sent = 0;
  for (;;) {
    int n = sendmmsg(fd, msgs, BATCH, 0);
    if (n > 0) sent += (unsigned long)n;
    clock_gettime(CLOCK_MONOTONIC, &t);
    if ((t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) / 1e9 >= secs) break;
  }
  printf("%lu\n", sent);
  return 0;
}
