/* A worker that cannot take more fds (RLIMIT_NOFILE reached): the kernel drops the passed
 * connections with MSG_CTRUNC, the worker refuses them (NACK), and the primary, which kept its
 * copies, hands them to another worker. Every connection is answered. */
#include "harness.h"
#include <sys/resource.h>

#define CONNS 20

static struct rlimit saved; /* the worker's limit before it chokes */

static void on_worker(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind == CLUSTER_EVENT_CONNECTION) http_answer(ev->fd);
    if (ev->kind == CLUSTER_EVENT_MESSAGE && ev->len == 5 && memcmp(ev->data, "choke", 5) == 0) {
        /* No fd can be opened or received any more: the lowest free fd is above the limit. */
        int top = dup(0);
        CHECK(top >= 0, "dup");
        close(top);
        /* The soft limit only: the worker raises it again before it exits, so that the
         * sanitizers can still open their report files then. */
        CHECK(getrlimit(RLIMIT_NOFILE, &saved) == 0, "getrlimit: %s", strerror(errno));
        struct rlimit rl = {(rlim_t)top, saved.rlim_max};
        CHECK(setrlimit(RLIMIT_NOFILE, &rl) == 0, "setrlimit: %s", strerror(errno));
        OK(cluster_send(0, (const uint8_t *)"choked", 6));
    }
}

static int worker_main(void *ud) {
    OK(cluster_worker_start(on_worker, ud));
    int rc = cluster_run() == 0 ? 0 : 3;
    if (saved.rlim_cur) CHECK(setrlimit(RLIMIT_NOFILE, &saved) == 0, "restoring the limit: %s", strerror(errno));
    return rc;
}

static volatile int ready, choked;
static void on_primary(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind == CLUSTER_EVENT_READY) ready++;
    if (ev->kind == CLUSTER_EVENT_MESSAGE && ev->worker_id == 1) choked = 1;
}

int main(void) {
    test_deadline(60);
    if (getenv("RCLUSTER_LOG")) cluster_log_init();
    cluster_config *cfg = cluster_config_new();
    OK(cluster_config_set_workers(cfg, 2));
    OK(cluster_config_set_worker_main(cfg, worker_main, NULL));
    OK(cluster_config_set_signals(cfg, false));
    OK(cluster_config_listen_tcp(cfg, "127.0.0.1", 0));
    OK(cluster_primary_start(cfg, on_primary, NULL));
    cluster_config_free(cfg);
    int port = OK(cluster_local_port(0));
    { long long end = now_ms() + 20000; while (ready < 2) { CHECK(now_ms() < end, "workers ready"); cluster_dispatch(50); } }
    OK(cluster_send(1, (const uint8_t *)"choke", 5));
    dispatch_until(&choked, 10000, "worker 1 at its fd limit");

    int p[2];
    CHECK(pipe(p) == 0, "pipe");
    pid_t client = fork_client((const int[]){p[1], -1});
    if (client == 0) {
        int by[3] = {0};
        for (int i = 0; i < CONNS; i++) {
            int w = http_worker("127.0.0.1", port);
            if (w >= 1 && w <= 2) by[w]++;
        }
        char line[64];
        int n = snprintf(line, sizeof line, "%d %d\n", by[1], by[2]);
        ssize_t wr = write(p[1], line, (size_t)n);
        (void)wr;
        _exit(0);
    }
    close(p[1]);
    int status = dispatch_until_exit(client, 30000, "the client");
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "client status 0x%x", status);
    char line[64];
    CHECK(read_bounded(p[0], line, sizeof line, 1000) > 0, "the client's report");
    int by1 = -1, by2 = -1;
    CHECK(sscanf(line, "%d %d", &by1, &by2) == 2, "report '%s'", line);
    CHECK(by1 == 0 && by2 == CONNS, "answers: worker 1 %d, worker 2 %d of %d", by1, by2, CONNS);
    struct cluster_worker_info info;
    OK(cluster_worker_info(1, &info));
    CHECK(info.connections == 0, "worker 1 acknowledged %llu connections", (unsigned long long)info.connections);
    OK(cluster_shutdown(5000));
    CHECK(cluster_run() == 0, "graceful stop");
    printf("fd_limit: ok\n");
    return 0;
}
