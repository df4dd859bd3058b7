// A second patch stacked on serverfix: "v2 3N".
#include <stdio.h>

extern long served;
long scale(long n);

int handler(long n, char *out, size_t size)
{
    __atomic_fetch_add(&served, 1, __ATOMIC_RELAXED);
    return snprintf(out, size, "v2 %ld\n", scale(n));
}
