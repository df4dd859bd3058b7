// Calls f() every millisecond on a thread; on the line "exec" on stdin, the main thread executes
// /bin/sleep 30 (a --pid target that becomes another program under Hotwire).
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

__attribute__((noipa)) void f(void)
{
}

static void *worker(void *arg)
{
    (void)arg;
    for (;;) {
        f();
        usleep(1000);
    }
    return NULL;
}

int main(void)
{
    pthread_t t;
    pthread_create(&t, NULL, worker, NULL);
    printf("ready %d\n", getpid());
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "exec", 4) == 0) {
            execl("/bin/sleep", "sleep", "30", (char *)NULL);
            perror("execl");
            return 1;
        }
    }
    return 0;
}
