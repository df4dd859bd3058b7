// argv[1] threads (default 1000) that each call f() argv[2] times (default 2000) once the line
// "go" arrives, then print "calls N" (the calls made, summed) when all have finished. The threads
// stay alive until the line "quit", so that each keeps its own tid while Hotwire reads them.
// With argv[3] = B ("churn"), nothing starts before "go": then the threads run B at a time, each
// batch joined (its threads exit) 300 ms before the next starts; "calls N" follows the last.
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int go, quit;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t changed = PTHREAD_COND_INITIALIZER;

// Threads wait on a condition variable, not a polling loop: 1,000 threads waking every
// millisecond would use both cores of a small machine by themselves.
static void wait_for(int *flag)
{
    pthread_mutex_lock(&lock);
    while (!*flag)
        pthread_cond_wait(&changed, &lock);
    pthread_mutex_unlock(&lock);
}

static void set(int *flag)
{
    pthread_mutex_lock(&lock);
    *flag = 1;
    pthread_cond_broadcast(&changed);
    pthread_mutex_unlock(&lock);
}
static long per_thread;
static long calls_made;
static long finished;

__attribute__((noipa)) void f(long i)
{
    __asm__ volatile("" ::"r"(i));
}

static void *churner(void *arg)
{
    (void)arg;
    for (long i = 0; i < per_thread; i++) {
        f(i);
        __atomic_fetch_add(&calls_made, 1, __ATOMIC_RELAXED);
    }
    return NULL;
}

static void *worker(void *arg)
{
    (void)arg;
    wait_for(&go);
    for (long i = 0; i < per_thread; i++) {
        f(i);
        __atomic_fetch_add(&calls_made, 1, __ATOMIC_RELAXED);
    }
    __atomic_fetch_add(&finished, 1, __ATOMIC_SEQ_CST);
    wait_for(&quit);
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
    int batch = argc > 3 ? atoi(argv[3]) : 0;
    if (batch > 0) {
        printf("ready %d %d\n", getpid(), threads);
        fflush(stdout);
        char line[64];
        if (!fgets(line, sizeof line, stdin))
            return 1;
        for (int done = 0; done < threads; done += batch) {
            int n = threads - done < batch ? threads - done : batch;
            for (int i = 0; i < n; i++)
                pthread_create(&tids[i], &attr, churner, NULL);
            for (int i = 0; i < n; i++)
                pthread_join(tids[i], NULL);
            usleep(300000);
        }
        printf("calls %ld\n", __atomic_load_n(&calls_made, __ATOMIC_SEQ_CST));
        fflush(stdout);
        while (fgets(line, sizeof line, stdin) && strncmp(line, "quit", 4) != 0)
            ;
        return 0;
    }
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
            set(&go);
            while (__atomic_load_n(&finished, __ATOMIC_SEQ_CST) < threads)
                usleep(1000);
            printf("calls %ld\n", __atomic_load_n(&calls_made, __ATOMIC_SEQ_CST));
            fflush(stdout);
        } else if (strncmp(line, "quit", 4) == 0) {
            break;
        }
    }
    set(&quit);
    for (int i = 0; i < threads; i++)
        pthread_join(tids[i], NULL);
    return 0;
}
