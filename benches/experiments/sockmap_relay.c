// An experiment, not part of Causeway: a TCP relay done inside the kernel by a BPF sockmap, to
// measure whether the nlb should relay that way (docs/benchmarks.md, run of 2026-12-07 15:20).
//
// It listens on 127.0.0.1:LPORT and, for each client, connects to 127.0.0.1:OPORT and puts both
// sockets in a sockmap whose sk_skb verdict program (hand-assembled below) redirects every
// received segment to the other socket. User space never sees the bytes; it only closes both
// sockets when either side hangs up (no half-close: this measures the data path, nothing else).
// The data that arrived before the sockets entered the map is pushed through the program by
// setting SO_RCVLOWAT, which makes TCP call the socket's data_ready again.
//
//   gcc -O2 -o /tmp/sockmap_relay benches/experiments/sockmap_relay.c
//   bash benches/load/run.sh --scenario tcp --kernel-threads
//        --extra-proxy 'sockmap relay=/tmp/sockmap_relay {port} {origin}'
//
// Needs root (CAP_BPF and CAP_NET_ADMIN) and a kernel with CONFIG_BPF_STREAM_PARSER.
#define _GNU_SOURCE
#include <linux/bpf.h>
#include <sys/syscall.h>
#include <sys/socket.h>
#include <sys/epoll.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <stdint.h>
#include <fcntl.h>

static long bpf(int cmd, union bpf_attr *a) { return syscall(__NR_bpf, cmd, a, sizeof(*a)); }
#define INS(c,d,s,o,i) ((struct bpf_insn){.code=(c),.dst_reg=(d),.src_reg=(s),.off=(o),.imm=(i)})
static int map_create(int type, int ks, int vs, int n) {
  union bpf_attr a; memset(&a,0,sizeof a); a.map_type=type; a.key_size=ks; a.value_size=vs; a.max_entries=n;
  int fd = bpf(BPF_MAP_CREATE,&a); if (fd<0) {perror("map_create"); exit(1);} return fd; }
static int upd(int map, void *k, void *v) { union bpf_attr a; memset(&a,0,sizeof a); a.map_fd=map; a.key=(uint64_t)k; a.value=(uint64_t)v; a.flags=BPF_ANY; return bpf(BPF_MAP_UPDATE_ELEM,&a); }
static int del(int map, void *k) { union bpf_attr a; memset(&a,0,sizeof a); a.map_fd=map; a.key=(uint64_t)k; return bpf(BPF_MAP_DELETE_ELEM,&a); }
int E, M, P;
struct conn { int fd, peer, idx; };
#define MAXC 65536
int main(int argc, char **argv) {
  int lport = atoi(argv[1]), oport = atoi(argv[2]);
  E = map_create(BPF_MAP_TYPE_SOCKMAP, 4, 4, MAXC);
  M = map_create(BPF_MAP_TYPE_SOCKMAP, 4, 4, MAXC);
  P = map_create(BPF_MAP_TYPE_HASH, 8, 4, MAXC);
  struct bpf_insn prog[] = {
    INS(BPF_ALU64|BPF_MOV|BPF_X, 6, 1, 0, 0),          // r6 = skb
    INS(BPF_JMP|BPF_CALL, 0, 0, 0, BPF_FUNC_get_socket_cookie),
    INS(BPF_STX|BPF_MEM|BPF_DW, 10, 0, -8, 0),         // *(u64*)(r10-8) = r0
    INS(BPF_LD|BPF_DW|BPF_IMM, 1, BPF_PSEUDO_MAP_FD, 0, P), INS(0,0,0,0,0),
    INS(BPF_ALU64|BPF_MOV|BPF_X, 2, 10, 0, 0),
    INS(BPF_ALU64|BPF_ADD|BPF_K, 2, 0, 0, -8),
    INS(BPF_JMP|BPF_CALL, 0, 0, 0, BPF_FUNC_map_lookup_elem),
    INS(BPF_JMP|BPF_JEQ|BPF_K, 0, 0, 7, 0),            // if r0 == 0 goto pass
    INS(BPF_LDX|BPF_MEM|BPF_W, 3, 0, 0, 0),            // r3 = *(u32*)r0
    INS(BPF_ALU64|BPF_MOV|BPF_X, 1, 6, 0, 0),
    INS(BPF_LD|BPF_DW|BPF_IMM, 2, BPF_PSEUDO_MAP_FD, 0, E), INS(0,0,0,0,0),
    INS(BPF_ALU64|BPF_MOV|BPF_K, 4, 0, 0, 0),
    INS(BPF_JMP|BPF_CALL, 0, 0, 0, BPF_FUNC_sk_redirect_map),
    INS(BPF_JMP|BPF_EXIT, 0, 0, 0, 0),
    INS(BPF_ALU64|BPF_MOV|BPF_K, 0, 0, 0, 1),          // pass: r0 = SK_PASS
    INS(BPF_JMP|BPF_EXIT, 0, 0, 0, 0),
  };
  char log[65536]; union bpf_attr a; memset(&a,0,sizeof a);
  a.prog_type = BPF_PROG_TYPE_SK_SKB; a.insns=(uint64_t)prog; a.insn_cnt=sizeof prog/sizeof prog[0];
  a.license=(uint64_t)"GPL"; a.log_buf=(uint64_t)log; a.log_size=sizeof log; a.log_level=1;
  int pf = bpf(BPF_PROG_LOAD,&a); if (pf<0) { perror("prog_load"); fprintf(stderr,"%s\n",log); exit(1); }
  memset(&a,0,sizeof a); a.target_fd=M; a.attach_bpf_fd=pf; a.attach_type=BPF_SK_SKB_VERDICT;
  if (bpf(BPF_PROG_ATTACH,&a)<0) { perror("attach"); exit(1); }
  int ls = socket(AF_INET, SOCK_STREAM, 0); int one=1; setsockopt(ls,SOL_SOCKET,SO_REUSEADDR,&one,4);
  struct sockaddr_in sa={.sin_family=AF_INET,.sin_port=htons(lport),.sin_addr.s_addr=htonl(0x7f000001)};
  if (bind(ls,(void*)&sa,sizeof sa)<0) {perror("bind");exit(1);} listen(ls,1024);
  int ep = epoll_create1(0); struct epoll_event ev={.events=EPOLLIN,.data.u64=(uint64_t)-1}; epoll_ctl(ep,EPOLL_CTL_ADD,ls,&ev);
  static int peer_of[MAXC*2]; int next_idx=0; static int freelist[MAXC]; int nfree=0;
  static int idx_of[MAXC*2];
  fprintf(stderr,"ready\n");
  for (;;) {
    struct epoll_event evs[64]; int n = epoll_wait(ep, evs, 64, -1);
    for (int i=0;i<n;i++) {
      if (evs[i].data.u64 == (uint64_t)-1) {
        int c = accept4(ls,0,0,0); if (c<0) continue;
        int o = socket(AF_INET,SOCK_STREAM,0); struct sockaddr_in oa={.sin_family=AF_INET,.sin_port=htons(oport),.sin_addr.s_addr=htonl(0x7f000001)};
        if (connect(o,(void*)&oa,sizeof oa)<0) { perror("connect"); close(c); close(o); continue; }
        setsockopt(c,IPPROTO_TCP,TCP_NODELAY,&one,4); setsockopt(o,IPPROTO_TCP,TCP_NODELAY,&one,4);
        int ci = nfree ? freelist[--nfree] : next_idx++; int oi = nfree ? freelist[--nfree] : next_idx++;
        uint64_t ck, ok; socklen_t l=8; getsockopt(c,SOL_SOCKET,SO_COOKIE,&ck,&l); l=8; getsockopt(o,SOL_SOCKET,SO_COOKIE,&ok,&l);
        uint32_t v; // A client that already hung up cannot enter the map (EOPNOTSUPP): drop it.
        if (upd(E,&ci,&c) || upd(E,&oi,&o)) { del(E,&ci); del(E,&oi); freelist[nfree++]=ci; freelist[nfree++]=oi; close(c); close(o); continue; }
        v=oi; upd(P,&ck,&v); v=ci; upd(P,&ok,&v);
        if (upd(M,&oi,&o)) perror("M target");
        if (upd(M,&ci,&c)) perror("M client");
        int lw=1; setsockopt(o,SOL_SOCKET,SO_RCVLOWAT,&lw,4); setsockopt(c,SOL_SOCKET,SO_RCVLOWAT,&lw,4);
        peer_of[c]=o; peer_of[o]=c; idx_of[c]=ci; idx_of[o]=oi;
        struct epoll_event e2={.events=EPOLLRDHUP}; e2.data.u64=c; epoll_ctl(ep,EPOLL_CTL_ADD,c,&e2); e2.data.u64=o; epoll_ctl(ep,EPOLL_CTL_ADD,o,&e2);
      } else {
        int fd = evs[i].data.u64; int p = peer_of[fd]; if (p<0) continue;
        // prototype: close both on any hangup
        for (int k=0;k<2;k++){ int f = k?p:fd; uint32_t ix = idx_of[f]; del(M,&ix); del(E,&ix); freelist[nfree++]=ix; uint64_t cc; socklen_t l=8; getsockopt(f,SOL_SOCKET,SO_COOKIE,&cc,&l); del(P,&cc); peer_of[f]=-1; close(f);}
      }
    }
  }
}
