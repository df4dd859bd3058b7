// Loads libgraphxx.so (graphxx.cpp built as a library, its main renamed graphxx_main, looked up by its C++ name) with dlopen and
// runs it with this program's arguments: C++ exceptions thrown and caught in a library, and the
// C++ runtime itself, that came after the program started.
#include <dlfcn.h>
#include <libgen.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

__attribute__((noipa)) static int run(int (*entry)(int, char **), int argc, char **argv)
{
    return entry(argc, argv);
}

int main(int argc, char **argv)
{
    char exe[4096], path[4200];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[n > 0 ? n : 0] = 0;
    snprintf(path, sizeof path, "%s/libgraphxx.so", dirname(exe));
    void *lib = dlopen(path, RTLD_NOW);
    int (*entry)(int, char **) = lib ? (int (*)(int, char **))dlsym(lib, "_Z12graphxx_mainiPPc") : NULL;
    if (!entry) {
        fprintf(stderr, "dlxx: %s\n", dlerror());
        return 1;
    }
    fflush(stdout);
    return run(entry, argc, argv);
}
