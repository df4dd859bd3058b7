// A program (no sites of its own) that uses libflav.so: "uselib once" calls lib_poly(3) and
// exits; without arguments it calls lib_poly for each read from stdin.
#include <stdio.h>
#include <string.h>
#include <unistd.h>

long lib_poly(long x);

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "once") == 0) {
        printf("%ld\n", lib_poly(3));
        return 0;
    }
    printf("ready %d\n", getpid());
    fflush(stdout);
    char buf[64];
    long total = 0;
    while (read(0, buf, sizeof buf) > 0)
        total += lib_poly(total);
    return (int)(total & 0);
}
