/* No fd growth after 100,000 handed-off connections: 2 FORK-mode workers, ROUND_ROBIN. The
 * primary's open fds (/proc/self/fd) are counted once the workers are READY and again after a
 * warm-up of 1,000 connections; a client then makes 100,000 connections (each: connect, write a
 * line, read the answer to EOF, close), 4 at a time. Once every connection is acknowledged and
 * the loop has turned with nothing pending, the primary holds exactly as many fds as after the
 * warm-up, and so does each worker. */
#include "harness.h"
#include <arpa/inet.h>

#define WORKERS 2
#define WARMUP 1000
#define CONNS 100000
#define BATCH 4

static void on_worker(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind == CLUSTER_EVENT_CONNECTION) answer_line(ev->fd);
}

static int worker_main(void *ud) {
    OK(cluster_worker_start(on_worker, ud));
    return cluster_run() == 0 ? 0 : 3;
}

static volatile int ready, exits, errors;
static pid_t pids[WORKERS + 1];
static void on_primary(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind == CLUSTER_EVENT_FORK && ev->worker_id <= WORKERS) pids[ev->worker_id] = ev->pid;
    if (ev->kind == CLUSTER_EVENT_READY) ready++;
    if (ev->kind == CLUSTER_EVENT_EXIT) exits++;
    if (ev->kind == CLUSTER_EVENT_ERROR) {
        errors++;
        fprintf(stderr, "ERROR event (worker %u): %.*s\n", ev->worker_id, (int)ev->len, ev->data);
    }
}

/* Runs the client and keeps the loop turning until it exits 0. */
static void run_client(int port, int conns, int timeout_ms) {
    fflush(stdout);
    pid_t cl = fork();
    CHECK(cl >= 0, "fork client");
    if (cl == 0) answered_clients(port, conns, BATCH, 140);
    int status = -1;
    long long end = now_ms() + timeout_ms;
    for (;;) {
        pid_t r = waitpid(cl, &status, WNOHANG);
        if (r == cl) break;
        CHECK(r == 0, "waitpid client: %s", strerror(errno));
        if (now_ms() > end) {
            kill(cl, SIGKILL);
            FAIL("the client did not finish %d connections within %d ms", conns, timeout_ms);
        }
        cluster_dispatch(50);
    }
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the client of %d connections failed (status 0x%x)", conns,
          status);
}

/* Connections the workers acknowledged. */
static uint64_t acknowledged(void) {
    uint64_t n = 0;
    for (uint32_t id = 1; id <= WORKERS; id++) {
        struct cluster_worker_info info;
        OK(cluster_worker_info(id, &info));
        n += info.connections;
    }
    return n;
}

/* Turns the loop until `want` connections are acknowledged, then a few more turns with nothing pending. */
static void settle(uint64_t want) {
    long long end = now_ms() + 10000;
    while (acknowledged() < want) {
        if (now_ms() > end) FAIL("only %llu of %llu connections acknowledged after 10 s", (unsigned long long)acknowledged(),
                                 (unsigned long long)want);
        cluster_dispatch(50);
    }
    CHECK(acknowledged() == want, "%llu connections acknowledged, expected %llu", (unsigned long long)acknowledged(),
          (unsigned long long)want);
    for (int i = 0; i < 5; i++) cluster_dispatch(20);
}

int main(void) {
    test_deadline(150);
    int port = start_rr_cluster(WORKERS, worker_main, on_primary);
    {
        long long end = now_ms() + 20000;
        while (ready < WORKERS) {
            if (now_ms() > end) FAIL("only %d of %d workers READY after 20 s", ready, WORKERS);
            cluster_dispatch(50);
        }
    }
    for (int i = 0; i < 5; i++) cluster_dispatch(20);
    int at_ready = count_fds(0);

    run_client(port, WARMUP, 30000);
    settle(WARMUP);
    int after_warmup = count_fds(0);
    int worker_fds[WORKERS + 1];
    for (int id = 1; id <= WORKERS; id++) {
        CHECK(pids[id] > 0, "FORK event of worker %d", id);
        worker_fds[id] = count_fds(pids[id]);
    }
    printf("fd_growth: primary fds: %d at READY, %d after %d connections; workers: %d %d\n", at_ready, after_warmup,
           WARMUP, worker_fds[1], worker_fds[2]);

    long long t0 = now_ms();
    run_client(port, CONNS, 120000);
    long long elapsed = now_ms() - t0;
    settle(WARMUP + CONNS);
    int after = count_fds(0);
    printf("fd_growth: %d connections in %lld ms (%.0f/s); primary fds after: %d\n", CONNS, elapsed,
           CONNS * 1000.0 / (double)(elapsed ? elapsed : 1), after);
    CHECK(after == after_warmup, "the primary holds %d fds after %d more connections, %d before", after, CONNS,
          after_warmup);
    for (int id = 1; id <= WORKERS; id++) {
        int n = count_fds(pids[id]);
        CHECK(n == worker_fds[id], "worker %d holds %d fds after %d more connections, %d before", id, n, CONNS,
              worker_fds[id]);
    }
    CHECK(errors == 0, "%d ERROR events", errors);

    OK(cluster_shutdown(10000));
    CHECK(cluster_run() == 0, "cluster_run after cluster_shutdown returns 0");
    CHECK(exits == WORKERS, "%d of %d workers exited", exits, WORKERS);
    printf("fd_growth: ok\n");
    return 0;
}
