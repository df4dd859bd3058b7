// A program built without any patch-site flag (-O2, PIE): 4 persistent threads that, on "run N",
// each call work() and malloc()/free() N times, then print "done SUM" (SUM of work's results). For
// tracing functions without a compiler site (relocated entries), in the program and in libc.
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define THREADS 4

static long n_calls;
static char *volatile escaped[THREADS]; // the allocation escapes: gcc may not elide the malloc/free pair
static long sums[THREADS];
static pthread_barrier_t start, done;

// Its entry: push (1) + mov (3) + ... (several instructions to relocate), a RIP-relative load inside.
long scale = 3;
__attribute__((noinline)) long work(long x)
{
    long r = x * scale;
    for (int i = 0; i < (int)(x & 3); i++)
        r ^= r >> 1;
    return r + 1;
}

// Too short to relocate (3 bytes): a filter that chooses only it is refused with the reason.
__asm__(".text\n.globl tiny\n.type tiny,@function\ntiny:\n.cfi_startproc\nxor %eax, %eax\nret\n.cfi_endproc\n.size tiny, .-tiny\n");

static void *worker(void *arg)
{
    long id = (long)arg;
    for (;;) {
        pthread_barrier_wait(&start);
        long sum = 0;
        for (long i = 0; i < n_calls; i++) {
            sum += work(i + id);
            char *p = malloc(16 + (i & 63));
            p[0] = (char)i;
            escaped[id] = p;
            sum += escaped[id][0] != 0;
            free(escaped[id]);
        }
        sums[id] = sum;
        pthread_barrier_wait(&done);
    }
    return NULL;
}

int main(void)
{
    pthread_t t[THREADS];
    pthread_barrier_init(&start, NULL, THREADS + 1);
    pthread_barrier_init(&done, NULL, THREADS + 1);
    for (long i = 0; i < THREADS; i++)
        pthread_create(&t[i], NULL, worker, (void *)i);
    printf("ready %d\n", getpid());
    fflush(stdout);
    char line[128];
    while (fgets(line, sizeof line, stdin)) {
        if (sscanf(line, "run %ld", &n_calls) == 1) {
            pthread_barrier_wait(&start);
            pthread_barrier_wait(&done);
            long total = 0;
            for (int i = 0; i < THREADS; i++)
                total += sums[i];
            printf("done %ld\n", total);
            fflush(stdout);
        }
    }
    return 0;
}
