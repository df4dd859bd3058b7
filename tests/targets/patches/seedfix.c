// The seed's case as a live patch: f's fixed body counts itself in the program's new_runs.
extern long new_runs;

long f(long x)
{
    __atomic_fetch_add(&new_runs, 1, __ATOMIC_RELAXED);
    return x + 2;
}
