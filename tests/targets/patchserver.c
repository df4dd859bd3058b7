#define _GNU_SOURCE
// A small multithreaded TCP server for the live-patch tests. Listens on 127.0.0.1 (a free port),
// prints "ready PID PORT", then serves with 4 threads. Per connection, one request per line:
//   N        the reply is handler(N): "old 2N" (the bug the tests fix: it should be "new 3N")
//   stats    "served S": requests handled so far (a static counter the handlers update)
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static long served;
static int listener;

__attribute__((noipa)) static long scale(long n) { return n * 3; }

__attribute__((noipa)) int handler(long n, char *out, size_t size)
{
    __atomic_fetch_add(&served, 1, __ATOMIC_RELAXED);
    return snprintf(out, size, "old %ld\n", n * 2);
}

// Keeps scale() in the program (the fix calls it).
__attribute__((noipa)) long unused_scale(long n) { return scale(n); }

static void serve(int fd)
{
    FILE *in = fdopen(fd, "r");
    char line[128], out[128];
    while (fgets(line, sizeof line, in)) {
        int len;
        if (strncmp(line, "stats", 5) == 0)
            len = snprintf(out, sizeof out, "served %ld\n", __atomic_load_n(&served, __ATOMIC_RELAXED));
        else
            len = handler(atol(line), out, sizeof out);
        if (write(fd, out, len) != len)
            break;
    }
    fclose(in);
}

static void *worker(void *arg)
{
    (void)arg;
    for (;;) {
        int fd = accept(listener, NULL, NULL);
        if (fd >= 0)
            serve(fd);
    }
    return NULL;
}

int main(void)
{
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof addr;
    listener = socket(AF_INET, SOCK_STREAM, 0);
    if (listener < 0 || bind(listener, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(listener, 64) < 0)
        return 1;
    getsockname(listener, (struct sockaddr *)&addr, &len);
    printf("ready %d %d\n", getpid(), ntohs(addr.sin_port));
    fflush(stdout);
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, worker, NULL);
    pthread_join(t[0], NULL);
    return 0;
}
