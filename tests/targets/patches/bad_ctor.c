// Has a constructor.
extern long new_runs;

__attribute__((constructor)) static void init(void) { new_runs = 100; }

long f(long x) { return x + 2; }
