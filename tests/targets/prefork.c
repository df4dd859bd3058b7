// A prefork server: on "spawn" (stdin) the parent forks 4 workers that accept connections on a
// loopback port; each worker forks a child per connection, which answers every line "N" with
// "2N" (through serve(), which tests trace) until the client closes. On "stop" the workers are
// ended and reaped. Prints "ready PID PORT", "spawned W1 W2 W3 W4", "stopped".
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

__attribute__((noipa)) long serve(long n)
{
    return 2 * n;
}

__attribute__((noipa)) static void connection(int fd)
{
    FILE *in = fdopen(fd, "r");
    char line[64], reply[64];
    while (fgets(line, sizeof line, in)) {
        int len = snprintf(reply, sizeof reply, "%ld\n", serve(atol(line)));
        if (write(fd, reply, len) != len)
            break;
    }
    fclose(in);
}

__attribute__((noipa)) static void worker(int listener)
{
    signal(SIGCHLD, SIG_IGN);   // connection children reap themselves
    for (;;) {
        int fd = accept(listener, NULL, NULL);
        if (fd < 0)
            continue;
        pid_t child = fork();
        if (child == 0) {
            close(listener);
            connection(fd);
            _exit(0);
        }
        close(fd);
    }
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (bind(listener, (struct sockaddr *)&a, sizeof a) || listen(listener, 128) || getsockname(listener, (struct sockaddr *)&a, &len))
        return 1;
    printf("ready %d %d\n", getpid(), ntohs(a.sin_port));
    pid_t workers[4] = {0};
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "spawn", 5) == 0) {
            for (int i = 0; i < 4; i++) {
                workers[i] = fork();
                if (workers[i] == 0) {
                    worker(listener);
                    _exit(0);
                }
            }
            printf("spawned %d %d %d %d\n", workers[0], workers[1], workers[2], workers[3]);
        } else if (strncmp(line, "stop", 4) == 0) {
            for (int i = 0; i < 4; i++) {
                if (workers[i] > 0) {
                    kill(workers[i], SIGTERM);
                    waitpid(workers[i], NULL, 0);
                    workers[i] = 0;
                }
            }
            printf("stopped\n");
        }
    }
    return 0;
}
