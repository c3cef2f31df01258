/* The primary's scheduling class (README "Listeners and balancing"): with the primary in the
 * data path its loop thread runs under SCHED_BATCH, FORK workers start under the class the
 * thread had before, and the class comes back when the runtime finishes; turned off by
 * cluster_config_set_sched_batch(cfg, false), and never switched without a listener.
 *   sched default|off|no_listener
 */
#include "harness.h"

#include <sched.h>

/* Worker: reports its scheduling class as "class <n>", then serves until told to stop. */
static void on_worker(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind == CLUSTER_EVENT_CONNECTION) close(ev->fd);
}

static int worker_main(void *ud) {
    (void)ud;
    OK(cluster_worker_start(on_worker, NULL));
    char msg[32];
    int n = snprintf(msg, sizeof msg, "class %d", sched_getscheduler(0));
    OK(cluster_send(0, (const uint8_t *)msg, (size_t)n));
    return cluster_run() == 0 ? 0 : 1;
}

static volatile int reports, other_reports, exits;

static void on_primary(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind == CLUSTER_EVENT_MESSAGE) {
        char want[32];
        int n = snprintf(want, sizeof want, "class %d", SCHED_OTHER);
        reports++;
        if (ev->len == (size_t)n && memcmp(ev->data, want, (size_t)n) == 0) other_reports++;
        else fprintf(stderr, "a worker reported '%.*s'\n", (int)ev->len, (const char *)ev->data);
    } else if (ev->kind == CLUSTER_EVENT_EXIT) {
        exits++;
    }
}

static void run(const char *how) {
    int listen = strcmp(how, "no_listener") != 0;
    CHECK(sched_getscheduler(0) == SCHED_OTHER, "the test starts under SCHED_OTHER");
    cluster_config *cfg = cluster_config_new();
    CHECK(cfg != NULL, "cluster_config_new");
    OK(cluster_config_set_workers(cfg, 2));
    OK(cluster_config_set_worker_main(cfg, worker_main, NULL));
    OK(cluster_config_set_signals(cfg, false));
    OK(cluster_config_set_policy(cfg, CLUSTER_POLICY_ROUND_ROBIN));
    if (listen) OK(cluster_config_listen_tcp(cfg, "127.0.0.1", 0));
    if (strcmp(how, "off") == 0) OK(cluster_config_set_sched_batch(cfg, false));
    OK(cluster_primary_start(cfg, on_primary, NULL));
    cluster_config_free(cfg);

    int want = strcmp(how, "default") == 0 ? SCHED_BATCH : SCHED_OTHER;
    CHECK(sched_getscheduler(0) == want, "%s: the primary runs under class %d, not %d", how, want,
          sched_getscheduler(0));
    long long end = now_ms() + 10000;
    while (reports < 2) {
        CHECK(now_ms() < end, "both workers reported within 10 s");
        OK(cluster_dispatch(50));
    }
    CHECK(other_reports == 2, "%s: both workers run under SCHED_OTHER (%d of 2)", how, other_reports);

    OK(cluster_shutdown(2000));
    end = now_ms() + 10000;
    int32_t rc;
    while ((rc = cluster_dispatch(50)) >= 0) CHECK(now_ms() < end, "the runtime finished within 10 s");
    CHECK(rc == CLUSTER_E_CLOSED, "dispatch ends with CLUSTER_E_CLOSED, not %d", rc);
    CHECK(exits == 2, "both workers exited (%d)", exits);
    CHECK(sched_getscheduler(0) == SCHED_OTHER, "%s: SCHED_OTHER is back after the end", how);
}

int main(int argc, char **argv) {
    test_deadline(60);
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc != 2 || (strcmp(argv[1], "default") && strcmp(argv[1], "off") && strcmp(argv[1], "no_listener"))) {
        fprintf(stderr, "usage: %s default|off|no_listener\n", argv[0]);
        return 2;
    }
    run(argv[1]);
    printf("sched %s: ok\n", argv[1]);
    return 0;
}
