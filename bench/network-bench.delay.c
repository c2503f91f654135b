/*
 * Fixed one-way delay for bench/network-bench.mjs, on kernels without sch_netem (this one).
 *
 * Attaches to an existing TUN device (IFF_TUN | IFF_NO_PI, made by `ip tuntap add`) in the
 * current network namespace. The bench redirects every IPv4 packet arriving on its veth end
 * into that device (`tc filter … ingress … action mirred egress redirect dev TUN`); this
 * program reads each packet, holds it DELAY_US microseconds, and writes it back into the TUN
 * device, which hands it to the namespace's stack as if it had just arrived. Packets keep their
 * order. The wire (the veth) sees every byte before the delay, so its counters are unchanged.
 *
 *   network-bench-delay TUN DELAY_US
 *
 * Bounded: at most MAX_PACKETS packets held (beyond that a packet is dropped and counted, as a
 * full router queue would); runs until SIGTERM/SIGINT, then prints its counts on stderr.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#define MAX_PACKETS 8192
#define MAX_LEN 2048

struct slot {
  uint64_t due_ns;
  uint32_t len;
  unsigned char data[MAX_LEN];
};

static struct slot ring[MAX_PACKETS];
static volatile sig_atomic_t stop;

static void on_signal(int sig) {
  (void)sig;
  stop = 1;
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s TUN DELAY_US\n", argv[0]);
    return 2;
  }
  uint64_t delay_ns = strtoull(argv[2], NULL, 10) * 1000ull;
  int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    perror("open /dev/net/tun");
    return 1;
  }
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
  strncpy(ifr.ifr_name, argv[1], IFNAMSIZ - 1);
  if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
    perror("TUNSETIFF");
    return 1;
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  /* Ready: the parent waits for this line before it sends anything. */
  printf("ready %s %llu us\n", argv[1], (unsigned long long)(delay_ns / 1000));
  fflush(stdout);

  unsigned head = 0, count = 0, max_count = 0;
  unsigned long long packets = 0, bytes = 0, drops = 0, write_errors = 0;
  uint64_t max_late_ns = 0, sum_late_ns = 0, late_1ms = 0;
  while (!stop) {
    uint64_t now = now_ns();
    /* Release every packet that is due. */
    while (count > 0 && ring[head].due_ns <= now) {
      uint64_t late = now - ring[head].due_ns;
      if (late > max_late_ns) max_late_ns = late;
      sum_late_ns += late;
      if (late > 1000000ull) late_1ms++;
      if (write(fd, ring[head].data, ring[head].len) < 0) write_errors++;
      head = (head + 1) % MAX_PACKETS;
      count--;
    }
    struct timespec timeout = {1, 0};
    if (count > 0) {
      uint64_t wait = ring[head].due_ns - now;
      timeout.tv_sec = (time_t)(wait / 1000000000ull);
      timeout.tv_nsec = (long)(wait % 1000000000ull);
    }
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int r = ppoll(&p, 1, &timeout, NULL);
    if (r < 0) {
      if (errno == EINTR) continue;
      perror("ppoll");
      return 1;
    }
    if (r == 0 || !(p.revents & POLLIN)) continue;
    /* Take every packet that is waiting (bounded by the ring). */
    for (int n = 0; n < MAX_PACKETS; n++) {
      unsigned char buf[MAX_LEN];
      ssize_t len = read(fd, count < MAX_PACKETS ? ring[(head + count) % MAX_PACKETS].data : buf, MAX_LEN);
      if (len < 0) break; /* EAGAIN: drained */
      if (count >= MAX_PACKETS) {
        drops++;
        continue;
      }
      struct slot *s = &ring[(head + count) % MAX_PACKETS];
      s->len = (uint32_t)len;
      s->due_ns = now_ns() + delay_ns;
      count++;
      if (count > max_count) max_count = count;
      packets++;
      bytes += (unsigned long long)len;
    }
  }
  fprintf(stderr, "{\"tun\":\"%s\",\"packets\":%llu,\"bytes\":%llu,\"drops\":%llu,\"writeErrors\":%llu,\"maxHeld\":%u,\"maxLateUs\":%llu,\"meanLateUs\":%llu,\"lateOver1ms\":%llu}\n", argv[1], packets,
          bytes, drops, write_errors, max_count, (unsigned long long)(max_late_ns / 1000), (unsigned long long)(packets ? sum_late_ns / 1000 / packets : 0),
          (unsigned long long)late_1ms);
  return 0;
}
