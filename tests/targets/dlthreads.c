// Loads libraries with dlopen while Hotwire is attached and calls into them from 4 threads, on
// commands read from stdin (the program has patch sites of its own, so Hotwire can attach first):
//   load LIB SYMBOL [N]  dlopen LIB (beside this program), look SYMBOL up, print "loaded ADDRESS NS"
//                        (NS: how long dlopen took);
//                        with N, at once "run N" (the threads call in as soon as dlopen returns)
//   run N             4 threads each call SYMBOL(i) for i < N; print "ran SUM"
//   unload            dlclose it; print "unloaded"
//   bload LIB SYMBOL  as load, from a thread that blocks every signal (SIGTRAP included)
#include <dlfcn.h>
#include <libgen.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static long (*fn)(long);
static long per_thread;

__attribute__((noipa)) static long dl_worker_loop(long n)
{
    long sum = 0;
    for (long i = 0; i < n; i++)
        sum += fn(i);
    return sum;
}

static void *worker(void *arg)
{
    (void)arg;
    return (void *)dl_worker_loop(per_thread);
}

static char *blocked_path;

static void *blocked_loader(void *arg)
{
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    return dlopen(blocked_path, RTLD_NOW);
    (void)arg;
}

static long run(void)
{
    pthread_t t[4];
    long total = 0;
    for (int i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, worker, NULL);
    for (int i = 0; i < 4; i++) {
        void *r;
        pthread_join(t[i], &r);
        total += (long)r;
    }
    return total;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    char exe[4096], dir[4096], path[8300];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[n > 0 ? n : 0] = 0;
    strcpy(dir, dirname(exe));
    printf("ready %d\n", getpid());
    void *handle = NULL;
    char line[512], lib[256], symbol[256];
    while (fgets(line, sizeof line, stdin)) {
        long now = 0;
        int words = sscanf(line, "load %255s %255s %ld", lib, symbol, &now);
        if (sscanf(line, "bload %255s %255s", lib, symbol) == 2) {
            snprintf(path, sizeof path, "%s/%s", dir, lib);
            blocked_path = path;
            pthread_t t;
            pthread_create(&t, NULL, blocked_loader, NULL);
            pthread_join(t, &handle);
            fn = handle ? (long (*)(long))dlsym(handle, symbol) : NULL;
            if (fn)
                printf("loaded %p 0\n", (void *)fn);
            else
                printf("not loaded: %s\n", dlerror());
            continue;
        }
        if (words >= 2) {
            snprintf(path, sizeof path, "%s/%s", dir, lib);
            struct timespec t0, t1;
            clock_gettime(CLOCK_MONOTONIC, &t0);
            handle = dlopen(path, RTLD_NOW);
            clock_gettime(CLOCK_MONOTONIC, &t1);
            fn = handle ? (long (*)(long))dlsym(handle, symbol) : NULL;
            if (!fn) {
                printf("not loaded: %s\n", dlerror());
                continue;
            }
            if (words == 3) {
                per_thread = now;
                run();
            }
            printf("loaded %p %ld\n", (void *)fn, (t1.tv_sec - t0.tv_sec) * 1000000000L + (t1.tv_nsec - t0.tv_nsec));
        } else if (sscanf(line, "run %ld", &per_thread) == 1 && fn) {
            printf("ran %ld\n", run());
        } else if (strncmp(line, "unload", 6) == 0 && handle) {
            dlclose(handle);
            handle = NULL;
            fn = NULL;
            printf("unloaded\n");
        }
    }
    return 0;
}
