// Uses thread-local storage.
static __thread long calls;

long f(long x) { return x + ++calls; }
