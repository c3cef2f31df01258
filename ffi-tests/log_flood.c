/* A worker that floods the primary with frames that each used to cost a log line (messages to
 * a worker that does not exist: valid frames, so the worker is kept) gets a bounded number of
 * lines in the host's log callback, and the lines it did not get are counted and said: each
 * line that follows suppressed ones says how many, and so does a line of its own when the
 * window is over or the worker exits. Every one of the FLOOD messages is accounted for. */
#include "harness.h"

#define FLOOD 5000
#define MAX_LINES 40 /* 10 per 10 s window, per worker and kind: a slow box may open a few */

static const char LINE[] = "which does not exist";
static const char SUMMARY[] = "like \"a message to a worker that does not exist\" were suppressed";
static const char NOTE[] = " more like it suppressed before this one)";

static long long lines, noted, summarized;
static void on_log(void *ud, int32_t level, const char *target, const char *message) {
    (void)ud, (void)level, (void)target;
    if (!cluster_is_primary()) return;
    if (strstr(message, LINE)) {
        lines++;
        const char *p = strstr(message, " (");
        long long n;
        if (p && strstr(p, NOTE) && sscanf(p, " (%lld", &n) == 1) noted += n;
    }
    const char *s = strstr(message, SUMMARY);
    if (s) {
        const char *colon = strstr(message, ": ");
        long long n;
        CHECK(colon && sscanf(colon, ": %lld more log line", &n) == 1, "a count in '%s'", message);
        summarized += n;
    }
}

/* ---- worker ---- */

static int sent, target = FLOOD;

static void flood_step(void) {
    while (sent < target) {
        int32_t rc = cluster_send(999, (const uint8_t *)"x", 1);
        if (rc == CLUSTER_E_AGAIN) return; /* a DRAIN follows */
        OK(rc);
        sent++;
    }
    if (sent == target) {
        sent++;
        OK(cluster_send(0, (const uint8_t *)"done", 4));
    }
}

static void on_worker(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind == CLUSTER_EVENT_MESSAGE && ev->worker_id == 0 && ev->len == 5 && !memcmp(ev->data, "flood", 5))
        flood_step();
    else if (ev->kind == CLUSTER_EVENT_DRAIN)
        flood_step();
    /* ERROR events (the primary's notices that worker 999 does not exist) are expected */
}

static int worker_main(void *ud) {
    OK(cluster_worker_start(on_worker, ud));
    return cluster_run() == 0 ? 0 : 3;
}

/* ---- primary ---- */

static volatile int ready, done, exited;
static void on_primary(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind == CLUSTER_EVENT_READY) ready = 1;
    if (ev->kind == CLUSTER_EVENT_MESSAGE && ev->len == 4 && !memcmp(ev->data, "done", 4)) done = 1;
    if (ev->kind == CLUSTER_EVENT_EXIT) exited = 1;
    CHECK(ev->kind != CLUSTER_EVENT_ERROR, "an ERROR event in the primary: %.*s", (int)ev->len, (const char *)ev->data);
}

int main(void) {
    test_deadline(60);
    OK(cluster_set_log_callback(on_log, NULL));
    cluster_config *cfg = cluster_config_new();
    OK(cluster_config_set_workers(cfg, 1));
    OK(cluster_config_set_worker_main(cfg, worker_main, NULL));
    OK(cluster_config_set_signals(cfg, false));
    OK(cluster_primary_start(cfg, on_primary, NULL));
    cluster_config_free(cfg);
    dispatch_until(&ready, 10000, "READY");
    long long t0 = now_ms();
    OK(cluster_send(1, (const uint8_t *)"flood", 5));
    dispatch_until(&done, 30000, "the flood");
    long long during = lines;
    printf("log_flood: %d messages to worker 999 in %lld ms: %lld log lines\n", FLOOD, now_ms() - t0, during);
    CHECK(during <= MAX_LINES, "%lld log lines for %d bad messages (at most %d expected)", during, FLOOD, MAX_LINES);
    OK(cluster_shutdown(5000));
    CHECK(cluster_run() == 0, "graceful stop");
    CHECK(exited, "the worker exited");
    printf("log_flood: %lld lines, %lld suppressed said in later lines, %lld in summaries\n", lines, noted, summarized);
    CHECK(lines + noted + summarized == FLOOD, "every message is accounted for: %lld + %lld + %lld != %d", lines, noted,
          summarized, FLOOD);
    CHECK(summarized > 0, "a line of its own says how many were suppressed");
    printf("log_flood: ok\n");
    return 0;
}
