// The fix for service.c's price(), as a live patch. Build it as a shared object:
//   gcc -O2 -shared -fPIC fix.c -o fix.so
// and apply it to the running service:
//   hotwire patch --pid $(pidof service) fix.so
// A function here replaces the target's function of the same name. It may call the target's
// functions and use its variables, static ones included: declare them extern, Hotwire's loader
// resolves them against the running program (its .symtab) and its libraries.
extern long orders;                      // static in service.c
long discount(long cents);               // static in service.c

long price(long items, long cents_each)
{
    orders++;
    long total = items * cents_each;
    return total - discount(total);
}
