// An experiment, not part of Causeway: the simplest splice(2) relay, to measure how close any
// user-space relay on CPU 1 can bring the 1 GiB download to the direct one on this machine
// (docs/benchmarks.md, run of 2026-12-07 21:00). One flow at a time, socket -> pipe -> socket
// each way, 4 MiB SO_RCVBUF on the origin's side as the nlb asks for; no half-close, no timeouts.
//
//   gcc -O2 -o /tmp/splice_relay benches/experiments/splice_relay.c
//   /tmp/splice_relay LPORT OPORT MODE RCVLOWAT NOTSENT_LOWAT
//
// MODE 0 sleeps in epoll_wait when no splice moved a byte; MODE 1 never sleeps (spins on
// non-blocking splices, as HAProxy's `busy-polling` does), so the origin's writes never have
// to wake it. RCVLOWAT (SO_RCVLOWAT on the origin's socket) and NOTSENT_LOWAT
// (TCP_NOTSENT_LOWAT on the client's) are set when non-zero. For example:
//
//   bash benches/load/run.sh --scenario bulk
//        --extra-proxy 'spin=/tmp/splice_relay {port} {origin} 1 0 16384'
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

static struct sockaddr_in loopback(int port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    return a;
}

static void set_int(int fd, int level, int name, int value) {
    if (setsockopt(fd, level, name, &value, sizeof value)) perror("setsockopt");
}

// Moves one flow until the origin has sent everything and the pipe is empty, or the client goes.
static void relay(int c, int o, int spin) {
    int up[2], down[2];
    if (pipe2(up, O_NONBLOCK) || pipe2(down, O_NONBLOCK)) return;
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET | EPOLLRDHUP};
    ev.data.fd = c;
    epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
    ev.data.fd = o;
    epoll_ctl(ep, EPOLL_CTL_ADD, o, &ev);
    long in_up = 0, in_down = 0;
    int origin_done = 0;
    while (!(origin_done && in_down == 0)) {
        int moved = 0;
        ssize_t n = splice(c, 0, up[1], 0, 1 << 20, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (n == 0) break;  // the client hung up
        if (n > 0) in_up += n, moved = 1;
        if (in_up && (n = splice(up[0], 0, o, 0, in_up, SPLICE_F_MOVE | SPLICE_F_NONBLOCK)) > 0)
            in_up -= n, moved = 1;
        if (!origin_done) {
            n = splice(o, 0, down[1], 0, 1 << 20, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (n > 0) in_down += n, moved = 1;
            else if (n == 0 || errno != EAGAIN) origin_done = 1;
        }
        if (in_down) {
            n = splice(down[0], 0, c, 0, in_down, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (n > 0) in_down -= n, moved = 1;
            else if (errno != EAGAIN) break;
        }
        if (!moved && !spin) {
            struct epoll_event events[4];
            epoll_wait(ep, events, 4, 1000);
        }
    }
    close(ep);
    close(up[0]), close(up[1]), close(down[0]), close(down[1]);
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s LPORT OPORT MODE RCVLOWAT NOTSENT_LOWAT\n", argv[0]);
        return 2;
    }
    int spin = atoi(argv[3]), rcvlowat = atoi(argv[4]), notsent = atoi(argv[5]);
    int l = socket(AF_INET, SOCK_STREAM, 0);
    set_int(l, SOL_SOCKET, SO_REUSEADDR, 1);
    struct sockaddr_in listen_at = loopback(atoi(argv[1])), origin = loopback(atoi(argv[2]));
    if (bind(l, (void *)&listen_at, sizeof listen_at) || listen(l, 128)) {
        perror("bind");
        return 1;
    }
    for (;;) {
        int c = accept(l, 0, 0);
        if (c < 0) continue;
        int o = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(o, (void *)&origin, sizeof origin) == 0) {
            set_int(c, IPPROTO_TCP, TCP_NODELAY, 1);
            set_int(o, IPPROTO_TCP, TCP_NODELAY, 1);
            if (notsent) set_int(c, IPPROTO_TCP, TCP_NOTSENT_LOWAT, notsent);
            set_int(o, SOL_SOCKET, SO_RCVBUF, 4 << 20);
            if (rcvlowat) set_int(o, SOL_SOCKET, SO_RCVLOWAT, rcvlowat);
            fcntl(c, F_SETFL, O_NONBLOCK);
            fcntl(o, F_SETFL, O_NONBLOCK);
            relay(c, o, spin);
        } else {
            perror("connect");
        }
        close(c);
        close(o);
    }
}
