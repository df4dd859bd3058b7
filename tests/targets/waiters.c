// Threads blocked in the calls that fail with EINTR after a stop (signal(7)), each in a loop that
// counts the EINTRs it sees: sigwaitinfo, sigtimedwait, semop, semtimedop, io_getevents, recv on
// a socket with SO_RCVTIMEO, epoll_wait. And threads blocked in calls the kernel restarts after a
// stop, each counting every return, which must never come (EINTR or early): poll on a pipe, read
// on a pipe, FUTEX_WAIT, accept (nobody writes, wakes or connects), and a 60 s nanosleep (early
// only before its time). The main thread reads commands on stdin:
//   counts  print "eintr N" (all of them) then one "CALL N" line per call, and "end"
//   quit    remove the semaphore set and exit
// f() is a patchable function for Hotwire to trace (every attach converts its sled, which stops
// every thread briefly); two more threads call f() busily and sleep in nanosleep, and "counts"
// also prints "f N", the calls of f so far (progress).
#define _GNU_SOURCE
#include <errno.h>
#include <linux/aio_abi.h>
#include <linux/futex.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ipc.h>
#include <sys/sem.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

enum { SIGWAITINFO, SIGTIMEDWAIT, SEMOP, SEMTIMEDOP, IO_GETEVENTS, RECV, EPOLL_WAIT, POLL, READ, FUTEX, ACCEPT, NANOSLEEP, CALLS };
static const char *names[CALLS] = {"sigwaitinfo", "sigtimedwait", "semop", "semtimedop", "io_getevents", "recv", "epoll_wait",
                                   "poll", "read", "futex", "accept", "nanosleep"};
static volatile long eintr[CALLS];
static volatile long started;
static int semid, sock, epfd, pipe_in, listener;
static int futex_word;
static aio_context_t aio;

static volatile long f_calls;

__attribute__((noipa)) void f(void)
{
    __atomic_fetch_add(&f_calls, 1, __ATOMIC_RELAXED);
}

static void *busy(void *arg)
{
    (void)arg;
    for (;;)
        f();
    return NULL;
}

static void *sleeper(void *arg)
{
    (void)arg;
    for (;;) {
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
        f();
    }
    return NULL;
}

static void *waiter(void *arg)
{
    long which = (long)arg;
    __atomic_fetch_add(&started, 1, __ATOMIC_SEQ_CST);
    for (;;) {
        long r = 0;
        struct timespec minute = {60, 0};
        switch (which) {
        case SIGWAITINFO: {
            sigset_t set;
            sigemptyset(&set);
            sigaddset(&set, SIGUSR2);
            r = sigwaitinfo(&set, NULL);
            break;
        }
        case SIGTIMEDWAIT: {
            sigset_t set;
            sigemptyset(&set);
            sigaddset(&set, SIGRTMIN + 1);
            r = sigtimedwait(&set, NULL, &minute);
            break;
        }
        case SEMOP: {
            struct sembuf op = {0, -1, 0};
            r = semop(semid, &op, 1);
            break;
        }
        case SEMTIMEDOP: {
            struct sembuf op = {1, -1, 0};
            r = semtimedop(semid, &op, 1, &minute);
            break;
        }
        case IO_GETEVENTS: {
            struct io_event ev;
            r = syscall(SYS_io_getevents, aio, 1, 1, &ev, &minute);
            break;
        }
        case RECV: {
            char buf[16];
            r = recv(sock, buf, sizeof buf, 0);
            break;
        }
        case EPOLL_WAIT: {
            struct epoll_event ev;
            r = epoll_wait(epfd, &ev, 1, 60000);
            break;
        }
        // Restarted by the kernel after a stop: any return at all is wrong (nothing ever comes).
        case POLL: {
            struct pollfd p = {pipe_in, POLLIN, 0};
            poll(&p, 1, -1);
            r = -2;
            break;
        }
        case READ: {
            char buf[16];
            read(pipe_in, buf, sizeof buf);
            r = -2;
            break;
        }
        case FUTEX:
            syscall(SYS_futex, &futex_word, FUTEX_WAIT_PRIVATE, 0, NULL, NULL, 0);
            r = -2;
            break;
        case ACCEPT:
            accept(listener, NULL, NULL);
            r = -2;
            break;
        case NANOSLEEP: {
            struct timespec t0, t1, want = minute;
            clock_gettime(CLOCK_MONOTONIC, &t0);
            nanosleep(&want, NULL);
            clock_gettime(CLOCK_MONOTONIC, &t1);
            r = t1.tv_sec - t0.tv_sec < 59 ? -2 : 0;   // woken before its time
            break;
        }
        }
        if ((r < 0 && errno == EINTR) || r == -2)
            __atomic_fetch_add(&eintr[which], 1, __ATOMIC_SEQ_CST);
    }
    return NULL;
}

int main(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR2);
    sigaddset(&set, SIGRTMIN + 1);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    semid = semget(IPC_PRIVATE, 2, 0600);
    int pair[2];
    socketpair(AF_UNIX, SOCK_STREAM, 0, pair);
    sock = pair[0];
    struct timeval minute = {60, 0};
    setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &minute, sizeof minute);
    epfd = epoll_create1(0);
    int fds[2];
    if (pipe(fds) < 0)
        return 1;
    pipe_in = fds[0];
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    listener = socket(AF_INET, SOCK_STREAM, 0);
    if (listener < 0 || bind(listener, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(listener, 4) < 0)
        return 1;
    if (semid < 0 || syscall(SYS_io_setup, 4, &aio) < 0 || epfd < 0) {
        perror("setup");
        return 1;
    }
    pthread_t t;
    for (long i = 0; i < CALLS; i++)
        pthread_create(&t, NULL, waiter, (void *)i);
    while (__atomic_load_n(&started, __ATOMIC_SEQ_CST) < CALLS)
        usleep(1000);
    pthread_create(&t, NULL, busy, NULL);
    pthread_create(&t, NULL, sleeper, NULL);
    usleep(50000);
    f();
    printf("ready %d\n", getpid());
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "counts", 6) == 0) {
            long sum = 0;
            for (int i = 0; i < CALLS; i++)
                sum += eintr[i];
            printf("eintr %ld\n", sum);
            for (int i = 0; i < CALLS; i++)
                printf("%s %ld\n", names[i], eintr[i]);
            printf("f %ld\n", __atomic_load_n(&f_calls, __ATOMIC_RELAXED));
            printf("end\n");
            fflush(stdout);
        } else if (strncmp(line, "quit", 4) == 0) {
            break;
        }
    }
    semctl(semid, 0, IPC_RMID);
    return 0;
}
