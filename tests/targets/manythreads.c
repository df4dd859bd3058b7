// argv[1] threads (default 1000) that each call f() argv[2] times (default 2000) once the line
// "go" arrives, then print "calls N" (the calls made, summed) when all have finished. The threads
// stay alive until the line "quit", so that each keeps its own tid while Hotwire reads them.
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile int go, quit;
static long per_thread;
static long calls_made;
static long finished;

__attribute__((noipa)) void f(long i)
{
    __asm__ volatile("" ::"r"(i));
}

static void *worker(void *arg)
{
    (void)arg;
    while (!go)
        usleep(1000);
    for (long i = 0; i < per_thread; i++) {
        f(i);
        __atomic_fetch_add(&calls_made, 1, __ATOMIC_RELAXED);
    }
    __atomic_fetch_add(&finished, 1, __ATOMIC_SEQ_CST);
    while (!quit)
        usleep(10000);
    return NULL;
}

int main(int argc, char **argv)
{
    int threads = argc > 1 ? atoi(argv[1]) : 1000;
    per_thread = argc > 2 ? atol(argv[2]) : 2000;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    pthread_t *tids = calloc(threads, sizeof *tids);
    for (int i = 0; i < threads; i++)
        if (pthread_create(&tids[i], &attr, worker, NULL) != 0) {
            perror("pthread_create");
            return 1;
        }
    printf("ready %d %d\n", getpid(), threads);
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "go", 2) == 0) {
            go = 1;
            while (__atomic_load_n(&finished, __ATOMIC_SEQ_CST) < threads)
                usleep(1000);
            printf("calls %ld\n", __atomic_load_n(&calls_made, __ATOMIC_SEQ_CST));
            fflush(stdout);
        } else if (strncmp(line, "quit", 4) == 0) {
            break;
        }
    }
    quit = 1;
    for (int i = 0; i < threads; i++)
        pthread_join(tids[i], NULL);
    return 0;
}
