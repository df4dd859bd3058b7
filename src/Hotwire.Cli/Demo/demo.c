// Hotwire's demo target: a tiny multithreaded "service" that handles requests forever.
// Built by `hotwire demo` with -fpatchable-function-entry=5 so that every function has a site.
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define WORKERS 3

volatile unsigned long handled[WORKERS];

__attribute__((noipa)) unsigned checksum(const char *s)
{
    unsigned h = 2166136261u;
    while (*s)
        h = (h ^ (unsigned char)*s++) * 16777619u;
    return h;
}

__attribute__((noipa)) int parse_request(const char *line, char *user, size_t n)
{
    const char *p = strchr(line, ' ');
    if (!p)
        return -1;
    snprintf(user, n, "%s", p + 1);
    return 0;
}

__attribute__((noipa)) long lookup_user(const char *user)
{
    return (long)(checksum(user) % 1000);
}

__attribute__((noipa)) long fib(int n)
{
    return n < 2 ? n : fib(n - 1) + fib(n - 2);
}

__attribute__((noipa)) long handle_request(int worker, const char *line)
{
    char user[32];
    if (parse_request(line, user, sizeof user) != 0)
        return -1;
    long id = lookup_user(user);
    handled[worker]++;
    return id + fib(8 + worker);
}

static void *worker_main(void *arg)
{
    int id = (int)(long)arg;
    static const char *users[] = { "GET alice", "GET bob", "GET carol", "GET dave" };
    char name[16];
    snprintf(name, sizeof name, "worker-%d", id);
    pthread_setname_np(pthread_self(), name);
    for (unsigned long i = 0;; i++) {
        handle_request(id, users[i % 4]);
        struct timespec ts = { 0, 2 * 1000 * 1000 };
        nanosleep(&ts, NULL);
    }
    return NULL;
}

int main(void)
{
    pthread_t threads[WORKERS];
    for (long i = 0; i < WORKERS; i++)
        pthread_create(&threads[i], NULL, worker_main, (void *)i);
    printf("ready %d\n", getpid());
    fflush(stdout);
    sleep(120); /* hotwire demo stops it long before; never outlive a forgotten demo */
    return 0;
}
