// A tiny "service" with a bug, to try `hotwire patch` on. Build it with patch sites:
//   gcc -O2 -fpatchable-function-entry=5 service.c -o service
// Every second it prices an order of 3 items at 10.00 each; price() gives the 10 % discount only
// to orders of more than 100 items, and it should give it to every order.
#include <stdio.h>
#include <unistd.h>

static long orders;                      // static: a patch can still read and update it

__attribute__((noipa)) static long discount(long cents) { return cents / 10; }

__attribute__((noipa)) long price(long items, long cents_each)
{
    orders++;
    long total = items * cents_each;
    return items > 100 ? total - discount(total) : total;   // bug: every order gets the discount
}

int main(void)
{
    printf("service running as pid %d\n", getpid());
    fflush(stdout);
    for (;;) {
        long cents = price(3, 1000);
        printf("order %ld: %ld cents\n", orders, cents);
        fflush(stdout);
        sleep(1);
    }
}
