/* Signals in a C primary that lets the library take them over (the default):
 *   signals graceful  SIGTERM while a slow request is in flight: the request is answered,
 *                     the workers finish and exit, the primary exits 0, no process is left.
 *   signals twice     a second SIGTERM while a worker hangs: the stop becomes immediate.
 *   signals orphan-fork / orphan-exec
 *                     SIGKILL of the primary: every worker dies within 2 s (PR_SET_PDEATHSIG),
 *                     in FORK and in EXEC mode.
 * The test process is the driver: it runs the primary as its child, and is a subreaper, so
 * orphaned workers are reparented to it and it can prove how they died. */
#include "harness.h"

#define WORKERS 3

static int report_fd = -1; /* primary -> driver: "port P\n", "pid W P\n", "ready\n" */

static void say(const char *fmt, int a, int b) {
    char line[64];
    int n = snprintf(line, sizeof line, fmt, a, b);
    CHECK(write(report_fd, line, (size_t)n) == n, "report");
}

static void on_worker(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind != CLUSTER_EVENT_CONNECTION) return;
    char req[512] = {0};
    ssize_t r = read(ev->fd, req, sizeof req - 1);
    (void)r;
    if (strstr(req, "/slow")) usleep(500 * 1000); /* work that takes a while */
    if (strstr(req, "/hang")) pause();              /* a worker that never finishes */
    char resp[128];
    int n = snprintf(resp, sizeof resp, "HTTP/1.0 200 OK\r\n\r\nworker %u\n", cluster_worker_id());
    ssize_t w = write(ev->fd, resp, (size_t)n);
    (void)w;
    close(ev->fd);
}

static int worker_main(void *ud) {
    OK(cluster_worker_start(on_worker, ud));
    return cluster_run() == 0 ? 0 : 3;
}

static int ready_count;
static void on_primary(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind == CLUSTER_EVENT_FORK) say("pid %d %d\n", (int)ev->worker_id, ev->pid);
    if (ev->kind == CLUSTER_EVENT_READY && ++ready_count == WORKERS) say("ready\n", 0, 0);
}

static int run_primary(int exec_mode) {
    cluster_config *cfg = cluster_config_new();
    OK(cluster_config_set_workers(cfg, WORKERS));
    OK(cluster_config_set_worker_main(cfg, worker_main, NULL));
    OK(cluster_config_set_grace(cfg, 20000));
    if (exec_mode) OK(cluster_config_set_mode(cfg, CLUSTER_MODE_EXEC));
    OK(cluster_config_listen_tcp(cfg, "127.0.0.1", 0));
    OK(cluster_primary_start(cfg, on_primary, NULL));
    cluster_config_free(cfg);
    say("port %d %d\n", OK(cluster_local_port(0)), 0);
    return cluster_run() == 0 ? 0 : 2;
}

/* ---- driver ---- */

static pid_t primary;
static int port;
static pid_t workers[WORKERS + 1];

static void start_primary(int exec_mode) {
    int p[2];
    CHECK(pipe(p) == 0, "pipe");
    primary = fork();
    CHECK(primary >= 0, "fork");
    if (primary == 0) {
        close(p[0]);
        report_fd = p[1];
        _exit(run_primary(exec_mode));
    }
    close(p[1]);
    FILE *in = fdopen(p[0], "r");
    char line[128];
    int got_ready = 0;
    while (!got_ready && fgets(line, sizeof line, in)) {
        int a, b;
        if (sscanf(line, "port %d", &a) == 1) port = a;
        else if (sscanf(line, "pid %d %d", &a, &b) == 2 && a >= 1 && a <= WORKERS) workers[a] = b;
        else if (!strcmp(line, "ready\n")) got_ready = 1;
    }
    CHECK(got_ready && port > 0, "the primary reported its port and ready workers");
    for (int i = 1; i <= WORKERS; i++) CHECK(workers[i] > 0, "worker %d pid known", i);
}

static int send_request(const char *path) {
    int fd = tcp_connect("127.0.0.1", port);
    CHECK(fd >= 0, "connect");
    char req[128];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\n\r\n", path);
    CHECK(write(fd, req, (size_t)n) == n, "write");
    return fd;
}

static void graceful(void) {
    start_primary(0);
    CHECK(http_worker("127.0.0.1", port) >= 1, "served before the signal");
    int slow = send_request("/slow");
    long long t0 = now_ms();
    CHECK(kill(primary, SIGTERM) == 0, "SIGTERM");
    char buf[256];
    CHECK(read_all(slow, buf, sizeof buf) > 0 && strstr(buf, "worker "), "the in-flight request was answered: '%s'", buf);
    close(slow);
    int status = wait_child(primary, 15000);
    CHECK(status != -1, "the primary exited after SIGTERM");
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the primary exited 0 (status 0x%x)", status);
    CHECK(now_ms() - t0 < 10000, "a graceful stop does not wait for the grace period");
    for (int i = 1; i <= WORKERS; i++) CHECK(pid_gone(workers[i]), "worker %d is gone", i);
    CHECK(tcp_connect("127.0.0.1", port) < 0, "nothing listens any more");
}

static void twice(void) {
    start_primary(0);
    int hang = send_request("/hang");
    /* Make sure the hanging request reached a worker: the others still answer. */
    CHECK(http_worker("127.0.0.1", port) >= 1, "served");
    CHECK(kill(primary, SIGTERM) == 0, "first SIGTERM");
    long long t0 = now_ms();
    /* The first SIGTERM must not end it: the hanging worker holds it for the 20 s grace. */
    CHECK(wait_child(primary, 300) == -1, "still draining after the first SIGTERM");
    CHECK(kill(primary, SIGTERM) == 0, "second SIGTERM");
    int status = wait_child(primary, 10000);
    CHECK(status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit 0 after the second SIGTERM (0x%x)", status);
    CHECK(now_ms() - t0 < 10000, "the second SIGTERM stopped it now");
    close(hang);
    for (int i = 1; i <= WORKERS; i++) CHECK(pid_gone(workers[i]), "worker %d is gone", i);
}

static void orphan(int exec_mode) {
    start_primary(exec_mode);
    CHECK(kill(primary, SIGKILL) == 0, "SIGKILL the primary");
    CHECK(wait_child(primary, 5000) != -1, "reaped the primary");
    /* The workers are reparented to us (subreaper): each must die of SIGKILL within 2 s. */
    long long end = now_ms() + 2000;
    for (int i = 1; i <= WORKERS; i++) {
        int left = (int)(end - now_ms());
        int status = wait_child(workers[i], left > 0 ? left : 0);
        CHECK(status != -1, "worker %d (pid %d) still alive 2 s after the primary died", i, workers[i]);
        /* Either PR_SET_PDEATHSIG's SIGKILL got it, or it saw its channel close first and its
         * loop ended (cluster_run returned): both are a worker that did not outlive the primary. */
        CHECK((WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) || WIFEXITED(status), "worker %d ended (0x%x)", i, status);
    }
}

int main(int argc, char **argv) {
    if (cluster_is_worker()) return worker_main(NULL); /* EXEC-mode workers */
    CHECK(argc == 2, "usage: signals graceful|twice|orphan-fork|orphan-exec");
    test_deadline(60);
    CHECK(prctl(PR_SET_CHILD_SUBREAPER, 1) == 0, "subreaper");
    if (!strcmp(argv[1], "graceful")) graceful();
    else if (!strcmp(argv[1], "twice")) twice();
    else if (!strcmp(argv[1], "orphan-fork")) orphan(0);
    else if (!strcmp(argv[1], "orphan-exec")) orphan(1);
    else FAIL("unknown case %s", argv[1]);
    printf("signals %s: ok\n", argv[1]);
    return 0;
}
