/*
 * loadgen: a memcached load generator that checks every reply.
 *
 * Several connections (one thread each) do set/get/multi-get with values known in advance: each
 * connection owns its keys ("rw:<pid>:<conn>:<key>"), remembers the version it last stored under each,
 * and regenerates the expected bytes from (conn, key, version). Any reply that is not exactly the
 * expected one is counted: `errors` (a failed connection, a malformed or unexpected reply, a
 * timeout) and `wrong` (a value whose bytes, length or presence differ from what was stored).
 *
 * Bounded in time and count; stops early on SIGINT/SIGTERM. Prints one summary line:
 *   loadgen: conns=4 seconds=5.00 ops=123456 ops_per_s=24691 errors=0 wrong=0
 * and exits 0 only if errors == 0, wrong == 0 and ops > 0.
 *
 * usage: loadgen -p PORT [-h 127.0.0.1] [-c CONNS] [-t SECONDS] [-n MAX_OPS_PER_CONN] [-k KEYS]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static const char *host = "127.0.0.1";
static int port, conns = 4, keys = 500;
static double seconds = 5;
static long max_ops = 100000000;
static volatile sig_atomic_t stop;
static atomic_long total_ops, total_errors, total_wrong;
static atomic_int reported;
static int run_id;

struct conn {
    int id, fd;
    char buf[65536];
    size_t start, end;
    uint32_t *version; /* per key: 0 = never stored */
    uint64_t rng;
};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t next(uint64_t *s)
{
    *s ^= *s << 13; *s ^= *s >> 7; *s ^= *s << 17;
    return *s;
}

static void problem(struct conn *c, const char *what, const char *key)
{
    if (atomic_fetch_add(&reported, 1) < 10) {
        fprintf(stderr, "loadgen: conn %d: %s%s%s\n", c->id, what, key ? " for " : "", key ? key : "");
    }
}

/* The value stored under (conn, key, version): its length and bytes are a function of the three. */
static size_t value_of(int conn, int key, uint32_t version, char *out)
{
    uint64_t h = (uint64_t)conn * 0x9E3779B97F4A7C15ull ^ (uint64_t)key * 0xC2B2AE3D27D4EB4Full ^ version;
    next(&h);
    size_t len = 8 + next(&h) % 1500;
    int n = snprintf(out, len + 1, "%d:%d:%u:", conn, key, version);
    for (size_t i = (size_t)n; i < len; i++) {
        out[i] = (char)('A' + next(&h) % 58);
    }
    out[len] = 0;
    return len;
}

static int send_all(struct conn *c, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
        if (w <= 0) {
            if (w < 0 && errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int fill(struct conn *c)
{
    if (c->start > 0) {
        memmove(c->buf, c->buf + c->start, c->end - c->start);
        c->end -= c->start;
        c->start = 0;
    }
    if (c->end == sizeof c->buf) return -1;
    for (;;) {
        ssize_t r = recv(c->fd, c->buf + c->end, sizeof c->buf - c->end, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1; /* closed, error, or the 10 s receive timeout */
        c->end += (size_t)r;
        return 0;
    }
}

/* One reply line without its \r\n, NUL-terminated in place. */
static char *read_line(struct conn *c)
{
    for (;;) {
        char *p = memchr(c->buf + c->start, '\n', c->end - c->start);
        if (p && p > c->buf + c->start && p[-1] == '\r') {
            char *line = c->buf + c->start;
            p[-1] = 0;
            c->start = (size_t)(p + 1 - c->buf);
            return line;
        }
        if (fill(c) < 0) return NULL;
    }
}

/* n bytes of data followed by \r\n, compared with `want`. Returns 1 equal, 0 different, -1 error. */
static int read_data(struct conn *c, const char *want, size_t n)
{
    while (c->end - c->start < n + 2) {
        if (fill(c) < 0) return -1;
    }
    const char *p = c->buf + c->start;
    int same = memcmp(p, want, n) == 0;
    if (p[n] != '\r' || p[n + 1] != '\n') return -1;
    c->start += n + 2;
    return same;
}

static int connect_to(struct conn *c)
{
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (c->fd < 0) return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, host, &a.sin_addr);
    struct timeval tv = {.tv_sec = 10};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, (struct sockaddr *)&a, sizeof a) < 0) {
        close(c->fd);
        c->fd = -1;
        return -1;
    }
    c->start = c->end = 0;
    return 0;
}

static char *key_name(struct conn *c, int k, char *out)
{
    sprintf(out, "rw:%d:%d:%d", run_id, c->id, k); /* unique per run: no key left by an earlier one */
    return out;
}

/* set: expects STORED. Returns 0 ok, -1 connection unusable. */
static int do_set(struct conn *c, int k, char *cmd, char *val)
{
    char key[64];
    uint32_t v = c->version[k] + 1;
    size_t len = value_of(c->id, k, v, val);
    int n = sprintf(cmd, "set %s 0 0 %zu\r\n", key_name(c, k, key), len);
    memcpy(cmd + n, val, len);
    memcpy(cmd + n + len, "\r\n", 2);
    if (send_all(c, cmd, (size_t)n + len + 2) < 0) { problem(c, "send failed", key); return -1; }
    char *line = read_line(c);
    if (!line) { problem(c, "no reply to set", key); return -1; }
    if (strcmp(line, "STORED") != 0) {
        problem(c, "unexpected reply to set", key);
        atomic_fetch_add(&total_errors, 1);
        return 0;
    }
    c->version[k] = v;
    return 0;
}

/* get of one or more keys (in order): every stored key must come back with its exact value. */
static int do_get(struct conn *c, const int *ks, int nk, char *cmd, char *val)
{
    char key[64];
    int n = sprintf(cmd, "get");
    for (int i = 0; i < nk; i++) n += sprintf(cmd + n, " %s", key_name(c, ks[i], key));
    n += sprintf(cmd + n, "\r\n");
    if (send_all(c, cmd, (size_t)n) < 0) { problem(c, "send failed", "get"); return -1; }
    int i = 0;
    for (;;) {
        char *line = read_line(c);
        if (!line) { problem(c, "no reply to get", key); return -1; }
        if (strcmp(line, "END") == 0) break;
        char rkey[256];
        unsigned flags;
        size_t len;
        if (sscanf(line, "VALUE %255s %u %zu", rkey, &flags, &len) != 3) {
            problem(c, "malformed reply to get", line);
            atomic_fetch_add(&total_errors, 1);
            return -1;
        }
        int j = i;
        while (j < nk && strcmp(rkey, key_name(c, ks[j], key)) != 0) j++;
        if (j == nk || c->version[ks[j]] == 0) { /* not asked for, out of order, or never stored */
            problem(c, "get returned a key not asked for, out of order, or never stored", rkey);
            atomic_fetch_add(&total_wrong, 1);
            return -1;
        }
        for (; i < j; i++) { /* keys skipped over: stored ones are missing */
            if (c->version[ks[i]] != 0) {
                problem(c, "stored key missing from get", key_name(c, ks[i], key));
                atomic_fetch_add(&total_wrong, 1);
            }
        }
        size_t want = value_of(c->id, ks[i], c->version[ks[i]], val);
        if (len != want || flags != 0) {
            problem(c, "wrong length or flags", rkey);
            atomic_fetch_add(&total_wrong, 1);
            return -1;
        }
        int same = read_data(c, val, len);
        if (same < 0) { problem(c, "truncated value", rkey); return -1; }
        if (!same) { problem(c, "wrong value", rkey); atomic_fetch_add(&total_wrong, 1); }
        i++;
    }
    for (; i < nk; i++) {
        if (c->version[ks[i]] != 0) {
            problem(c, "stored key missing from get", key_name(c, ks[i], key));
            atomic_fetch_add(&total_wrong, 1);
        }
    }
    return 0;
}

static void *worker(void *arg)
{
    struct conn *c = arg;
    char *cmd = malloc(4096), *val = malloc(4096);
    c->version = calloc((size_t)keys, sizeof *c->version);
    c->rng = 0x1234567ull + (uint64_t)c->id * 7919;
    double end = now() + seconds;
    if (connect_to(c) < 0) {
        problem(c, "cannot connect", NULL);
        atomic_fetch_add(&total_errors, 1);
        return NULL;
    }
    for (long op = 0; op < max_ops && !stop; op++) {
        if ((op & 63) == 0 && now() >= end) break;
        uint64_t r = next(&c->rng);
        int k = (int)(r % (uint64_t)keys);
        int rc;
        if (c->version[k] == 0 || (r >> 32) % 3 == 0) {
            rc = do_set(c, k, cmd, val);
        } else if ((r >> 40) % 8 == 0) {
            int ks[3] = {k, (k + 1) % keys, (k + 7) % keys};
            rc = do_get(c, ks, 3, cmd, val);
        } else {
            rc = do_get(c, &k, 1, cmd, val);
        }
        if (rc < 0) {
            atomic_fetch_add(&total_errors, 1);
            break; /* the connection's state is unknown: stop this connection */
        }
        atomic_fetch_add_explicit(&total_ops, 1, memory_order_relaxed);
    }
    close(c->fd);
    free(cmd);
    free(val);
    free(c->version);
    return NULL;
}

static void on_signal(int sig) { (void)sig; stop = 1; }

int main(int argc, char **argv)
{
    int o;
    while ((o = getopt(argc, argv, "h:p:c:t:n:k:")) != -1) {
        switch (o) {
        case 'h': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'c': conns = atoi(optarg); break;
        case 't': seconds = atof(optarg); break;
        case 'n': max_ops = atol(optarg); break;
        case 'k': keys = atoi(optarg); break;
        default:
            fprintf(stderr, "usage: loadgen -p PORT [-h HOST] [-c CONNS] [-t SECONDS] [-n MAX_OPS_PER_CONN] [-k KEYS]\n");
            return 2;
        }
    }
    if (port <= 0 || conns <= 0 || conns > 256 || keys <= 2 || seconds <= 0 || seconds > 3600) {
        fprintf(stderr, "loadgen: bad arguments (-p PORT is required; -c 1..256; -t 0..3600 s)\n");
        return 2;
    }
    run_id = (int)getpid();
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    struct conn *cs = calloc((size_t)conns, sizeof *cs);
    pthread_t *ts = calloc((size_t)conns, sizeof *ts);
    double t0 = now();
    for (int i = 0; i < conns; i++) {
        cs[i].id = i;
        pthread_create(&ts[i], NULL, worker, &cs[i]);
    }
    for (int i = 0; i < conns; i++) pthread_join(ts[i], NULL);
    double dt = now() - t0;
    long ops = atomic_load(&total_ops), errors = atomic_load(&total_errors), wrong = atomic_load(&total_wrong);
    printf("loadgen: conns=%d seconds=%.2f ops=%ld ops_per_s=%.0f errors=%ld wrong=%ld\n",
           conns, dt, ops, ops / dt, errors, wrong);
    fflush(stdout);
    return errors == 0 && wrong == 0 && ops > 0 ? 0 : 1;
}
