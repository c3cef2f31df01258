/* Nothing accepted is lost when a worker dies: connections handed to a worker that never
 * acknowledges them (it is stuck) and then crashes (SIGKILL) go to the other workers, and every
 * client gets its answer. The crash is reported as such (EXIT with the signal, not after a
 * disconnect), and the supervisor's replacement (same slot, after the restart backoff) takes
 * connections. */
#include "harness.h"
#include <fcntl.h>

#define WORKERS 3
#define CONNS 90
#define MAX_IDS 8

/* ---------------------------------------------------------------- worker side ---- */

static void on_worker(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind == CLUSTER_EVENT_CONNECTION) {
        answer_line(ev->fd);
    } else if (ev->kind == CLUSTER_EVENT_MESSAGE && ev->worker_id == 0 && ev->len == 5 &&
               memcmp(ev->data, "stall", 5) == 0) {
        /* Stuck for good inside the callback: the channel is never read again, so the
         * connections handed to this worker stay unacknowledged. */
        OK(cluster_send(0, (const uint8_t *)"stalling", 8));
        for (;;) pause();
    }
}

static int worker_main(void *ud) {
    OK(cluster_worker_start(on_worker, ud));
    return cluster_run() == 0 ? 0 : 3;
}

/* ---------------------------------------------------------------- primary side ---- */

static pid_t pids[MAX_IDS + 1];
static volatile int ready_of[MAX_IDS + 1], forked_of[MAX_IDS + 1], exited_of[MAX_IDS + 1];
static volatile int ready, exits, stalling;
static int exit_code_of[MAX_IDS + 1], exit_signal_of[MAX_IDS + 1], exit_after_disconnect_of[MAX_IDS + 1];

static void on_primary(void *ud, const cluster_event *ev) {
    (void)ud;
    uint32_t id = ev->worker_id;
    switch (ev->kind) {
    case CLUSTER_EVENT_FORK:
        CHECK(id >= 1 && id <= MAX_IDS && ev->pid > 0, "FORK event: worker %u pid %d", id, ev->pid);
        pids[id] = ev->pid;
        forked_of[id] = 1;
        break;
    case CLUSTER_EVENT_READY:
        CHECK(id >= 1 && id <= MAX_IDS, "READY of worker %u", id);
        ready_of[id] = 1;
        ready++;
        break;
    case CLUSTER_EVENT_MESSAGE:
        CHECK(id == 1 && ev->len == 8 && memcmp(ev->data, "stalling", 8) == 0, "unexpected message from worker %u: %.*s",
              id, (int)ev->len, (const char *)ev->data);
        stalling = 1;
        break;
    case CLUSTER_EVENT_EXIT:
        CHECK(id >= 1 && id <= MAX_IDS && !exited_of[id], "EXIT of worker %u (once)", id);
        CHECK(ev->pid == pids[id], "EXIT of worker %u names pid %d, its FORK said %d", id, ev->pid, pids[id]);
        exit_code_of[id] = ev->exit_code;
        exit_signal_of[id] = ev->signal;
        exit_after_disconnect_of[id] = ev->exited_after_disconnect;
        exited_of[id] = 1;
        exits++;
        break;
    case CLUSTER_EVENT_ERROR:
        fprintf(stderr, "ERROR event (worker %u): %.*s\n", id, (int)ev->len, (const char *)ev->data);
        break;
    default:
        break;
    }
}

static uint64_t acked(uint32_t id) {
    struct cluster_worker_info info;
    OK(cluster_worker_info(id, &info));
    return info.connections;
}

static int parse_worker(const char *buf) {
    unsigned w;
    return sscanf(buf, "worker %u", &w) == 1 && w >= 1 && w <= MAX_IDS ? (int)w : -1;
}

/* The client of the crash: CONNS connections opened first, then a request on each, then
 * every answer read (30 s at most in all). Reports "answered N c1 c2 ..." on `out`. */
static void crash_client(int port, int out) {
    int fds[CONNS], answered = 0, counts[MAX_IDS + 1] = {0};
    for (int i = 0; i < CONNS; i++) {
        fds[i] = tcp_connect("127.0.0.1", port);
        CHECK(fds[i] >= 0, "client: connect #%d: %s", i, strerror(errno));
    }
    for (int i = 0; i < CONNS; i++) CHECK(write(fds[i], "hello\n", 6) == 6, "client: write #%d: %s", i, strerror(errno));
    long long end = now_ms() + 30000;
    for (int i = 0; i < CONNS; i++) {
        char buf[64];
        long long left = end - now_ms();
        ssize_t n = read_bounded(fds[i], buf, sizeof buf, left > 0 ? (int)left : 1);
        int w = n > 0 ? parse_worker(buf) : -1;
        if (w > 0) {
            answered++;
            counts[w]++;
        } else {
            fprintf(stderr, "client: connection #%d got no answer (%s)\n", i,
                    n == -2 ? "timed out" : n == 0 ? "closed unanswered" : n < 0 ? strerror(errno) : buf);
        }
        close(fds[i]);
    }
    char line[256];
    int len = snprintf(line, sizeof line, "answered %d", answered);
    for (int w = 1; w <= MAX_IDS; w++) len += snprintf(line + len, sizeof line - (size_t)len, " %d", counts[w]);
    snprintf(line + len, sizeof line - (size_t)len, "\n");
    CHECK(write(out, line, strlen(line)) == (ssize_t)strlen(line), "client: report");
}

/* The replacement's client: n sequential requests; same report. */
static void simple_client(int port, int out, int n) {
    int answered = 0, counts[MAX_IDS + 1] = {0};
    for (int i = 0; i < n; i++) {
        int fd = tcp_connect("127.0.0.1", port);
        CHECK(fd >= 0, "client: connect #%d: %s", i, strerror(errno));
        CHECK(write(fd, "hello\n", 6) == 6, "client: write #%d", i);
        char buf[64];
        ssize_t r = read_bounded(fd, buf, sizeof buf, 10000);
        int w = r > 0 ? parse_worker(buf) : -1;
        if (w > 0) {
            answered++;
            counts[w]++;
        }
        close(fd);
    }
    char line[256];
    int len = snprintf(line, sizeof line, "answered %d", answered);
    for (int w = 1; w <= MAX_IDS; w++) len += snprintf(line + len, sizeof line - (size_t)len, " %d", counts[w]);
    snprintf(line + len, sizeof line - (size_t)len, "\n");
    CHECK(write(out, line, strlen(line)) == (ssize_t)strlen(line), "client: report");
}

/* Reads a client's report (written before it exited) into answered and counts[]. */
static void read_report(int fd, int *answered, int counts[MAX_IDS + 1], const char *who) {
    char line[256];
    ssize_t n = read_bounded(fd, line, sizeof line, 1000);
    CHECK(n > 0, "%s reported nothing", who);
    printf("%s: %s", who, line);
    const char *p = line;
    int used;
    CHECK(sscanf(p, "answered %d%n", answered, &used) == 1, "%s report '%s'", who, line);
    p += used;
    for (int w = 1; w <= MAX_IDS; w++) {
        CHECK(sscanf(p, " %d%n", &counts[w], &used) == 1, "%s report '%s'", who, line);
        p += used;
    }
}

int main(void) {
    test_deadline(110);
    setvbuf(stdout, NULL, _IONBF, 0);
    if (getenv("RCLUSTER_LOG")) cluster_log_init();
    long long t0 = now_ms();
    cluster_config *cfg = cluster_config_new();
    CHECK(cfg != NULL, "cluster_config_new");
    OK(cluster_config_set_workers(cfg, WORKERS));
    OK(cluster_config_set_policy(cfg, CLUSTER_POLICY_ROUND_ROBIN));
    OK(cluster_config_set_worker_main(cfg, worker_main, NULL));
    OK(cluster_config_set_signals(cfg, false));
    CHECK(OK(cluster_config_listen_tcp(cfg, "127.0.0.1", 0)) == 0, "first listener is index 0");
    OK(cluster_primary_start(cfg, on_primary, NULL));
    cluster_config_free(cfg);
    int port = OK(cluster_local_port(0));
    {
        long long end = now_ms() + 20000;
        while (ready < WORKERS) {
            if (now_ms() > end) FAIL("timed out after 20000 ms: %d of %d workers ready", ready, WORKERS);
            cluster_dispatch(50);
        }
    }
    for (int id = 1; id <= WORKERS; id++) CHECK(forked_of[id] && ready_of[id], "worker %d forked and ready", id);

    /* Worker 1 gets stuck. */
    OK(cluster_send(1, (const uint8_t *)"stall", 5));
    dispatch_until(&stalling, 10000, "worker 1's \"stalling\"");

    /* 90 clients at once. */
    int p[2];
    CHECK(pipe2(p, O_CLOEXEC) == 0, "pipe");
    pid_t client = fork_client((const int[]){p[1], -1});
    if (client == 0) {
        crash_client(port, p[1]);
        _exit(0);
    }
    close(p[1]);

    /* Workers 2 and 3 serve theirs; worker 1's pile up unacknowledged. */
    long long end = now_ms() + 20000;
    while (acked(2) + acked(3) < 40) {
        if (now_ms() > end)
            FAIL("timed out after 20000 ms: workers 2 and 3 acknowledged %llu connections, waiting for 40",
                 (unsigned long long)(acked(2) + acked(3)));
        int st = 0;
        CHECK(waitpid(client, &st, WNOHANG) == 0, "the client ended early (status %d)", st);
        cluster_dispatch(50);
    }
    CHECK(acked(1) == 0, "the stuck worker 1 acknowledged %llu connections", (unsigned long long)acked(1));
    printf("worker_death: workers 2+3 acknowledged %llu, worker 1 none: killing worker 1 (pid %d)\n",
           (unsigned long long)(acked(2) + acked(3)), (int)pids[1]);

    /* A crash, not a stop asked for. */
    CHECK(kill(pids[1], SIGKILL) == 0, "kill worker 1: %s", strerror(errno));
    int status = dispatch_until_exit(client, 40000, "the client's 90 answers");
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the client failed (status %d)", status);
    int answered, counts[MAX_IDS + 1];
    read_report(p[0], &answered, counts, "worker_death: crash client");
    close(p[0]);
    CHECK(answered == CONNS, "%d of %d connections answered: %d lost with the dead worker", answered, CONNS,
          CONNS - answered);
    CHECK(counts[1] == 0, "the stuck worker 1 answered %d connections", counts[1]);

    dispatch_until(&exited_of[1], 10000, "worker 1's EXIT");
    CHECK(exit_signal_of[1] == SIGKILL, "worker 1's EXIT: signal %d, expected SIGKILL (%d)", exit_signal_of[1], SIGKILL);
    CHECK(exit_code_of[1] == -1, "worker 1's EXIT: exit code %d, expected -1 (killed)", exit_code_of[1]);
    CHECK(!exit_after_disconnect_of[1], "worker 1's EXIT says exited_after_disconnect: it crashed");
    CHECK(pid_gone(pids[1]), "worker 1 (pid %d) is gone", (int)pids[1]);
    CHECK(exits == 1, "%d EXIT events, only worker 1 ended", exits);
    {
        long long e2 = now_ms() + 5000;
        while (acked(2) + acked(3) < CONNS) {
            if (now_ms() > e2) FAIL("timed out after 5000 ms: workers 2 and 3 acknowledged %llu of %d",
                                    (unsigned long long)(acked(2) + acked(3)), CONNS);
            cluster_dispatch(50);
        }
        CHECK(acked(2) + acked(3) == CONNS, "workers 2 and 3 acknowledged %llu connections, %d were made",
              (unsigned long long)(acked(2) + acked(3)), CONNS);
    }

    /* The supervisor replaces the crashed worker by itself: worker 4, in worker 1's slot. */
    int nid = WORKERS + 1;
    dispatch_until(&ready_of[nid], 20000, "the automatic replacement's READY");
    CHECK(forked_of[nid] && pids[nid] > 0, "the replacement's FORK event");
    uint32_t ids[8];
    int nlive = OK(cluster_workers(ids, 8));
    CHECK(nlive == 3 && ids[0] == 2 && ids[1] == 3 && ids[2] == (uint32_t)nid, "live workers after the crash: %d", nlive);
    struct cluster_worker_info info;
    OK(cluster_worker_info((uint32_t)nid, &info));
    CHECK(info.restarts == 1, "the replacement's slot restarted once (%u)", info.restarts);

    CHECK(pipe2(p, O_CLOEXEC) == 0, "pipe");
    client = fork_client((const int[]){p[1], -1});
    if (client == 0) {
        simple_client(port, p[1], 10);
        _exit(0);
    }
    close(p[1]);
    status = dispatch_until_exit(client, 30000, "the 10 requests after the replacement");
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the second client failed (status %d)", status);
    read_report(p[0], &answered, counts, "worker_death: after the replacement");
    close(p[0]);
    CHECK(answered == 10, "%d of 10 connections answered after the replacement", answered);
    CHECK(counts[1] == 0, "the dead worker 1 answered %d", counts[1]);
    CHECK(counts[nid] >= 3, "round-robin over 3 workers: the replacement %d answered %d of 10", nid, counts[nid]);

    /* Graceful stop: the three live workers exit cleanly. */
    OK(cluster_shutdown(10000));
    CHECK(cluster_run() == 0, "graceful stop");
    CHECK(exits == 4, "%d EXIT events, expected 4 (the crashed worker and three at the stop)", exits);
    int live[3] = {2, 3, nid};
    for (int i = 0; i < 3; i++) {
        int id = live[i];
        CHECK(exited_of[id], "worker %d exited", id);
        CHECK(exit_code_of[id] == 0 && exit_signal_of[id] == 0, "worker %d: exit code %d signal %d at the stop", id,
              exit_code_of[id], exit_signal_of[id]);
        CHECK(pid_gone(pids[id]), "worker %d (pid %d) is gone", id, (int)pids[id]);
    }
    printf("worker_death: ok (%lld ms)\n", now_ms() - t0);
    return 0;
}
