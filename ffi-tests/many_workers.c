/* Many workers: 512 FORK workers behind one round-robin listener.
 *   many_workers [workers]   (default 512)
 * They all start and report READY; 4096 connections (8 at a time, from a child) are answered,
 * spread over every worker (each one served some; none more than 4 times its share: the
 * handoff's groups rotate over the workers); a rolling reload replaces all of them with the
 * primary's fds back where they were and its RSS within 4 MB of where it was; a shutdown stops
 * them all, and no worker process is left.
 * Needs fds for 3 per worker in the primary: with a hard RLIMIT_NOFILE below that, it says it
 * was skipped. Under ASan the RSS is not checked (its quarantine keeps freed memory). */
#include "harness.h"

#include <sys/resource.h>

#define CONNS 4096

static int workers = 512, ready, reloaded = -2, exits;

static void on_worker(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind == CLUSTER_EVENT_CONNECTION) answer_line(ev->fd);
}

static int worker_main(void *ud) {
    (void)ud;
    OK(cluster_worker_start(on_worker, NULL));
    return cluster_run() == 0 ? 0 : 3;
}

static void on_primary(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind == CLUSTER_EVENT_READY) ready++;
    if (ev->kind == CLUSTER_EVENT_RELOADED) reloaded = ev->exit_code;
    if (ev->kind == CLUSTER_EVENT_EXIT) exits++;
}

static void wait_ready(int n, int timeout_ms, const char *what) {
    long long end = now_ms() + timeout_ms;
    while (ready < n) {
        if (now_ms() > end) FAIL("%s: %d of %d workers READY after %d ms", what, ready, n, timeout_ms);
        cluster_dispatch(20);
    }
}

int main(int argc, char **argv) {
    if (argc > 1) workers = atoi(argv[1]);
    struct rlimit rl;
    CHECK(getrlimit(RLIMIT_NOFILE, &rl) == 0, "getrlimit");
    rlim_t need = (rlim_t)workers * 3 + 256;
    if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < need) {
        printf("many_workers: SKIPPED: the hard fd limit %llu is below the %llu fds %d workers need\n",
               (unsigned long long)rl.rlim_max, (unsigned long long)need, workers);
        return 0;
    }
    if (rl.rlim_cur < need) {
        rl.rlim_cur = need;
        CHECK(setrlimit(RLIMIT_NOFILE, &rl) == 0, "setrlimit: %s", strerror(errno));
    }
    test_deadline(240);
    long long t0 = now_ms();
    int port = start_rr_cluster((uint32_t)workers, worker_main, on_primary);
    wait_ready(workers, 120000, "start");
    long long started = now_ms() - t0;

    /* 4096 connections, 8 at a time, from a child (the loop turns here). */
    pid_t pid = fork_client((const int[]){-1});
    if (pid == 0) answered_clients(port, CONNS, 8, 120);
    int status = dispatch_until_exit(pid, 120000, "the clients");
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the clients failed (status %d)", status);

    uint32_t *ids = calloc((size_t)workers, sizeof *ids);
    CHECK(ids != NULL, "calloc");
    int n = OK(cluster_workers(ids, (size_t)workers));
    CHECK(n == workers, "%d workers listed, expected %d", n, workers);
    long total = 0, min = -1, max = 0;
    /* Counted when acknowledged: the last ACKs may still be on their way when the clients
     * have their answers. */
    long long end = now_ms() + 10000;
    for (;;) {
        total = 0, min = -1, max = 0;
        for (int i = 0; i < n; i++) {
            struct cluster_worker_info info;
            OK(cluster_worker_info(ids[i], &info));
            long c = (long)info.connections;
            total += c;
            if (min < 0 || c < min) min = c;
            if (c > max) max = c;
        }
        if (total >= CONNS || now_ms() > end) break;
        cluster_dispatch(20);
    }
    long share = CONNS / workers;
    printf("many_workers: %d workers READY in %lld ms; %ld connections, per worker min %ld max %ld (share %ld)\n", workers,
           started, total, min, max, share);
    CHECK(total == CONNS, "%ld connections counted, %d made", total, CONNS);
    CHECK(min >= 1, "a worker served nothing");
    CHECK(max <= 4 * (share > 0 ? share : 1), "a worker served %ld, 4 times its share is %ld", max, 4 * share);

    /* A rolling reload of every worker: nothing grows in the primary. */
    int fds_before = count_fds(getpid());
    long rss_before = vm_rss_kb(getpid());
    t0 = now_ms();
    OK(cluster_reload());
    end = now_ms() + 180000;
    while (reloaded == -2) {
        if (now_ms() > end) FAIL("no RELOADED within 180 s (%d workers READY so far)", ready);
        cluster_dispatch(20);
    }
    CHECK(reloaded == 0, "the reload ended with %d", reloaded);
    /* The last old worker may still be on its way out: its fds go with its EXIT. */
    end = now_ms() + 20000;
    while (exits < workers) {
        if (now_ms() > end) FAIL("%d of %d old workers exited", exits, workers);
        cluster_dispatch(20);
    }
    int fds_after = count_fds(getpid());
    long rss_after = vm_rss_kb(getpid());
    printf("many_workers: reload of %d workers in %lld ms; primary fds %d -> %d, RSS %ld -> %ld KB\n", workers,
           now_ms() - t0, fds_before, fds_after, rss_before, rss_after);
    CHECK(fds_after == fds_before, "the primary holds %d fds after the reload, %d before", fds_after, fds_before);
#ifdef __SANITIZE_ADDRESS__
    /* ASan keeps freed memory in quarantine (up to 256 MB): RSS says nothing there. */
    (void)rss_before, (void)rss_after;
#else
    CHECK(rss_after <= rss_before + 4096, "the primary's RSS grew from %ld to %ld KB", rss_before, rss_after);
#endif

    /* Everyone answers after the reload too. */
    pid = fork_client((const int[]){-1});
    if (pid == 0) answered_clients(port, 512, 8, 60);
    status = dispatch_until_exit(pid, 60000, "the clients after the reload");
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the clients after the reload failed (status %d)", status);

    n = OK(cluster_workers(ids, (size_t)workers));
    pid_t *pids = calloc((size_t)n, sizeof *pids);
    CHECK(pids != NULL, "calloc");
    for (int i = 0; i < n; i++) {
        struct cluster_worker_info info;
        OK(cluster_worker_info(ids[i], &info));
        pids[i] = info.pid;
    }
    OK(cluster_shutdown(10000));
    end = now_ms() + 60000;
    int32_t rc;
    while ((rc = cluster_dispatch(50)) >= 0)
        if (now_ms() > end) FAIL("the cluster did not stop within 60 s");
    CHECK(rc == CLUSTER_E_CLOSED, "cluster_dispatch returned %d at the end", rc);
    for (int i = 0; i < n; i++) CHECK(pid_gone(pids[i]), "worker pid %d is still there", (int)pids[i]);
    printf("many_workers: all %d stopped\n", n);
    free(ids);
    free(pids);
    return 0;
}
