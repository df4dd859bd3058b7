// C++ names for the demangler: namespaces, overloads, templates, methods.
#include <cstdio>
#include <unistd.h>

namespace shop {
struct Cart {
    long total = 0;
    __attribute__((noipa)) void add(long price) { total += price; }
    __attribute__((noipa)) long sum() const { return total; }
};
__attribute__((noipa)) long discount(long v) { return v - v / 10; }
__attribute__((noipa)) long discount(long v, int percent) { return v - v * percent / 100; }
template <typename T> __attribute__((noipa)) T twice(T v) { return v + v; }
}

int main()
{
    std::printf("ready %d\n", getpid());
    std::fflush(stdout);
    shop::Cart cart;
    char buf[64];
    while (read(0, buf, sizeof buf) > 0) {
        cart.add(shop::twice<long>(3));
        cart.add(static_cast<long>(shop::twice<double>(1.5)));
        cart.add(shop::discount(cart.sum()) + shop::discount(cart.sum(), 5));
    }
    return static_cast<int>(cart.sum() & 0);
}
