// A live patch for memcached (Debian's memcached 1.6.18, thread.c): a changed
// slab_stats_aggregate(), the function `stats` calls to sum the per-slab-class counters of all
// threads. The patched version sums them as the original does, and changes what one counter
// means: "touch_hits" (0 under a load that never touches) becomes the number of `stats` requests
// answered since the patch was applied. Observable through the protocol, deterministic:
// the first `stats` after the patch says "STAT touch_hits 1", the next "2"; after
// `hotwire patch --revert` it is 0 again.
//
// Built against the configured memcached tree (for its structs):
//   gcc -O2 -shared -fPIC -I MEMCACHED_BUILD_DIR fix.c -o fix.so
#include "config.h"
#include <stdbool.h>
#include <string.h>
#include "memcached.h"

static uint64_t stats_requests; // the patch's own variable (no TLS, no constructor)

void slab_stats_aggregate(struct thread_stats *stats, struct slab_stats *out)
{
    memset(out, 0, sizeof(*out));
    for (int sid = 0; sid < MAX_NUMBER_OF_SLAB_CLASSES; sid++) {
#define X(name) out->name += stats->slab_stats[sid].name;
        SLAB_STATS_FIELDS
#undef X
    }
    out->touch_hits = __atomic_add_fetch(&stats_requests, 1, __ATOMIC_RELAXED);
}
