// A shared library with patchable entries, loaded by uselib.c; its constructor calls lib_add.
volatile long lib_sink;

__attribute__((noipa)) long lib_add(long a, long b) { return a + b; }
__attribute__((noipa)) static long lib_square(long a) { lib_sink += a; return a * a; }
__attribute__((noipa)) long lib_poly(long x) { return lib_add(lib_square(x), x); }
__attribute__((constructor, noipa)) static void lib_init(void) { lib_sink = lib_add(1, 2); }
