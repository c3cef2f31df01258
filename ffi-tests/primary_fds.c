/* The primary's own RLIMIT_NOFILE.
 *   primary_fds table   a primary whose soft limit is 64 fds, with 4 workers whose windows
 *                       (64 each) are far larger: 3 clients with 64 connections open at a time
 *                       each, 1920 in all. The primary must accept only what its fd table has
 *                       room for: no accept ever fails for want of fds (the 100 ms pause is
 *                       never taken: "accept_pauses" 0 in cluster_stats), nothing is dropped,
 *                       and every connection is answered.
 * The primary's loop runs in the test process; clients run in forked children. */
#include "harness.h"
#include <sys/resource.h>

#define WORKERS 4
#define CLIENTS 3
#define CONNS_PER_CLIENT 640

/* Workers and clients get their fds back (the soft limit up to the hard one): only the
 * primary is short. */
static void raise_fd_limit(void) {
    struct rlimit rl;
    CHECK(getrlimit(RLIMIT_NOFILE, &rl) == 0, "getrlimit: %s", strerror(errno));
    rl.rlim_cur = rl.rlim_max;
    CHECK(setrlimit(RLIMIT_NOFILE, &rl) == 0, "setrlimit: %s", strerror(errno));
}

static void on_worker(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind == CLUSTER_EVENT_CONNECTION) answer_line(ev->fd);
}

static int worker_main(void *ud) {
    raise_fd_limit();
    OK(cluster_worker_start(on_worker, ud));
    return cluster_run() == 0 ? 0 : 3;
}

static volatile int ready;
static void on_primary(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind == CLUSTER_EVENT_READY) ready++;
    if (ev->kind == CLUSTER_EVENT_ERROR)
        fprintf(stderr, "ERROR event (worker %u): %.*s\n", ev->worker_id, (int)ev->len, (const char *)ev->data);
}

static int case_table(void) {
    struct rlimit rl;
    CHECK(getrlimit(RLIMIT_NOFILE, &rl) == 0, "getrlimit");
    rl.rlim_cur = 64;
    CHECK(setrlimit(RLIMIT_NOFILE, &rl) == 0, "setrlimit 64: %s", strerror(errno));
    int port = start_rr_cluster(WORKERS, worker_main, on_primary);
    dispatch_until(&ready, 20000, "a READY worker");
    { long long end = now_ms() + 20000; while (ready < WORKERS) { CHECK(now_ms() < end, "workers READY"); cluster_dispatch(50); } }
    printf("primary_fds table: primary holds %d fds of 64 with %d workers READY\n", count_fds(0) - 1, WORKERS);

    pid_t clients[CLIENTS];
    long long t0 = now_ms();
    for (int i = 0; i < CLIENTS; i++) {
        clients[i] = fork_client((const int[]){-1});
        if (clients[i] == 0) {
            raise_fd_limit();
            answered_clients(port, CONNS_PER_CLIENT, 64, 100);
        }
    }
    for (int i = 0; i < CLIENTS; i++) {
        int status = dispatch_until_exit(clients[i], 90000, "a client's connections");
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "client %d: not every connection was answered (0x%x)", i,
              status);
    }
    long pauses = total_stat("accept_pauses"), dropped = total_stat("dropped");
    printf("primary_fds table: %d connections answered in %lld ms; accept pauses %ld, dropped %ld\n",
           CLIENTS * CONNS_PER_CLIENT, now_ms() - t0, pauses, dropped);
    CHECK(pauses == 0, "the primary ran out of fds and paused accepting %ld times", pauses);
    CHECK(dropped == 0, "%ld connections dropped", dropped);
    OK(cluster_shutdown(10000));
    CHECK(cluster_run() == 0, "graceful stop");
    return 0;
}

int main(int argc, char **argv) {
    test_deadline(120);
    setvbuf(stdout, NULL, _IONBF, 0);
    if (getenv("RCLUSTER_LOG")) cluster_log_init();
    const char *c = argc > 1 ? argv[1] : "";
    if (strcmp(c, "table") == 0) return case_table();
    fprintf(stderr, "usage: %s table\n", argv[0]);
    return 2;
}
