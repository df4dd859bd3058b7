// A live patch for Debian's redis-server (unmodified: no patch sites): PING answers +HOTWIRE.
// pingCommand has no compiler site; `hotwire patch` replaces it at its relocated entry.
// addReplyStatus is one of redis-server's exported functions (it is linked with -rdynamic).
typedef struct client client;

void addReplyStatus(client *c, const char *status);

void pingCommand(client *c)
{
    addReplyStatus(c, "HOTWIRE");
}
