/* The policies where workers accept by themselves, in FORK and in EXEC mode:
 *   accept_modes shared-fork | shared-exec        CLUSTER_POLICY_SHARED: the workers accept on
 *                                                 the primary's socket (EPOLLEXCLUSIVE).
 *   accept_modes reuseport-fork | reuseport-exec  CLUSTER_POLICY_REUSEPORT: each worker binds its
 *                                                 own SO_REUSEPORT socket on the port.
 * 4 workers on 127.0.0.1:0 answer "worker N"; a client makes 400 connections, 8 at a time, and
 * every one is answered. REUSEPORT must spread them (the kernel hashes the 4-tuple) over at
 * least 2 workers; SHARED may favour some workers, so its distribution is only reported. After
 * the graceful stop nothing listens on the port and every worker is gone. */
#include "harness.h"
#include <arpa/inet.h>

#define WORKERS 4
#define CONNS 400
#define BATCH 8
#define MAX_ID 64

static void on_worker(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind == CLUSTER_EVENT_CONNECTION) http_answer(ev->fd);
}

static int worker_main(void *ud) {
    OK(cluster_worker_start(on_worker, ud));
    return cluster_run() == 0 ? 0 : 3;
}

static volatile int ready, exits;
static pid_t pids[MAX_ID];
static void on_primary(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind == CLUSTER_EVENT_FORK && ev->worker_id < MAX_ID) pids[ev->worker_id] = ev->pid;
    if (ev->kind == CLUSTER_EVENT_READY) ready++;
    if (ev->kind == CLUSTER_EVENT_EXIT) exits++;
    if (ev->kind == CLUSTER_EVENT_ERROR) fprintf(stderr, "ERROR event (worker %u): %.*s\n", ev->worker_id, (int)ev->len, ev->data);
}

/* The client: CONNS connections, BATCH open at once; writes the per-worker counts to `out`. */
static void client(int port, int out) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    test_deadline(60);
    int counts[MAX_ID] = {0};
    long long t0 = now_ms();
    const char req[] = "GET / HTTP/1.0\r\nHost: test\r\n\r\n";
    for (int done = 0; done < CONNS; done += BATCH) {
        int fds[BATCH];
        for (int i = 0; i < BATCH; i++) {
            fds[i] = tcp_connect("127.0.0.1", port);
            CHECK(fds[i] >= 0, "connection %d: connect: %s", done + i, strerror(errno));
        }
        for (int i = 0; i < BATCH; i++)
            CHECK(write(fds[i], req, sizeof req - 1) == (ssize_t)(sizeof req - 1), "connection %d: write: %s", done + i,
                  strerror(errno));
        for (int i = 0; i < BATCH; i++) {
            char buf[512];
            ssize_t n = read_all(fds[i], buf, sizeof buf);
            close(fds[i]);
            const char *w = n > 0 ? strstr(buf, "worker ") : NULL;
            CHECK(w != NULL, "connection %d was not answered (%zd bytes: '%s')", done + i, n, n > 0 ? buf : "");
            int id = atoi(w + 7);
            CHECK(id >= 1 && id < MAX_ID, "connection %d: worker id %d", done + i, id);
            counts[id]++;
        }
    }
    long long elapsed = now_ms() - t0;
    CHECK(write(out, counts, sizeof counts) == (ssize_t)sizeof counts, "report the counts");
    CHECK(write(out, &elapsed, sizeof elapsed) == (ssize_t)sizeof elapsed, "report the time");
    _exit(0);
}

int main(int argc, char **argv) {
    if (cluster_is_worker()) return worker_main(NULL); /* EXEC mode lands here */
    test_deadline(120);
    const char *c = argc > 1 ? argv[1] : "";
    int reuseport = !strncmp(c, "reuseport-", 10), shared = !strncmp(c, "shared-", 7);
    const char *mode = reuseport ? c + 10 : shared ? c + 7 : "";
    int exec_mode = !strcmp(mode, "exec");
    if (!(reuseport || shared) || !(exec_mode || !strcmp(mode, "fork"))) {
        fprintf(stderr, "usage: %s shared-fork|shared-exec|reuseport-fork|reuseport-exec\n", argv[0]);
        return 2;
    }

    cluster_config *cfg = cluster_config_new();
    CHECK(cfg != NULL, "cluster_config_new");
    OK(cluster_config_set_workers(cfg, WORKERS));
    OK(cluster_config_set_signals(cfg, false));
    OK(cluster_config_set_policy(cfg, reuseport ? CLUSTER_POLICY_REUSEPORT : CLUSTER_POLICY_SHARED));
    if (exec_mode) OK(cluster_config_set_mode(cfg, CLUSTER_MODE_EXEC));
    else OK(cluster_config_set_worker_main(cfg, worker_main, NULL));
    CHECK(OK(cluster_config_listen_tcp(cfg, "127.0.0.1", 0)) == 0, "the listener is index 0");
    OK(cluster_primary_start(cfg, on_primary, NULL));
    cluster_config_free(cfg);
    int port = OK(cluster_local_port(0));
    CHECK(port > 0, "port 0 was given a real port (got %d)", port);
    {
        long long end = now_ms() + 20000;
        while (ready < WORKERS) {
            if (now_ms() > end) FAIL("only %d of %d workers READY after 20 s", ready, WORKERS);
            cluster_dispatch(50);
        }
    }
    for (uint32_t id = 1; id <= WORKERS; id++) CHECK(pids[id] > 0, "FORK event of worker %u", id);

    int p[2];
    CHECK(pipe(p) == 0, "pipe");
    pid_t cl = fork();
    CHECK(cl >= 0, "fork client");
    if (cl == 0) {
        close(p[0]);
        client(port, p[1]);
    }
    close(p[1]);
    int status = -1;
    long long end = now_ms() + 60000;
    for (;;) {
        pid_t r = waitpid(cl, &status, WNOHANG);
        if (r == cl) break;
        CHECK(r == 0, "waitpid client: %s", strerror(errno));
        if (now_ms() > end) {
            kill(cl, SIGKILL);
            FAIL("the client did not finish %d connections within 60 s", CONNS);
        }
        cluster_dispatch(50);
    }
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the client failed (status 0x%x)", status);
    int counts[MAX_ID];
    long long elapsed = 0;
    CHECK(read(p[0], counts, sizeof counts) == (ssize_t)sizeof counts, "the client's counts");
    CHECK(read(p[0], &elapsed, sizeof elapsed) == (ssize_t)sizeof elapsed, "the client's time");
    close(p[0]);

    int total = 0, served = 0;
    char dist[256];
    size_t dl = 0;
    for (int id = 1; id < MAX_ID; id++) {
        if (!counts[id]) continue;
        CHECK(id <= WORKERS, "worker %d answered, but only workers 1..%d exist", id, WORKERS);
        total += counts[id];
        served++;
        dl += (size_t)snprintf(dist + dl, sizeof dist - dl, " w%d=%d", id, counts[id]);
    }
    CHECK(total == CONNS, "%d of %d connections answered", total, CONNS);
    printf("accept_modes %s: %d connections in %lld ms, by worker:%s\n", c, CONNS, elapsed, dist);
    if (reuseport) CHECK(served >= 2, "REUSEPORT: only %d worker(s) served %d connections", served, CONNS);

    OK(cluster_shutdown(10000));
    CHECK(cluster_run() == 0, "cluster_run after cluster_shutdown returns 0");
    CHECK(exits == WORKERS, "%d of %d workers exited", exits, WORKERS);
    int fd = tcp_connect("127.0.0.1", port);
    CHECK(fd < 0, "something still listens on 127.0.0.1:%d after the stop", port);
    for (uint32_t id = 1; id <= WORKERS; id++) CHECK(pid_gone(pids[id]), "worker %u (pid %d) is gone", id, (int)pids[id]);
    printf("accept_modes %s: ok\n", c);
    return 0;
}
