// An experiment, not part of Causeway: the leanest user-space TCP relay, to measure how close
// any relay that reads and writes the bytes can come to the nlb's small-request goal (issue 4:
// 0.8x HAProxy's CPU per request) on this machine (docs/benchmarks.md, run of 2026-12-08
// 00:30). One thread, level-triggered epoll, one read and one write per chunk, a 16 KiB
// buffer each way, TCP_NODELAY on both sides; no timeouts, no metrics, no PROXY header.
//
//   gcc -O2 -o /tmp/epoll_relay benches/experiments/epoll_relay.c
//   bash benches/load/run.sh --scenario tcp
//        --extra-proxy 'epoll relay (experiment)=/tmp/epoll_relay {port} {origin}'
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF 16384

// One side of a flow: its socket, the bytes read from the other side still to be written to
// it, and its partner.
struct side {
    int fd;
    int closed_write;  // we shut our writing to this side down (the other side hung up)
    int eof;           // this side hung up its writing
    size_t len, off;   // pending bytes for this side in buf[off..len]
    struct side *peer;
    char buf[BUF];
};

static int ep;

static struct sockaddr_in loopback(int port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    return a;
}

static void watch(struct side *s, int op) {
    // Read from s only while its peer's buffer is empty; wait for writability only while
    // s has pending bytes.
    struct epoll_event ev = {.data.ptr = s};
    if (!s->eof && s->peer->len == 0) ev.events |= EPOLLIN;
    if (s->len > s->off) ev.events |= EPOLLOUT;
    epoll_ctl(ep, op, s->fd, &ev);
}

static void drop(struct side *s) {
    struct side *p = s->peer;
    close(s->fd);
    close(p->fd);
    free(s < p ? s : p);
}

// Writes s's pending bytes; returns -1 if the flow ended.
static int flush(struct side *s) {
    while (s->off < s->len) {
        ssize_t n = write(s->fd, s->buf + s->off, s->len - s->off);
        if (n < 0) return errno == EAGAIN ? 0 : -1;
        s->off += n;
    }
    s->off = s->len = 0;
    if (s->peer->eof && !s->closed_write) shutdown(s->fd, SHUT_WR), s->closed_write = 1;
    return 0;
}

static int on_event(struct side *s, unsigned events) {
    struct side *p = s->peer;
    int before_in = !s->eof && p->len == 0, before_out = s->len > s->off;
    int p_before_in = !p->eof && s->len == 0, p_before_out = p->len > p->off;
    if (events & EPOLLOUT && flush(s) < 0) return -1;
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR) && !s->eof && p->len == 0) {
        ssize_t n = read(s->fd, p->buf, BUF);
        if (n < 0 && errno != EAGAIN) return -1;
        if (n == 0) s->eof = 1;
        if (n > 0) p->len = n, p->off = 0;
        if (flush(p) < 0) return -1;
    }
    if (s->eof && p->eof && s->len == 0 && p->len == 0) return -1;
    if (before_in != (!s->eof && p->len == 0) || before_out != (s->len > s->off)) watch(s, EPOLL_CTL_MOD);
    if (p_before_in != (!p->eof && s->len == 0) || p_before_out != (p->len > p->off)) watch(p, EPOLL_CTL_MOD);
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 3) return fprintf(stderr, "usage: epoll_relay LPORT OPORT\n"), 2;
    struct sockaddr_in la = loopback(atoi(argv[1])), oa = loopback(atoi(argv[2]));
    int l = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(l, (void *)&la, sizeof la) || listen(l, 1024)) return perror("listen"), 1;
    ep = epoll_create1(0);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, l, &lev);
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            struct side *s = evs[i].data.ptr;
            if (s == (void *)1) continue;  // a side of a pair this batch already ended
            if (s == NULL) {
                int c;
                while ((c = accept4(l, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    // A blocking connect on loopback finishes at once; the experiment keeps
                    // it simple.
                    int o = socket(AF_INET, SOCK_STREAM, 0);
                    if (connect(o, (void *)&oa, sizeof oa)) {
                        perror("connect");
                        close(o), close(c);
                        continue;
                    }
                    if (fcntl(o, F_SETFL, O_NONBLOCK)) perror("fcntl");
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    setsockopt(o, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct side *pair = calloc(2, sizeof *pair);
                    pair[0].fd = c, pair[1].fd = o;
                    pair[0].peer = &pair[1], pair[1].peer = &pair[0];
                    watch(&pair[0], EPOLL_CTL_ADD);
                    watch(&pair[1], EPOLL_CTL_ADD);
                }
                continue;
            }
            if (on_event(s, evs[i].events) < 0) {
                // A later event of this batch may name the freed partner: mark it.
                struct side *p = s->peer;
                epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
                epoll_ctl(ep, EPOLL_CTL_DEL, p->fd, NULL);
                for (int j = i + 1; j < n; j++)
                    if (evs[j].data.ptr == p) evs[j].events = 0, evs[j].data.ptr = (void *)1;
                drop(s);
            }
        }
    }
}
