/* Log records reach a host callback (level, target, message), and NULL stops them. */
#include "harness.h"

static volatile int records, started_lines, bad_levels, reentry_refused, reentry_other;
static void on_log(void *ud, int32_t level, const char *target, const char *message) {
    /* Calling rcluster from here is refused, never a deadlock. */
    int32_t rc = cluster_workers(NULL, 0);
    if (rc == CLUSTER_E_STATE) reentry_refused++;
    else reentry_other++;
    CHECK(ud == (void *)&records, "userdata is passed through");
    if (level < 1 || level > 5 || strncmp(target, "rcluster", 8) != 0) bad_levels++;
    if (strstr(message, "worker 1 started, pid ")) started_lines++;
    records++;
}

static void on_worker(void *ud, const cluster_event *ev) { (void)ud; (void)ev; }
static int worker_main(void *ud) {
    OK(cluster_worker_start(on_worker, ud));
    return cluster_run() == 0 ? 0 : 3;
}

static volatile int ready, exits, clean_exits;
static void on_primary(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind == CLUSTER_EVENT_READY) ready = 1;
    if (ev->kind == CLUSTER_EVENT_EXIT) {
        exits++;
        clean_exits += exit_is_clean(ev);
    }
}

int main(void) {
    test_deadline(30);
    OK(cluster_set_log_callback(on_log, (void *)&records));
    cluster_config *cfg = cluster_config_new();
    OK(cluster_config_set_workers(cfg, 1));
    OK(cluster_config_set_worker_main(cfg, worker_main, NULL));
    OK(cluster_config_set_signals(cfg, false));
    OK(cluster_primary_start(cfg, on_primary, NULL));
    cluster_config_free(cfg);
    dispatch_until(&ready, 10000, "READY");
    CHECK(started_lines == 1, "the 'worker 1 started' record arrived once (%d)", started_lines);
    CHECK(bad_levels == 0, "levels are 1..5 and targets are rcluster's");
    CHECK(reentry_refused > 0 && reentry_other == 0, "calls from the log callback: %d refused, %d not", reentry_refused,
          reentry_other);
    OK(cluster_set_log_callback(NULL, NULL));
    int before = records;
    /* The worker inherited the callback: its own calls from it (while it starts, too) are
     * refused without a deadlock, so it stops at once and cleanly, well before the grace. */
    long long t0 = now_ms();
    OK(cluster_shutdown(5000));
    CHECK(cluster_run() == 0, "graceful stop");
    CHECK(exits == 1 && clean_exits == 1, "the worker exited cleanly (%d exits, %d clean)", exits, clean_exits);
    CHECK(now_ms() - t0 < 2500, "the worker stopped on SHUTDOWN, not at the grace's end (%lld ms)", now_ms() - t0);
    CHECK(records == before, "no record after the callback was removed (%d new)", records - before);
    printf("logging: ok (%d records)\n", records);
    return 0;
}
