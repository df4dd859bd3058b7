// The fix for patchserver's handler: "new 3N". It calls the program's static scale() and updates
// its static counter, as the buggy version did.
#include <stdio.h>

extern long served;           // static in patchserver.c: found through its .symtab
long scale(long n);           // static in patchserver.c too

int handler(long n, char *out, size_t size)
{
    __atomic_fetch_add(&served, 1, __ATOMIC_RELAXED);
    return snprintf(out, size, "new %ld\n", scale(n));
}
