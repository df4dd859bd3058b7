// Loads and unloads libflav.so (beside this program) at run time, on commands read from stdin:
//   load    dlopen it, print "loaded"
//   call    print lib_poly(3)
//   unload  dlclose it, print "unloaded"
// The program itself has no patch sites.
#include <dlfcn.h>
#include <libgen.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    char exe[4096], path[4200];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[n > 0 ? n : 0] = 0;
    snprintf(path, sizeof path, "%s/libflav.so", dirname(exe));
    printf("ready %d\n", getpid());
    void *handle = NULL;
    long (*poly)(long) = NULL;
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "load", 4) == 0) {
            handle = dlopen(path, RTLD_NOW);
            poly = handle ? (long (*)(long))dlsym(handle, "lib_poly") : NULL;
            printf(poly ? "loaded\n" : "not loaded: %s\n", dlerror());
        } else if (strncmp(line, "call", 4) == 0 && poly) {
            printf("%ld\n", poly(3));
        } else if (strncmp(line, "unload", 6) == 0 && handle) {
            dlclose(handle);
            handle = NULL;
            poly = NULL;
            printf("unloaded\n");
        }
    }
    return 0;
}
