// Blocks its main thread in one system call (argv[1]: read, futex, nanosleep, accept, epoll)
// so that tests can attach while it sleeps there, then checks the call completes as if nothing
// happened. It has one patchable function so that Hotwire has a site to attach for.
#include <arpa/inet.h>
#include <linux/futex.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static int word;

__attribute__((noipa)) void report(const char *what, long value)
{
    printf("%s %ld\n", what, value);
    fflush(stdout);
}

static void *waker(void *arg)
{
    (void)arg;
    char buf[64];
    if (read(0, buf, sizeof buf) > 0) {
        __atomic_store_n(&word, 1, __ATOMIC_SEQ_CST);
        syscall(SYS_futex, &word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
    }
    return NULL;
}

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "read";
    int listener = -1;
    if (strcmp(mode, "accept") == 0) {
        listener = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        bind(listener, (struct sockaddr *)&a, sizeof a);
        listen(listener, 1);
        socklen_t len = sizeof a;
        getsockname(listener, (struct sockaddr *)&a, &len);
        printf("ready %d %d\n", getpid(), ntohs(a.sin_port));
    } else {
        printf("ready %d\n", getpid());
    }
    fflush(stdout);

    if (strcmp(mode, "read") == 0) {
        char buf[64] = { 0 };
        ssize_t n = read(0, buf, sizeof buf);
        report("read", n);
    } else if (strcmp(mode, "futex") == 0) {
        pthread_t t;
        pthread_create(&t, NULL, waker, NULL);
        while (__atomic_load_n(&word, __ATOMIC_SEQ_CST) == 0)
            syscall(SYS_futex, &word, FUTEX_WAIT_PRIVATE, 0, NULL, NULL, 0);
        report("futex", word);
    } else if (strcmp(mode, "nanosleep") == 0) {
        long start = now_ms();
        struct timespec ts = { 1, 500 * 1000 * 1000 };
        int r = nanosleep(&ts, NULL);
        report(r == 0 ? "slept" : "interrupted", now_ms() - start);
    } else if (strcmp(mode, "accept") == 0) {
        int c = accept(listener, NULL, NULL);
        report("accepted", c >= 0);
    } else if (strcmp(mode, "epoll") == 0) {
        int ep = epoll_create1(0);
        struct epoll_event ev = { .events = EPOLLIN, .data.fd = 0 };
        epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev);
        struct epoll_event out;
        int n = epoll_wait(ep, &out, 1, -1);
        report("epoll", n);
    }
    char buf[64];
    while (read(0, buf, sizeof buf) > 0) {
    }
    return 0;
}
