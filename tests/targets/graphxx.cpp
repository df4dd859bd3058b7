// C++ exceptions through traced frames, for the function_graph tracer's tests.
//   graphxx throw N    N times: catcher(i) calls t1 -> t2 -> t3; t3 throws when i is even; t2
//                      holds an object with a destructor (a cleanup landing pad); catcher
//                      catches, then calls after(i). Odd i return normally.
//   graphxx rethrow    catcher2() catches, rethrows with `throw;` to main's handler.
// Prints what it caught; the tests compare with an untraced run.
#include <cstdio>
#include <cstring>
#include <stdexcept>

volatile long sink;

struct Guard {
    long v;
    __attribute__((noipa)) ~Guard() { sink += v; }
};

__attribute__((noipa)) long t3(long i)
{
    if (i % 2 == 0)
        throw std::runtime_error("even " + std::to_string(i));
    return i;
}
__attribute__((noipa)) long t2(long i) { Guard g{i}; return t3(i) + 1; }
__attribute__((noipa)) long t1(long i) { return t2(i) + 1; }
__attribute__((noipa)) long after(long i) { sink += i; return i; }
__attribute__((noipa)) long catcher(long i)
{
    long r;
    try {
        r = t1(i);
    } catch (const std::runtime_error &e) {
        std::printf("caught %s\n", e.what());
        r = -1;
    }
    return r + after(i);
}
__attribute__((noipa)) void catcher2()
{
    try {
        t1(2);
    } catch (...) {
        std::printf("rethrowing\n");
        throw;
    }
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "throw";
    long n = argc > 2 ? std::atol(argv[2]) : 4;
    long total = 0;
    if (std::strcmp(mode, "rethrow") == 0) {
        try {
            catcher2();
        } catch (const std::exception &e) {
            std::printf("main caught %s\n", e.what());
        }
    } else {
        for (long i = 0; i < n; i++)
            total += catcher(i);
    }
    std::printf("total %ld sink %ld\n", total, (long)sink);
    return 0;
}
