/* Corked bursts arrive whole, in order, under their sender's id, in both directions. A batch
 * datagram holds far more frames than one loop turn reads (64), and the rest is in memory
 * where epoll cannot see it: the loop must come back for it by itself, with nothing else
 * arriving on the channel to wake it. The primary corks, sends BURST numbered messages to each
 * of 2 FORK-mode workers and uncorks; each worker checks the sequence and, at the last one,
 * corks and sends BURST numbered messages back, then uncorks. The primary checks every
 * sequence and ends with a graceful shutdown that leaves no process behind. The primary takes
 * its events through cluster_set_batch_handler: whole loop turns per call. */
#include "harness.h"

#include <stddef.h>

/* cluster_batch_cb hands an array of events: its stride, sizeof(cluster_event), is frozen
 * (docs/ABI.md), and so are the offsets a program reads. */
_Static_assert(sizeof(void *) != 8 || sizeof(cluster_event) == 64, "cluster_event is 64 bytes");
_Static_assert(sizeof(void *) != 8 || (offsetof(cluster_event, fd) == 12 && offsetof(cluster_event, data) == 16 &&
                                       offsetof(cluster_event, len) == 24 && offsetof(cluster_event, listener) == 44 &&
                                       offsetof(cluster_event, peer) == 48 && offsetof(cluster_event, peer_len) == 56),
               "cluster_event's fields stay where they are");

#define WORKERS 2
#define BURST 1000

/* ---- worker side ---- */

static int next_in; /* the number the next message from the primary must carry */

static void on_worker(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind != CLUSTER_EVENT_MESSAGE) return;
    CHECK(ev->worker_id == 0 && ev->len == sizeof(int), "a numbered message from the primary");
    int n;
    memcpy(&n, ev->data, sizeof n);
    CHECK(n == next_in, "worker %u: message %d arrived where %d was due", cluster_worker_id(), n, next_in);
    if (++next_in < BURST) return;
    OK(cluster_cork());
    for (int i = 0; i < BURST; i++) OK(cluster_send(0, (const uint8_t *)&i, sizeof i));
    OK(cluster_uncork());
}

static int worker_main(void *ud) {
    OK(cluster_worker_start(on_worker, ud));
    return cluster_run() == 0 ? 0 : 3;
}

/* ---- primary side ---- */

static volatile int ready, done, exits, clean_exits;
static int next_from[WORKERS + 1];

static void on_primary(void *ud, const cluster_event *ev) {
    (void)ud;
    switch (ev->kind) {
    case CLUSTER_EVENT_READY:
        ready++;
        OK(cluster_cork());
        for (int i = 0; i < BURST; i++) OK(cluster_send(ev->worker_id, (const uint8_t *)&i, sizeof i));
        OK(cluster_uncork());
        break;
    case CLUSTER_EVENT_MESSAGE: {
        CHECK(ev->worker_id >= 1 && ev->worker_id <= WORKERS && ev->len == sizeof(int), "a numbered message");
        int n;
        memcpy(&n, ev->data, sizeof n);
        CHECK(n == next_from[ev->worker_id], "from worker %u: message %d arrived where %d was due", ev->worker_id,
              n, next_from[ev->worker_id]);
        if (++next_from[ev->worker_id] == BURST) done++;
        break;
    }
    case CLUSTER_EVENT_EXIT:
        exits++;
        clean_exits += exit_is_clean(ev);
        break;
    default:
        break;
    }
}

/* The batch handler: each event as on_primary would get it; records the largest batch. */
static size_t largest_batch, batch_calls;
static void on_primary_batch(void *ud, const cluster_event *events, size_t n) {
    CHECK(n > 0 && events != NULL, "a batch holds events (%zu)", n);
    batch_calls++;
    if (n > largest_batch) largest_batch = n;
    for (size_t i = 0; i < n; i++) on_primary(ud, &events[i]);
}

/* Turns the loop until *count reaches want; fails after timeout_ms. */
static void dispatch_until_count(volatile int *count, int want, int timeout_ms, const char *what) {
    long long end = now_ms() + timeout_ms;
    while (*count < want) {
        CHECK(now_ms() < end, "timed out after %d ms waiting for %s (%d of %d; sequences at %d and %d of %d)",
              timeout_ms, what, *count, want, next_from[1], next_from[2], BURST);
        int32_t rc = cluster_dispatch(50);
        CHECK(rc >= 0, "cluster_dispatch returned %d while waiting for %s", rc, what);
    }
}

int main(void) {
    if (cluster_is_worker()) return worker_main(NULL);
    test_deadline(60);
    cluster_config *cfg = cluster_config_new();
    OK(cluster_config_set_workers(cfg, WORKERS));
    OK(cluster_config_set_worker_main(cfg, worker_main, NULL));
    OK(cluster_primary_start(cfg, on_primary, NULL));
    cluster_config_free(cfg);
    EXPECT_ERR(cluster_set_batch_handler(NULL, NULL), CLUSTER_E_INVAL);
    OK(cluster_set_batch_handler(on_primary_batch, NULL));
    dispatch_until_count(&done, WORKERS, 20000, "every burst sent back whole");
    CHECK(batch_calls > 0 && largest_batch > 1, "events came in batches (%zu calls, largest %zu)", batch_calls,
          largest_batch);
    CHECK(ready == WORKERS, "both workers READY once");
    OK(cluster_shutdown(5000));
    dispatch_until_count(&exits, WORKERS, 10000, "the workers' exits after the shutdown");
    CHECK(clean_exits == WORKERS, "both workers exited cleanly (%d)", clean_exits);
    printf("batches: %d messages each way per worker, in order; largest batch of events %zu\n", BURST,
           largest_batch);
    return 0;
}
