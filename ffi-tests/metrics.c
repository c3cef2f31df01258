/* The primary's metrics endpoint (cluster_config_set_metrics): Prometheus text on /metrics and
 * a health check on /healthz, served from the primary's loop.
 *   2 FORK workers, round-robin, healthy_workers 2. Checked:
 *   - /healthz: 200 once both are READY; 503 ("need 2") while one is dead and its replacement
 *     waits its backoff; 200 again when it is back; 503 ("shutting down") from the moment a
 *     graceful shutdown is asked: "draining" for the drain delay (1.5 s) while requests are
 *     still served, then "shutting down" while a worker still drains;
 *   - /metrics: 200, text/plain; version=0.0.4, workers by state, per-worker connection counts
 *     that match the requests served (round-robin: 3 each of 6), restarts of the slot;
 *   - HEAD (no body), 404, 405, a malformed request (400), a 9 KiB header (431);
 *   - 40 clients that connect and send nothing (more than the 32 scrapes served at once)
 *     neither stop the cluster nor the next scrape (the oldest idle ones make room for new
 *     ones), and every one is closed within the 5 s deadline.
 * The loop runs here; HTTP clients run in forked children. */
#include "harness.h"
#include "load.h"

#include <fcntl.h>

static int ready, exits, forks;
static pid_t pid_of[16];

static void on_worker(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind == CLUSTER_EVENT_CONNECTION) http_answer(ev->fd);
}

static int worker_main(void *ud) {
    (void)ud;
    OK(cluster_worker_start(on_worker, NULL));
    return cluster_run() == 0 ? 0 : 3;
}

static void on_primary(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind == CLUSTER_EVENT_READY) ready++;
    if (ev->kind == CLUSTER_EVENT_EXIT) exits++;
    if (ev->kind == CLUSTER_EVENT_FORK) {
        forks++;
        if (ev->worker_id < 16) pid_of[ev->worker_id] = ev->pid;
    }
}

/* Sends `req` to 127.0.0.1:port from a child and returns the whole answer (to EOF) in out. */
static void exchange(int port, const char *req, size_t req_len, char *out, size_t cap) {
    int p[2];
    CHECK(pipe2(p, O_CLOEXEC) == 0, "pipe");
    pid_t pid = fork_client((const int[]){p[1], -1});
    if (pid == 0) {
        int fd = tcp_connect("127.0.0.1", port);
        CHECK(fd >= 0, "connect to the metrics port");
        for (size_t off = 0; off < req_len;) {
            ssize_t w = write(fd, req + off, req_len - off);
            if (w <= 0) break;
            off += (size_t)w;
        }
        char buf[65536];
        ssize_t n = read_all(fd, buf, sizeof buf - 1);
        if (n < 0) n = 0;
        CHECK(write(p[1], buf, (size_t)n) == n, "report");
        _exit(0);
    }
    close(p[1]);
    int status = dispatch_until_exit(pid, 15000, "an HTTP exchange with the metrics endpoint");
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the HTTP client failed (status %d)", status);
    ssize_t n = read_all(p[0], out, cap - 1);
    close(p[0]);
    out[n > 0 ? n : 0] = '\0';
}

static void get(int port, const char *method, const char *path, char *out, size_t cap) {
    char req[256];
    int n = snprintf(req, sizeof req, "%s %s HTTP/1.1\r\nHost: x\r\n\r\n", method, path);
    exchange(port, req, (size_t)n, out, cap);
}

static int status_of(const char *resp) { return strncmp(resp, "HTTP/1.1 ", 9) ? -1 : atoi(resp + 9); }

static void expect(int port, const char *method, const char *path, int status, const char *has) {
    static char resp[65536];
    get(port, method, path, resp, sizeof resp);
    CHECK(status_of(resp) == status, "%s %s: status %d, expected %d:\n%.400s", method, path, status_of(resp), status,
          resp);
    CHECK(!has || strstr(resp, has), "%s %s: no '%s' in\n%.2000s", method, path, has, resp);
}

static void wait_for(volatile int *v, int want, int timeout_ms, const char *what) {
    long long end = now_ms() + timeout_ms;
    while (*v < want) {
        if (now_ms() > end) FAIL("timed out waiting for %s", what);
        cluster_dispatch(20);
    }
}

int main(void) {
    test_deadline(100);
    cluster_config *cfg = cluster_config_new();
    OK(cluster_config_set_workers(cfg, 2));
    OK(cluster_config_set_signals(cfg, false));
    OK(cluster_config_set_worker_main(cfg, worker_main, NULL));
    OK(cluster_config_listen_tcp(cfg, "127.0.0.1", 0));
    EXPECT_ERR(cluster_config_set_metrics(cfg, "no-port"), CLUSTER_E_INVAL);
    EXPECT_ERR(cluster_config_set_healthy_workers(cfg, 0), CLUSTER_E_INVAL);
    OK(cluster_config_set_metrics(cfg, "127.0.0.1:0"));
    OK(cluster_config_set_healthy_workers(cfg, 2));
    OK(cluster_config_set_drain_delay(cfg, 1500));
    /* Deaths wait 3 s for their replacement: long enough to see /healthz say 503. */
    OK(cluster_config_set_min_uptime(cfg, 600000));
    OK(cluster_config_set_backoff(cfg, 3000, 3000, 600000));
    OK(cluster_primary_start(cfg, on_primary, NULL));
    cluster_config_free(cfg);
    int port = OK(cluster_local_port(0));
    int mport = OK(cluster_metrics_port());
    CHECK(mport > 0 && mport != port, "metrics port %d", mport);

    wait_for(&ready, 2, 15000, "2 workers READY");
    expect(mport, "GET", "/healthz", 200, "ok: 2 workers ready");
    uint32_t ids[6];
    CHECK(probe(port, 6, ids) == 6, "6 requests answered");
    /* The counts are the acknowledged connections: the last ACKs may trail the answers. */
    static char m[65536];
    long long end = now_ms() + 10000;
    for (;;) {
        get(mport, "GET", "/metrics", m, sizeof m);
        if (strstr(m, "rcluster_worker_connections_total{worker=\"1\",slot=\"0\"} 3") &&
            strstr(m, "rcluster_worker_connections_total{worker=\"2\",slot=\"1\"} 3"))
            break;
        CHECK(now_ms() < end, "the per-worker connection counts are not 3 and 3:\n%.3000s", m);
    }
    CHECK(status_of(m) == 200 && strstr(m, "Content-Type: text/plain; version=0.0.4"), "the /metrics answer:\n%.500s", m);
    CHECK(strstr(m, "rcluster_workers{state=\"ready\"} 2") && strstr(m, "# TYPE rcluster_worker_connections_total counter") &&
              strstr(m, "rcluster_healthy 1"),
          "/metrics:\n%.3000s", m);
    printf("metrics: /metrics is %zu bytes, e.g.\n%.600s\n", strlen(m), strstr(m, "\r\n\r\n") + 4);

    /* HEAD, unknown paths and methods, bad requests. */
    static char resp[65536];
    get(mport, "HEAD", "/metrics", resp, sizeof resp);
    CHECK(status_of(resp) == 200 && strstr(resp, "Content-Length: ") && !strstr(resp, "rcluster_workers"),
          "HEAD /metrics:\n%.300s", resp);
    expect(mport, "GET", "/nope", 404, NULL);
    expect(mport, "POST", "/metrics", 405, NULL);
    exchange(mport, "\x01\x02garbage\r\n\r\n", 13, resp, sizeof resp);
    CHECK(status_of(resp) == 400, "a malformed request: %.200s", resp);
    static char big[9300];
    int n = snprintf(big, sizeof big, "GET /metrics HTTP/1.1\r\nX-Big: ");
    memset(big + n, 'a', 9216);
    memcpy(big + n + 9216, "\r\n\r\n", 4);
    exchange(mport, big, (size_t)n + 9220, resp, sizeof resp);
    CHECK(status_of(resp) == 431, "a 9 KiB header: %.200s", resp);

    /* 40 idle scrapers: the cluster and the next scrape go on; they are closed after 5 s. */
    int idle[40];
    for (int i = 0; i < 40; i++) {
        idle[i] = tcp_connect("127.0.0.1", mport);
        CHECK(idle[i] >= 0, "idle connection %d", i);
    }
    for (int i = 0; i < 5; i++) cluster_dispatch(20);
    CHECK(probe(port, 1, ids) == 1, "a request while 40 scrapers idle");
    long long t0 = now_ms();
    expect(mport, "GET", "/healthz", 200, NULL); /* an idle one makes room for it */
    printf("metrics: a scrape behind 40 idle connections answered after %lld ms\n", now_ms() - t0);
    end = now_ms() + 10000;
    for (int i = 0; i < 32; i++) {
        char c;
        struct pollfd pfd = {.fd = idle[i], .events = POLLIN};
        while (poll(&pfd, 1, 0) == 0) {
            CHECK(now_ms() < end, "idle connection %d still open after 10 s", i);
            cluster_dispatch(20);
        }
        CHECK(read(idle[i], &c, 1) == 0, "idle connection %d got data", i);
    }
    for (int i = 0; i < 40; i++) close(idle[i]);

    /* A worker dies: 503 until its replacement is READY. */
    CHECK(kill(pid_of[2], SIGKILL) == 0, "kill");
    wait_for(&exits, 1, 10000, "worker 2's EXIT");
    expect(mport, "GET", "/healthz", 503, "need 2");
    expect(mport, "GET", "/metrics", 200, "rcluster_slot_restarts_total{slot=\"1\"} 1");
    wait_for(&ready, 3, 15000, "the replacement's READY");
    expect(mport, "GET", "/healthz", 200, NULL);

    /* A graceful shutdown waits out the drain delay first: 503 "draining" while it still
     * serves everything. */
    OK(cluster_shutdown(10000));
    expect(mport, "GET", "/healthz", 503, "draining");
    CHECK(probe(port, 4, ids) == 4, "requests served during the drain delay");
    /* Then it stops, with a worker still busy: a client holds it in its callback (connected,
     * request not sent yet); 503 "shutting down" until it is done. */
    int hold = tcp_connect("127.0.0.1", port);
    CHECK(hold >= 0, "connect");
    end = now_ms() + 10000;
    for (;;) {
        get(mport, "GET", "/healthz", resp, sizeof resp);
        if (strstr(resp, "shutting down")) break;
        CHECK(now_ms() < end, "the drain delay did not end: %.300s", resp);
        CHECK(status_of(resp) == 503, "/healthz during the drain delay: %.300s", resp);
    }
    CHECK(write(hold, "GET / HTTP/1.0\r\n\r\n", 18) == 18, "write");
    close(hold);
    end = now_ms() + 15000;
    int32_t rc;
    while ((rc = cluster_dispatch(50)) >= 0)
        if (now_ms() > end) FAIL("the cluster did not stop");
    CHECK(rc == CLUSTER_E_CLOSED, "dispatch returned %d", rc);
    CHECK(tcp_connect("127.0.0.1", mport) < 0, "the metrics port is closed after the stop");
    printf("metrics: ok\n");
    return 0;
}
