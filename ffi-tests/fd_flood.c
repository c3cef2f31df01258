/* fd floods: worker 1 passes fds (cluster_send_fd) as fast as it can, FLOOD to worker 2 and
 * then FLOOD to the primary, and both receivers ignore MESSAGE events, as the C example does:
 * every fd they are given stays open. Everyone runs with RLIMIT_NOFILE at LIMIT.
 *
 * While worker 2 sleeps in its callback (reads nothing), the primary holds at most the fds of
 * one bounded queue for it (MAX_QUEUED_FDS, 32), not one per queued message. Once they read,
 * each receiver takes fds until fewer than 192 of its own are free, and refuses the rest: the
 * message is not delivered and its fd is closed, and worker 1 gets an ERROR event saying so.
 * Afterwards both still have room for connections: every client is answered, worker 2 answers
 * its share, and nothing is dropped. */
#include "harness.h"
#include <fcntl.h>
#include <sys/resource.h>

#define LIMIT 512
#define FLOOD 3000
#define SLEEP_MS 1000
#define CONNS 60

/* ---- workers ---- */

static int nullfd = -1, phase, sent, errs_w2, errs_primary, errs_other;

static void report(void) {
    char msg[96];
    int n = snprintf(msg, sizeof msg, "flooded %d %d %d", errs_w2, errs_primary, errs_other);
    OK(cluster_send(0, (const uint8_t *)msg, (size_t)n));
}

/* Phase 1: FLOOD fds to worker 2; phase 2: FLOOD to the primary; then report. AGAIN: wait
 * for DRAIN. */
static void flood_step(void) {
    while (phase == 1 || phase == 2) {
        if (sent == FLOOD) {
            sent = 0;
            phase++;
            if (phase == 2) OK(cluster_send(0, (const uint8_t *)"half", 4));
            continue;
        }
        int32_t rc = cluster_send_fd(phase == 1 ? 2 : 0, (const uint8_t *)"fd", 2, nullfd);
        if (rc == CLUSTER_E_AGAIN) return;
        OK(rc);
        sent++;
    }
    if (phase == 3) {
        phase = 4;
        report();
    }
}

static void on_worker(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind == CLUSTER_EVENT_CONNECTION) {
        answer_line(ev->fd);
    } else if (ev->kind == CLUSTER_EVENT_MESSAGE && ev->worker_id == 0) {
        if (ev->len == 5 && !memcmp(ev->data, "flood", 5)) {
            nullfd = open("/dev/null", O_RDONLY | O_CLOEXEC);
            CHECK(nullfd >= 0, "open /dev/null: %s", strerror(errno));
            phase = 1;
            flood_step();
        } else if (ev->len == 5 && !memcmp(ev->data, "sleep", 5)) {
            usleep(SLEEP_MS * 1000);
        } else if (ev->len == 4 && !memcmp(ev->data, "ping", 4)) {
            OK(cluster_send(0, (const uint8_t *)"pong", 4));
        }
    } else if (ev->kind == CLUSTER_EVENT_MESSAGE) {
        /* a passed fd, deliberately ignored (left open), as a careless receiver does */
    } else if (ev->kind == CLUSTER_EVENT_DRAIN) {
        flood_step();
    } else if (ev->kind == CLUSTER_EVENT_ERROR) {
        if (cluster_worker_id() == 1) {
            if (ev->worker_id == 2) errs_w2++;
            else if (ev->worker_id == 0) errs_primary++;
            else errs_other++;
            if (errs_w2 + errs_primary + errs_other == 1)
                fprintf(stderr, "[worker 1] first ERROR: %.*s\n", (int)ev->len, (const char *)ev->data);
        }
    }
}

static int worker_main(void *ud) {
    OK(cluster_worker_start(on_worker, ud));
    return cluster_run() == 0 ? 0 : 3;
}

/* ---- primary ---- */

static volatile int ready, half, flooded, pongs, stopping;
static int w2_errs, primary_errs, other_errs;
static pid_t w2_pid;

static void on_primary(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind == CLUSTER_EVENT_READY) ready++;
    if (ev->kind == CLUSTER_EVENT_FORK && ev->worker_id == 2) w2_pid = ev->pid;
    CHECK(ev->kind != CLUSTER_EVENT_ERROR, "an ERROR event in the primary: %.*s", (int)ev->len, (const char *)ev->data);
    CHECK(ev->kind != CLUSTER_EVENT_EXIT || stopping, "worker %u exited (code %d, signal %d)", ev->worker_id, ev->exit_code,
          ev->signal);
    if (ev->kind != CLUSTER_EVENT_MESSAGE) return;
    /* messages with a passed fd: deliberately ignored (the fd is left open) */
    if (ev->worker_id == 1 && ev->len == 4 && !memcmp(ev->data, "half", 4)) half = 1;
    if (ev->len == 4 && !memcmp(ev->data, "pong", 4)) pongs++;
    char text[96] = {0};
    memcpy(text, ev->data, ev->len < sizeof text - 1 ? ev->len : sizeof text - 1);
    if (sscanf(text, "flooded %d %d %d", &w2_errs, &primary_errs, &other_errs) == 3) flooded = 1;
}

int main(void) {
    test_deadline(110);
    setvbuf(stdout, NULL, _IONBF, 0);
    struct rlimit rl;
    CHECK(getrlimit(RLIMIT_NOFILE, &rl) == 0, "getrlimit");
    CHECK(rl.rlim_max >= LIMIT, "the hard limit allows %d fds", LIMIT);
    rl.rlim_cur = LIMIT;
    CHECK(setrlimit(RLIMIT_NOFILE, &rl) == 0, "setrlimit: %s", strerror(errno));
    int port = start_rr_cluster(3, worker_main, on_primary);
    { long long end = now_ms() + 20000; while (ready < 3) { CHECK(now_ms() < end, "workers ready"); OK(cluster_dispatch(50)); } }
    int base = count_fds(0);

    /* Worker 2 sleeps, worker 1 floods it: the primary's queue to worker 2 fills. */
    OK(cluster_send(2, (const uint8_t *)"sleep", 5));
    OK(cluster_send(1, (const uint8_t *)"flood", 5));
    int peak_queued = 0;
    long long end = now_ms() + 60000;
    while (!half) {
        CHECK(now_ms() < end, "worker 1 flooded worker 2 within 60 s");
        OK(cluster_dispatch(10));
        int n = count_fds(0) - base;
        if (n > peak_queued) peak_queued = n;
    }
    int peak_w2 = 0, peak_primary = 0;
    while (!flooded) {
        CHECK(now_ms() < end, "worker 1 flooded the primary within 60 s");
        OK(cluster_dispatch(10));
        int n = count_fds(0);
        if (n > peak_primary) peak_primary = n;
        n = count_fds(w2_pid);
        if (n > peak_w2) peak_w2 = n;
    }
    for (int i = 0; i < 20; i++) OK(cluster_dispatch(10));
    int w2_now = count_fds(w2_pid);
    if (w2_now > peak_w2) peak_w2 = w2_now;
    printf("fd_flood: %d fds to worker 2 and %d to the primary (limits %d): the primary held at most %d more fds "
           "while worker 2 slept; peaks: worker 2 %d fds, primary %d; worker 1 got %d ERRORs for worker 2, %d for "
           "the primary (%d other)\n",
           FLOOD, FLOOD, LIMIT, peak_queued, peak_w2, peak_primary, w2_errs, primary_errs, other_errs);
    CHECK(peak_queued <= 32 + 8, "the primary held %d fds for a worker that does not read", peak_queued);
    CHECK(w2_errs > 0 && primary_errs > 0, "the sender was told its fds were refused (%d, %d)", w2_errs, primary_errs);
    CHECK(peak_w2 < LIMIT - 128 && peak_primary < LIMIT - 128, "both kept room for connections (%d, %d of %d)", peak_w2,
          peak_primary, LIMIT);

    /* Both still serve: every connection is answered, worker 2 answers its share. */
    long w2_before = worker_stat(2, "connections");
    pid_t client = fork_client((const int[]){-1});
    if (client == 0) answered_clients(port, CONNS, 20, 60);
    int status = dispatch_until_exit(client, 60000, "the clients");
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "every one of the %d connections was answered (status %d)",
          CONNS, status);
    long w2_after = worker_stat(2, "connections");
    CHECK(w2_after > w2_before, "worker 2 answered connections after the flood (%ld, %ld before)", w2_after, w2_before);
    CHECK(total_stat("dropped") == 0, "no connection was dropped (%ld)", total_stat("dropped"));
    OK(cluster_send(2, (const uint8_t *)"ping", 4));
    end = now_ms() + 10000;
    while (!pongs) {
        CHECK(now_ms() < end, "worker 2 answers a message");
        OK(cluster_dispatch(10));
    }
    stopping = 1;
    OK(cluster_shutdown(5000));
    end = now_ms() + 20000;
    while (cluster_dispatch(50) >= 0) CHECK(now_ms() < end, "the runtime finished");
    printf("fd_flood: ok (worker 2 answered %ld connections after the flood)\n", w2_after - w2_before);
    return 0;
}
