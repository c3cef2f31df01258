/* Configuration values at their edges: each mode starts a real cluster with one setting pushed
 * to a limit and checks that the cluster still serves.
 *
 * config_edges maxreq <n> <jitter>
 *   cluster_config_set_max_requests(n, jitter) with values up to UINT64_MAX: the primary starts
 *   (no panic in the jitter arithmetic), two workers answer 20 connections, and none is
 *   recycled (a limit of 1 + a random share of 2^64 is out of reach).
 * config_edges small-message fork|exec
 *   cluster_config_set_max_message(1), the smallest accepted: the limit bounds user payloads
 *   only, so workers still say hello, become READY, take connections (NEWCONN and ACK frames
 *   are larger than 1 byte) and exchange 1-byte messages (primary <-> worker, worker ->
 *   worker); a 2-byte message is refused with CLUSTER_E_TOOBIG on both sides.
 * config_edges exec-argv default|given <args...>
 *   EXEC-mode workers get this program's argv exactly, empty strings included (default: read
 *   from /proc/self/cmdline; given: through cluster_config_set_exec). tests/ffi.rs runs it with
 *   empty arguments in the middle and at the end.
 * config_edges silent-stdio fork|exec before|after
 *   A primary whose stdin and stdout are closed (before the start, or after it while workers
 *   run), with silent workers: the lowest free fds are 0 and 1, and the library must not put
 *   its own fds there (a worker's channel, the epoll fd a FORK child closes), where a silent
 *   worker's /dev/null stdio replaces them. Workers started at start and by cluster_fork()
 *   become READY, have /dev/null on fds 0-2 and answer messages.
 */
#include "harness.h"
#include <fcntl.h>
#include <sys/stat.h>

#define MAX_IDS 16

static struct {
    int ready, exited, errors, code, sig;
    char last[64];
    int messages;
} W[MAX_IDS + 1];
static int n_forks;

static void on_primary(void *ud, const cluster_event *ev) {
    (void)ud;
    uint32_t id = ev->worker_id;
    if (ev->kind == CLUSTER_EVENT_SHUTDOWN || ev->kind == CLUSTER_EVENT_DRAIN || id == 0) return;
    CHECK(id <= MAX_IDS, "event %u about worker %u", ev->kind, id);
    switch (ev->kind) {
    case CLUSTER_EVENT_FORK:
        n_forks++;
        break;
    case CLUSTER_EVENT_READY:
        W[id].ready = 1;
        break;
    case CLUSTER_EVENT_MESSAGE: {
        size_t n = ev->len < sizeof W[id].last - 1 ? ev->len : sizeof W[id].last - 1;
        memcpy(W[id].last, ev->data, n);
        W[id].last[n] = '\0';
        W[id].messages++;
        break;
    }
    case CLUSTER_EVENT_ERROR:
        fprintf(stderr, "ERROR about worker %u: %.*s\n", id, (int)ev->len, (const char *)ev->data);
        W[id].errors++;
        break;
    case CLUSTER_EVENT_EXIT:
        W[id].exited = 1;
        W[id].code = ev->exit_code;
        W[id].sig = ev->signal;
        break;
    default:
        break;
    }
}

/* Turns the loop until worker `id` has sent `count` messages in all; fails after timeout_ms. */
static void wait_messages(uint32_t id, int count, int timeout_ms, const char *what) {
    long long end = now_ms() + timeout_ms;
    while (W[id].messages < count) {
        if (now_ms() > end) FAIL("timed out after %d ms waiting for %s", timeout_ms, what);
        CHECK(cluster_dispatch(50) >= 0, "dispatch");
        CHECK(!W[id].errors && !W[id].exited, "worker %u failed while waiting for %s", id, what);
    }
}

static void wait_ready(int n, int timeout_ms) {
    long long end = now_ms() + timeout_ms;
    for (;;) {
        int r = 0;
        for (int i = 1; i <= MAX_IDS; i++) r += W[i].ready;
        if (r >= n) return;
        for (int i = 1; i <= MAX_IDS; i++)
            CHECK(!W[i].errors && !W[i].exited, "worker %d failed (code %d, signal %d) before %d were READY", i,
                  W[i].code, W[i].sig, n);
        if (now_ms() > end) FAIL("%d of %d workers READY after %d ms", r, n, timeout_ms);
        CHECK(cluster_dispatch(50) >= 0, "dispatch");
    }
}

/* Graceful stop; every worker exits cleanly. */
static void stop_clean(void) {
    OK(cluster_shutdown(5000));
    CHECK(cluster_run() == 0, "run returns 0 after a graceful stop");
    for (int i = 1; i <= MAX_IDS; i++)
        if (W[i].ready)
            CHECK(W[i].exited && W[i].code == 0 && W[i].sig == 0, "worker %d stopped cleanly (code %d, signal %d)", i,
                  W[i].code, W[i].sig);
}

/* ---- worker side ---- */

static int g_argc;
static char **g_argv;

static void on_worker(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind == CLUSTER_EVENT_CONNECTION) {
        answer_line(ev->fd);
        return;
    }
    if (ev->kind != CLUSTER_EVENT_MESSAGE) return;
    char text[64] = {0};
    memcpy(text, ev->data, ev->len < sizeof text - 1 ? ev->len : sizeof text - 1);
    if (!strcmp(text, "p")) {
        OK(cluster_send(0, (const uint8_t *)"q", 1));
    } else if (!strcmp(text, "t")) {
        /* small-message: one byte over the limit is refused here too, and a relay still goes */
        int32_t rc = cluster_send(0, (const uint8_t *)"ab", 2);
        OK(cluster_send(0, (const uint8_t *)(rc == CLUSTER_E_TOOBIG ? "T" : "F"), 1));
        uint32_t other = cluster_worker_id() == 1 ? 2 : 1;
        OK(cluster_send(other, (const uint8_t *)"r", 1));
    } else if (!strcmp(text, "r")) {
        /* relayed from the other worker: tell the primary who it came from */
        char c = (char)('0' + ev->worker_id);
        OK(cluster_send(0, (const uint8_t *)&c, 1));
    } else if (!strcmp(text, "argv")) {
        char line[1024];
        int n = snprintf(line, sizeof line, "%d", g_argc);
        for (int i = 1; i < g_argc && n < (int)sizeof line; i++)
            n += snprintf(line + n, sizeof line - (size_t)n, "|%s", g_argv[i]);
        OK(cluster_send(0, (const uint8_t *)line, strlen(line)));
    } else if (!strcmp(text, "stdio")) {
        /* silent-stdio: fds 0-2 are /dev/null, and the channel is none of them */
        struct stat st, null;
        int ok = stat("/dev/null", &null) == 0;
        for (int fd = 0; fd < 3; fd++)
            ok = ok && fstat(fd, &st) == 0 && st.st_rdev == null.st_rdev && S_ISCHR(st.st_mode);
        OK(cluster_send(0, (const uint8_t *)(ok ? "stdio null" : "stdio not null"), ok ? 10 : 14));
    }
}

static int worker_main(void *ud) {
    if (getenv("RCLUSTER_LOG")) cluster_log_init();
    OK(cluster_worker_start(on_worker, ud));
    return cluster_run() == 0 ? 0 : 3;
}

static cluster_config *base(uint32_t workers, int exec_mode) {
    cluster_config *cfg = cluster_config_new();
    CHECK(cfg != NULL, "config");
    OK(cluster_config_set_workers(cfg, workers));
    OK(cluster_config_set_mode(cfg, exec_mode ? CLUSTER_MODE_EXEC : CLUSTER_MODE_FORK));
    OK(cluster_config_set_worker_main(cfg, worker_main, NULL));
    OK(cluster_config_set_signals(cfg, false));
    OK(cluster_config_set_restart(cfg, false));
    return cfg;
}

/* Forks a client that makes `conns` connections; returns after all were answered. */
static void clients_answered(int port, int conns) {
    pid_t client = fork_client((const int[]){-1});
    if (client == 0) answered_clients(port, conns, 4, 60);
    int status = dispatch_until_exit(client, 30000, "the client's connections");
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "some connections were not answered (status 0x%x)", status);
}

/* ---- modes ---- */

static int case_maxreq(uint64_t n, uint64_t jitter) {
    cluster_config *cfg = base(2, 0);
    OK(cluster_config_set_max_requests(cfg, n, jitter));
    CHECK(OK(cluster_config_listen_tcp(cfg, "127.0.0.1", 0)) == 0, "listener 0");
    OK(cluster_primary_start(cfg, on_primary, NULL));
    cluster_config_free(cfg);
    int port = OK(cluster_local_port(0));
    wait_ready(2, 20000);
    clients_answered(port, 20);
    CHECK(n_forks == 2, "%d FORK events: a worker was recycled before its limit", n_forks);
    stop_clean();
    printf("maxreq %llu %llu: ok\n", (unsigned long long)n, (unsigned long long)jitter);
    return 0;
}

static int case_small_message(int exec_mode) {
    cluster_config *cfg = base(2, exec_mode);
    OK(cluster_config_set_max_message(cfg, 1));
    EXPECT_ERR(cluster_config_set_max_message(cfg, 0), CLUSTER_E_INVAL);
    CHECK(OK(cluster_config_listen_tcp(cfg, "127.0.0.1", 0)) == 0, "listener 0");
    OK(cluster_primary_start(cfg, on_primary, NULL));
    cluster_config_free(cfg);
    int port = OK(cluster_local_port(0));
    wait_ready(2, 20000);
    for (uint32_t id = 1; id <= 2; id++) {
        EXPECT_ERR(cluster_send(id, (const uint8_t *)"pp", 2), CLUSTER_E_TOOBIG);
        int before = W[id].messages;
        OK(cluster_send(id, (const uint8_t *)"p", 1));
        wait_messages(id, before + 1, 10000, "a 1-byte answer");
        CHECK(!strcmp(W[id].last, "q"), "worker %u answered '%s'", id, W[id].last);
    }
    EXPECT_ERR(cluster_broadcast((const uint8_t *)"pp", 2), CLUSTER_E_TOOBIG);
    /* Worker 1: a 2-byte send is refused (T), then a 1-byte relay to worker 2, which tells us. */
    int before1 = W[1].messages, before2 = W[2].messages;
    OK(cluster_send(1, (const uint8_t *)"t", 1));
    wait_messages(1, before1 + 1, 10000, "worker 1's TOOBIG report");
    CHECK(!strcmp(W[1].last, "T"), "worker 1's 2-byte send was not refused with TOOBIG ('%s')", W[1].last);
    wait_messages(2, before2 + 1, 10000, "worker 2's report of the relayed message");
    CHECK(!strcmp(W[2].last, "1"), "worker 2 got the relay from '%s', expected worker 1", W[2].last);
    clients_answered(port, 40);
    for (uint32_t id = 1; id <= 2; id++) {
        struct cluster_worker_info info;
        OK(cluster_worker_info(id, &info));
        CHECK(info.connections > 0, "worker %u took no connection", id);
    }
    stop_clean();
    printf("small-message (%s): ok\n", exec_mode ? "exec" : "fork");
    return 0;
}

static int case_exec_argv(int argc, char **argv, int given) {
    cluster_config *cfg = base(1, 1);
    if (given) OK(cluster_config_set_exec(cfg, "/proc/self/exe", (const char *const *)argv));
    OK(cluster_primary_start(cfg, on_primary, NULL));
    cluster_config_free(cfg);
    wait_ready(1, 20000);
    OK(cluster_send(1, (const uint8_t *)"argv", 4));
    wait_messages(1, 1, 10000, "the worker's argv");
    char mine[1024];
    int n = snprintf(mine, sizeof mine, "%d", argc);
    for (int i = 1; i < argc; i++) n += snprintf(mine + n, sizeof mine - (size_t)n, "|%s", argv[i]);
    CHECK(!strcmp(W[1].last, mine), "the worker's argv is '%s', the primary's '%s'", W[1].last, mine);
    stop_clean();
    printf("exec-argv (%s): worker argv %s: ok\n", given ? "given" : "default", mine);
    return 0;
}

static int case_silent_stdio(int exec_mode, int after) {
    /* stdin and stdout closed (stderr stays, for the report), so the lowest free fds are 0 and
     * 1: before the start (what the runtime opens may get them) or, after, once two workers
     * run (the next worker's channel may get them). */
    int out = dup(1);
    CHECK(out > 2, "dup(1)");
    if (!after) close(0), close(1);
    cluster_config *cfg = base(2, exec_mode);
    OK(cluster_config_set_silent(cfg, true));
    OK(cluster_primary_start(cfg, on_primary, NULL));
    cluster_config_free(cfg);
    wait_ready(2, 20000);
    if (after) close(0), close(1);
    int32_t id = OK(cluster_fork());
    CHECK(id == 3, "cluster_fork returned %d", id);
    wait_ready(3, 20000);
    for (uint32_t w = 1; w <= 3; w++) {
        int before = W[w].messages;
        OK(cluster_send(w, (const uint8_t *)"stdio", 5));
        wait_messages(w, before + 1, 10000, "the worker's stdio report");
        CHECK(!strcmp(W[w].last, "stdio null"), "worker %u: %s", w, W[w].last);
        OK(cluster_send(w, (const uint8_t *)"p", 1));
        wait_messages(w, before + 2, 10000, "a ping's answer");
    }
    stop_clean();
    dprintf(out, "silent-stdio (%s, closed %s the start): ok\n", exec_mode ? "exec" : "fork", after ? "after" : "before");
    return 0;
}

int main(int argc, char **argv) {
    g_argc = argc;
    g_argv = argv;
    if (cluster_is_worker()) return worker_main(NULL);
    test_deadline(100);
    if (getenv("RCLUSTER_LOG")) cluster_log_init();
    const char *mode = argc > 1 ? argv[1] : "";
    int exec_mode = argc > 2 && !strcmp(argv[2], "exec");
    if (!strcmp(mode, "maxreq") && argc == 4)
        return case_maxreq(strtoull(argv[2], NULL, 10), strtoull(argv[3], NULL, 10));
    if (!strcmp(mode, "small-message")) return case_small_message(exec_mode);
    if (!strcmp(mode, "exec-argv") && argc > 2) return case_exec_argv(argc, argv, !strcmp(argv[2], "given"));
    if (!strcmp(mode, "silent-stdio") && argc == 4) return case_silent_stdio(exec_mode, !strcmp(argv[3], "after"));
    FAIL("usage: config_edges maxreq <n> <jitter> | small-message fork|exec | exec-argv default|given <args> | "
         "silent-stdio fork|exec before|after");
}
