// A shared library with patchable entries, loaded by uselib.c.
volatile long lib_sink;

__attribute__((noipa)) long lib_add(long a, long b) { return a + b; }
__attribute__((noipa)) static long lib_square(long a) { lib_sink += a; return a * a; }
__attribute__((noipa)) long lib_poly(long x) { return lib_add(lib_square(x), x); }
