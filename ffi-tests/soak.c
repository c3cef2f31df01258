/* Leak checks over time: 100,000 handoffs and 1,000,000 messages with a constant fd count and
 * bounded RSS in the primary and in the workers.
 *
 * 2 FORK-mode workers, ROUND_ROBIN on a TCP listener. Messages: the primary keeps a window of
 * 16-byte messages ("SOAK", worker id, sequence number) in flight to each worker, and each
 * worker echoes every one back; the primary checks that each echo comes from the worker it was
 * sent to, in order, and sends the next. Both sides honour CLUSTER_E_AGAIN: the sender keeps
 * what was refused and resumes on the DRAIN event. Handoffs: a client process makes
 * connections 4 at a time (connect, a line, the answer to EOF, close), as in fd_growth.c, while
 * the messages run. Each side runs its own loop: poll(cluster_fd()), then cluster_dispatch(0).
 *
 * A warm-up (WARM_CONNS handoffs and WARM_MSGS messages) comes first; then the primary's fd
 * count and VmRSS are taken, and each worker reports its own by message. After the soak, once
 * every connection is acknowledged and every echo is home, the fds must be exactly the same in
 * the primary and in each worker, and no VmRSS may have grown by RSS_BOUND_KB or more. No
 * ERROR event, no worker exit before the graceful shutdown, no process left.
 *
 * usage: soak [messages [handoffs [window [cork|plain]]]]   (defaults 1000000 100000 64 plain)
 *
 * `cork`: both sides wrap each loop turn in cluster_cork()/cluster_uncork() (never across the
 * poll), so a turn's sends leave as one Batch datagram. Not the default while the primary
 * mixes up batched frames of two workers: it reads at most 64 frames per channel per turn, and
 * what is left of a batch stays in its one shared frame reader, to be handed out on the next
 * read of whichever channel comes next, as that worker's frames (`soak 200000 0 64 cork` fails
 * with "the echo of a message sent to worker 1 arrived as from worker 2"). */
#include "harness.h"
#include <arpa/inet.h>

#define WORKERS 2
#define WARM_CONNS 1000
#define WARM_MSGS 20000
#define BATCH 4
#define MAX_WINDOW 4096
#define RSS_BOUND_KB (4 * 1024) /* growth allowed after the warm-up, primary and each worker: less than 4 bytes a message */
#define SOAK_MAGIC 0x4b414f53u  /* "SOAK" */

static uint32_t window = 64; /* messages in flight per worker */
static int corked;           /* both sides batch with cluster_cork/cluster_uncork around each turn */

struct soak_msg {
    uint32_t magic;
    uint32_t worker;
    uint64_t seq;
};

/* ---- worker side ---- */

/* Echoes refused with AGAIN wait here (in order) for the DRAIN event. */
static struct soak_msg w_backlog[MAX_WINDOW];
static size_t w_backlog_len;
static unsigned long w_agains;

static void w_flush_backlog(void) {
    size_t i = 0;
    for (; i < w_backlog_len; i++) {
        int32_t rc = cluster_send(0, (const uint8_t *)&w_backlog[i], sizeof w_backlog[i]);
        if (rc == CLUSTER_E_AGAIN) {
            w_agains++;
            break;
        }
        OK(rc);
    }
    memmove(w_backlog, w_backlog + i, (w_backlog_len - i) * sizeof w_backlog[0]);
    w_backlog_len -= i;
}

static void w_echo(const struct soak_msg *m) {
    if (w_backlog_len == 0) {
        int32_t rc = cluster_send(0, (const uint8_t *)m, sizeof *m);
        if (rc != CLUSTER_E_AGAIN) {
            OK(rc);
            return;
        }
        w_agains++;
    }
    CHECK(w_backlog_len < MAX_WINDOW, "more echoes waiting than any window holds");
    w_backlog[w_backlog_len++] = *m;
}

static void on_worker(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind == CLUSTER_EVENT_CONNECTION) {
        answer_line(ev->fd);
    } else if (ev->kind == CLUSTER_EVENT_DRAIN) {
        w_flush_backlog();
    } else if (ev->kind == CLUSTER_EVENT_MESSAGE) {
        CHECK(ev->worker_id == 0 && ev->fd == -1, "a message from the primary, no fd (from %u)", ev->worker_id);
        if (ev->len == sizeof(struct soak_msg)) {
            struct soak_msg m;
            memcpy(&m, ev->data, sizeof m);
            CHECK(m.magic == SOAK_MAGIC && m.worker == cluster_worker_id(), "a soak message for this worker");
            w_echo(&m);
        } else if (ev->len == 6 && !memcmp(ev->data, "report", 6)) {
            char msg[128];
            int n = snprintf(msg, sizeof msg, "report %u %ld %d %lu", cluster_worker_id(), vm_rss_kb(0), count_fds(0),
                             w_agains);
            OK(cluster_send(0, (const uint8_t *)msg, (size_t)n));
        } else {
            FAIL("unexpected message of %zu bytes", ev->len);
        }
    }
}

/* The worker's own loop: wait on cluster_fd() uncorked, then one corked turn, so the echoes of
 * a turn leave batched. */
static int worker_main(void *ud) {
    OK(cluster_worker_start(on_worker, ud));
    int fd = OK(cluster_fd());
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        poll(&p, 1, 1000);
        if (corked) OK(cluster_cork());
        int32_t rc = cluster_dispatch(0);
        /* The turn that ends the runtime leaves nothing to uncork: CLOSED then. */
        int32_t urc = corked ? cluster_uncork() : CLUSTER_OK;
        if (rc == CLUSTER_E_CLOSED || urc == CLUSTER_E_CLOSED) return 0;
        if (rc < 0 || urc < 0) return 3;
    }
}

/* ---- primary side ---- */

static volatile int ready, exits, errors, stopping;
static pid_t pids[WORKERS + 1];
static uint64_t target, sent_total, echoed;             /* messages of the current phase */
static uint64_t next_seq[WORKERS + 1], echo_seq[WORKERS + 1];
static uint32_t inflight[WORKERS + 1];
static int blocked[WORKERS + 1];
static unsigned long agains, drains;
static int reports;
static long w_rss[WORKERS + 1];
static int w_fds[WORKERS + 1];
static unsigned long w_agains_reported[WORKERS + 1];

static void pump(uint32_t w) {
    while (!blocked[w] && inflight[w] < window && sent_total < target) {
        struct soak_msg m = {.magic = SOAK_MAGIC, .worker = w, .seq = next_seq[w]};
        int32_t rc = cluster_send(w, (const uint8_t *)&m, sizeof m);
        if (rc == CLUSTER_E_AGAIN) {
            blocked[w] = 1;
            agains++;
            return;
        }
        OK(rc);
        next_seq[w]++;
        inflight[w]++;
        sent_total++;
    }
}

static void on_primary(void *ud, const cluster_event *ev) {
    (void)ud;
    uint32_t id = ev->worker_id;
    switch (ev->kind) {
    case CLUSTER_EVENT_FORK:
        CHECK(id >= 1 && id <= WORKERS, "worker id %u", id);
        pids[id] = ev->pid;
        break;
    case CLUSTER_EVENT_READY:
        ready++;
        break;
    case CLUSTER_EVENT_EXIT:
        exits++;
        if (!stopping) FAIL("worker %u exited during the soak: code %d signal %d", id, ev->exit_code, ev->signal);
        break;
    case CLUSTER_EVENT_ERROR:
        errors++;
        fprintf(stderr, "ERROR event (worker %u): %.*s\n", id, (int)ev->len, ev->data);
        break;
    case CLUSTER_EVENT_DRAIN:
        CHECK(id >= 1 && id <= WORKERS, "DRAIN names worker %u", id);
        drains++;
        blocked[id] = 0;
        pump(id);
        break;
    case CLUSTER_EVENT_MESSAGE:
        CHECK(id >= 1 && id <= WORKERS, "a message from worker %u", id);
        if (ev->len == sizeof(struct soak_msg)) {
            struct soak_msg m;
            memcpy(&m, ev->data, sizeof m);
            CHECK(m.magic == SOAK_MAGIC, "an echo");
            CHECK(m.worker == id, "the echo of a message sent to worker %u arrived as from worker %u (seq %llu)",
                  m.worker, id, (unsigned long long)m.seq);
            CHECK(m.seq == echo_seq[id], "worker %u: echo %llu arrived, %llu expected (order)", id,
                  (unsigned long long)m.seq, (unsigned long long)echo_seq[id]);
            CHECK(inflight[id] > 0, "an echo with nothing in flight");
            echo_seq[id]++;
            inflight[id]--;
            echoed++;
            pump(id);
        } else {
            char text[128] = {0};
            memcpy(text, ev->data, ev->len < sizeof text - 1 ? ev->len : sizeof text - 1);
            unsigned who;
            unsigned long ag;
            long rss;
            int fds;
            CHECK(sscanf(text, "report %u %ld %d %lu", &who, &rss, &fds, &ag) == 4 && who == id, "report '%s' from %u",
                  text, id);
            w_rss[id] = rss;
            w_fds[id] = fds;
            w_agains_reported[id] = ag;
            reports++;
        }
        break;
    default:
        break;
    }
}

/* One corked loop turn after waiting up to wait_ms for cluster_fd(). */
static void turn(int wait_ms) {
    struct pollfd p = {.fd = cluster_fd(), .events = POLLIN};
    poll(&p, 1, wait_ms);
    if (corked) OK(cluster_cork());
    for (uint32_t w = 1; w <= WORKERS; w++) pump(w);
    int32_t rc = cluster_dispatch(0);
    if (corked) OK(cluster_uncork());
    CHECK(rc >= 0, "cluster_dispatch returned %d", rc);
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

/* `conns` handoffs (a client process) and `msgs` echoed messages at the same time; returns
 * when both are done and every connection so far (`acked_total`) is acknowledged. */
static void run_phase(const char *name, int port, int conns, uint64_t msgs, uint64_t acked_total, int timeout_ms) {
    target = msgs;
    sent_total = echoed = 0;
    fflush(stdout);
    fflush(stderr);
    pid_t cl = -1;
    if (conns > 0) {
        cl = fork();
        CHECK(cl >= 0, "fork client");
        if (cl == 0) answered_clients(port, conns, BATCH, 170);
    }
    long long t0 = now_ms(), end = t0 + timeout_ms, msgs_ms = -1, conns_ms = conns > 0 ? -1 : 0;
    while (cl > 0 || echoed < target || acknowledged() < acked_total) {
        if (now_ms() > end) {
            if (cl > 0) kill(cl, SIGKILL), waitpid(cl, NULL, 0);
            FAIL("%s: not done after %d ms: %llu of %llu echoes, client %s, %llu of %llu connections acknowledged", name,
                 timeout_ms, (unsigned long long)echoed, (unsigned long long)target, cl > 0 ? "running" : "done",
                 (unsigned long long)acknowledged(), (unsigned long long)acked_total);
        }
        turn(20);
        if (msgs_ms < 0 && echoed == target) msgs_ms = now_ms() - t0;
        if (cl > 0) {
            int status;
            pid_t r = waitpid(cl, &status, WNOHANG);
            CHECK(r >= 0, "waitpid client: %s", strerror(errno));
            if (r == cl) {
                CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s: the client of %d connections failed (0x%x)",
                      name, conns, status);
                cl = -1;
                conns_ms = now_ms() - t0;
            }
        }
    }
    CHECK(acknowledged() == acked_total, "%llu connections acknowledged, expected %llu",
          (unsigned long long)acknowledged(), (unsigned long long)acked_total);
    for (uint32_t w = 1; w <= WORKERS; w++) CHECK(inflight[w] == 0, "worker %u: %u echoes missing", w, inflight[w]);
    printf("soak: %s: %llu messages echoed in %lld ms (%.0f/s), %d connections in %lld ms (%.0f/s)\n", name,
           (unsigned long long)msgs, msgs_ms, msgs * 1000.0 / (double)(msgs_ms > 0 ? msgs_ms : 1), conns, conns_ms,
           conns * 1000.0 / (double)(conns_ms > 0 ? conns_ms : 1));
    for (int i = 0; i < 5; i++) turn(20); /* nothing pending: let the last ACKs and closes settle */
}

/* Asks every worker for its VmRSS and fd count (answered after everything queued before). */
static void collect_reports(void) {
    reports = 0;
    for (uint32_t w = 1; w <= WORKERS; w++) OK(cluster_send(w, (const uint8_t *)"report", 6));
    long long end = now_ms() + 10000;
    while (reports < WORKERS) {
        CHECK(now_ms() < end, "%d of %d workers reported", reports, WORKERS);
        turn(20);
    }
}

int main(int argc, char **argv) {
    uint64_t msgs = argc > 1 ? strtoull(argv[1], NULL, 10) : 1000000;
    int conns = argc > 2 ? atoi(argv[2]) : 100000;
    if (argc > 3) window = (uint32_t)atoi(argv[3]);
    if (argc > 4) corked = !strcmp(argv[4], "cork");
    CHECK(window >= 1 && window <= MAX_WINDOW && conns >= 0, "usage: soak [messages [handoffs [window]]]");
    test_deadline(180);
    int port = start_rr_cluster(WORKERS, worker_main, on_primary);
    {
        long long end = now_ms() + 20000;
        while (ready < WORKERS) {
            if (now_ms() > end) FAIL("only %d of %d workers READY after 20 s", ready, WORKERS);
            turn(50);
        }
    }

    run_phase("warm-up", port, WARM_CONNS, WARM_MSGS, WARM_CONNS, 60000);
    collect_reports();
    int fds0 = count_fds(0);
    long rss0 = vm_rss_kb(0);
    long w_rss0[WORKERS + 1];
    int w_fds0[WORKERS + 1];
    for (uint32_t w = 1; w <= WORKERS; w++) {
        w_rss0[w] = w_rss[w];
        w_fds0[w] = w_fds[w];
    }
    printf("soak: after the warm-up: primary %d fds, %ld KiB; workers %d/%d fds, %ld/%ld KiB\n", fds0, rss0, w_fds0[1],
           w_fds0[2], w_rss0[1], w_rss0[2]);

    run_phase("soak", port, conns, msgs, (uint64_t)WARM_CONNS + (uint64_t)conns, 170000);
    collect_reports();
    int fds1 = count_fds(0);
    long rss1 = vm_rss_kb(0);
    printf("soak: at the end: primary %d fds, %ld KiB (%+ld); workers %d/%d fds, %ld/%ld KiB (%+ld/%+ld); "
           "AGAIN %lu in the primary (%lu DRAIN), %lu/%lu in the workers\n",
           fds1, rss1, rss1 - rss0, w_fds[1], w_fds[2], w_rss[1], w_rss[2], w_rss[1] - w_rss0[1], w_rss[2] - w_rss0[2],
           agains, drains, w_agains_reported[1], w_agains_reported[2]);
    CHECK(fds1 == fds0, "the primary holds %d fds after the soak, %d before", fds1, fds0);
    CHECK(!rss_checked() || rss1 - rss0 < RSS_BOUND_KB, "the primary's VmRSS grew by %ld KiB (bound %d)", rss1 - rss0, RSS_BOUND_KB);
    for (uint32_t w = 1; w <= WORKERS; w++) {
        CHECK(w_fds[w] == w_fds0[w], "worker %u holds %d fds after the soak, %d before", w, w_fds[w], w_fds0[w]);
        CHECK(!rss_checked() || w_rss[w] - w_rss0[w] < RSS_BOUND_KB, "worker %u's VmRSS grew by %ld KiB (bound %d)", w,
              w_rss[w] - w_rss0[w], RSS_BOUND_KB);
    }
    CHECK(errors == 0, "%d ERROR events", errors);

    stopping = 1;
    OK(cluster_shutdown(10000));
    CHECK(cluster_run() == 0, "cluster_run after cluster_shutdown returns 0");
    CHECK(exits == WORKERS, "%d of %d workers exited", exits, WORKERS);
    for (uint32_t w = 1; w <= WORKERS; w++) CHECK(pid_gone(pids[w]), "worker %u (pid %d) is gone", w, (int)pids[w]);
    printf("soak: ok\n");
    return 0;
}
