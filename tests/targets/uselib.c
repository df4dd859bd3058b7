// A program (no sites of its own) that uses libflav.so.
#include <stdio.h>
#include <unistd.h>

long lib_poly(long x);

int main(void)
{
    printf("ready %d\n", getpid());
    fflush(stdout);
    char buf[64];
    long total = 0;
    while (read(0, buf, sizeof buf) > 0)
        total += lib_poly(total);
    return (int)(total & 0);
}
