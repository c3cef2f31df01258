/* Supervision over a cluster's lifetime, one case per run:
 *   lifecycle reload  rolling reloads under continuous load: every worker is replaced, the
 *                     number of READY workers never drops below the configured 3, no request
 *                     fails; a second reload while one runs is refused; a reload whose
 *                     replacement dies aborts (RELOADED, exit_code -1) and the old workers keep
 *                     serving; after the cause is gone a reload succeeds again.
 *   lifecycle chaos   a random READY worker SIGKILLed every 300 ms for 4 s under load: the
 *                     supervisor brings the cluster back to 4 READY workers, the failed
 *                     requests are bounded by what the killed workers held, and cluster_stats
 *                     counts the restarts.
 *   lifecycle notify  sd_notify to a NOTIFY_SOCKET (a path, then an abstract "@name"):
 *                     READY=1 once every worker is READY, WATCHDOG=1 every WATCHDOG_USEC/2 (and
 *                     none when WATCHDOG_PID names another process), RELOADING=1 with
 *                     MONOTONIC_USEC and READY=1 again around a reload, STOPPING=1 at the stop.
 * The primary's loop runs in this process; clients run in forked children while the loop keeps
 * turning here. */
#include "harness.h"
#include "load.h"

#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stddef.h>
#include <sys/stat.h>
#include <sys/un.h>

#define MAX_IDS 256

/* ---------------------------------------------------------------- worker side ---- */

/* Set in the primary before a reload: workers forked from then on (FORK mode children
 * inherit it) exit at once, before their runtime starts. */
static int broken;
/* Work a worker does before it starts its runtime (the reload case: a replacement takes a
 * while to come up, so the reload runs under load). */
static int startup_ms;

static void on_worker(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind == CLUSTER_EVENT_CONNECTION) http_answer(ev->fd);
}

static int worker_main(void *ud) {
    if (broken) exit(1);
    if (startup_ms > 0) usleep((useconds_t)startup_ms * 1000);
    signal(SIGPIPE, SIG_IGN); /* a client that went away must not kill the worker */
    OK(cluster_worker_start(on_worker, ud));
    return cluster_run() == 0 ? 0 : 3;
}

/* ---------------------------------------------------------------- primary side ---- */

static pid_t pids[MAX_IDS];
static int forked_of[MAX_IDS], ready_of[MAX_IDS], gone_of[MAX_IDS], exited_of[MAX_IDS];
static int exit_code_of[MAX_IDS], exit_signal_of[MAX_IDS], exit_after_disconnect_of[MAX_IDS];
static volatile int forks, ready_events, exits, reloaded;
static int reloaded_code;
static char reloaded_msg[512];
/* The floor on the READY count, checked at every event while it is > 0. */
static int min_ready_floor;
static int min_ready_seen = INT_MAX;

static void reset_state(void) {
    memset(pids, 0, sizeof pids);
    memset(forked_of, 0, sizeof forked_of);
    memset(ready_of, 0, sizeof ready_of);
    memset(gone_of, 0, sizeof gone_of);
    memset(exited_of, 0, sizeof exited_of);
    forks = ready_events = exits = reloaded = 0;
    reloaded_code = 0;
    reloaded_msg[0] = '\0';
    min_ready_floor = 0;
    min_ready_seen = INT_MAX;
}

/* Workers whose READY arrived and whose DISCONNECT or EXIT has not. */
static int live_ready(void) {
    int n = 0;
    for (int id = 1; id < MAX_IDS; id++)
        if (ready_of[id] && !gone_of[id]) n++;
    return n;
}

static const char *kind_name(cluster_event_kind k) {
    static const char *names[] = {"FORK", "ONLINE", "READY", "MESSAGE", "DISCONNECT", "EXIT",
                                  "CONNECTION", "SHUTDOWN", "DRAIN", "ERROR", "SLOT_FAILED", "RELOADED"};
    return k < sizeof names / sizeof names[0] ? names[k] : "?";
}

static void on_primary(void *ud, const cluster_event *ev) {
    (void)ud;
    uint32_t id = ev->worker_id;
    switch (ev->kind) {
    case CLUSTER_EVENT_FORK:
        CHECK(id >= 1 && id < MAX_IDS && !forked_of[id] && ev->pid > 0, "FORK event: worker %u pid %d", id, ev->pid);
        pids[id] = ev->pid;
        forked_of[id] = 1;
        forks++;
        break;
    case CLUSTER_EVENT_READY:
        CHECK(id >= 1 && id < MAX_IDS && forked_of[id] && !ready_of[id], "READY of worker %u (forked, once)", id);
        ready_of[id] = 1;
        ready_events++;
        break;
    case CLUSTER_EVENT_DISCONNECT:
        CHECK(id >= 1 && id < MAX_IDS && forked_of[id], "DISCONNECT of worker %u", id);
        gone_of[id] = 1;
        break;
    case CLUSTER_EVENT_EXIT:
        CHECK(id >= 1 && id < MAX_IDS && forked_of[id] && !exited_of[id], "EXIT of worker %u (forked, once)", id);
        CHECK(ev->pid == pids[id], "EXIT of worker %u names pid %d, its FORK said %d", id, ev->pid, pids[id]);
        gone_of[id] = exited_of[id] = 1;
        exit_code_of[id] = ev->exit_code;
        exit_signal_of[id] = ev->signal;
        exit_after_disconnect_of[id] = ev->exited_after_disconnect;
        exits++;
        break;
    case CLUSTER_EVENT_RELOADED:
        CHECK(!reloaded, "a second RELOADED event before the test looked at the first");
        reloaded_code = ev->exit_code;
        snprintf(reloaded_msg, sizeof reloaded_msg, "%.*s", (int)ev->len, ev->data ? (const char *)ev->data : "");
        reloaded = 1;
        break;
    case CLUSTER_EVENT_ERROR:
        fprintf(stderr, "ERROR event (worker %u): %.*s\n", id, (int)ev->len, (const char *)ev->data);
        break;
    case CLUSTER_EVENT_SLOT_FAILED:
        fprintf(stderr, "SLOT_FAILED event (worker %u): %.*s\n", id, (int)ev->len, (const char *)ev->data);
        break;
    default:
        break;
    }
    if (min_ready_floor > 0) {
        int n = live_ready();
        if (n < min_ready_seen) min_ready_seen = n;
        CHECK(n >= min_ready_floor, "after the %s event of worker %u only %d workers are READY (floor %d)",
              kind_name(ev->kind), id, n, min_ready_floor);
    }
}

static cluster_config *base_config(uint32_t workers) {
    cluster_config *cfg = cluster_config_new();
    CHECK(cfg != NULL, "cluster_config_new");
    OK(cluster_config_set_workers(cfg, workers));
    OK(cluster_config_set_mode(cfg, CLUSTER_MODE_FORK));
    OK(cluster_config_set_policy(cfg, CLUSTER_POLICY_ROUND_ROBIN));
    OK(cluster_config_set_worker_main(cfg, worker_main, NULL));
    OK(cluster_config_set_signals(cfg, false));
    CHECK(OK(cluster_config_listen_tcp(cfg, "127.0.0.1", 0)) == 0, "first listener is index 0");
    return cfg;
}

static void wait_ready_events(int n, int timeout_ms) {
    long long end = now_ms() + timeout_ms;
    while (ready_events < n) {
        if (now_ms() > end) FAIL("timed out after %d ms: %d of %d READY events", timeout_ms, ready_events, n);
        cluster_dispatch(50);
    }
}

/* The live worker ids (ascending); returns how many. */
static int live_ids(uint32_t *ids, size_t cap) {
    int n = OK(cluster_workers(ids, cap));
    CHECK((size_t)n <= cap, "%d workers, more than the %zu expected", n, cap);
    return n;
}

static int contains(const uint32_t *ids, int n, uint32_t id) {
    for (int i = 0; i < n; i++)
        if (ids[i] == id) return 1;
    return 0;
}

static uint64_t connections_of(uint32_t id) {
    struct cluster_worker_info info;
    OK(cluster_worker_info(id, &info));
    return info.connections;
}

/* Every worker that ever ran is gone after the stop. */
static void check_all_gone(void) {
    for (int id = 1; id < MAX_IDS; id++)
        if (forked_of[id]) {
            CHECK(exited_of[id], "worker %d (pid %d) has no EXIT event after the stop", id, (int)pids[id]);
            CHECK(pid_gone(pids[id]), "worker %d (pid %d) is still running after the stop", id, (int)pids[id]);
        }
}

/* ---------------------------------------------------------------- reload ---- */

#define RELOAD_WORKERS 3

/* Waits for the RELOADED event; returns its exit_code. */
static int wait_reloaded(int timeout_ms, const struct load *l) {
    long long end = now_ms() + timeout_ms;
    while (!reloaded) {
        if (now_ms() > end) FAIL("timed out after %d ms waiting for the RELOADED event", timeout_ms);
        if (l) check_load_running(l);
        cluster_dispatch(20);
    }
    reloaded = 0;
    return reloaded_code;
}

/* After a successful reload: the old workers drain and exit cleanly, and the live workers
 * are RELOAD_WORKERS new ones, READY, each taking connections when there is load. */
static void check_replaced(const uint32_t *before, int nbefore, uint32_t *after, const struct load *l) {
    long long end = now_ms() + 10000;
    for (;;) {
        int all = 1;
        for (int i = 0; i < nbefore; i++) all &= exited_of[before[i]];
        if (all) break;
        if (now_ms() > end) FAIL("timed out after 10000 ms waiting for the replaced workers to exit");
        if (l) check_load_running(l);
        cluster_dispatch(20);
    }
    for (int i = 0; i < nbefore; i++) {
        uint32_t id = before[i];
        CHECK(exit_code_of[id] == 0 && exit_signal_of[id] == 0 && exit_after_disconnect_of[id],
              "replaced worker %u: exit code %d signal %d after_disconnect %d, expected a clean drain", id,
              exit_code_of[id], exit_signal_of[id], exit_after_disconnect_of[id]);
    }
    int n = live_ids(after, 16);
    CHECK(n == RELOAD_WORKERS, "%d live workers after the reload, expected %d", n, RELOAD_WORKERS);
    for (int i = 0; i < n; i++) {
        CHECK(!contains(before, nbefore, after[i]), "worker %u is still there after the reload", after[i]);
        struct cluster_worker_info info;
        OK(cluster_worker_info(after[i], &info));
        CHECK(info.state == CLUSTER_WORKER_READY, "new worker %u is in state %u, not READY", after[i], info.state);
        CHECK(info.pid == pids[after[i]], "worker %u: info pid %d, FORK pid %d", after[i], info.pid, pids[after[i]]);
    }
    if (l) { /* the load goes on through the new workers */
        end = now_ms() + 10000;
        for (int i = 0; i < n; i++)
            while (connections_of(after[i]) < 15) {
                if (now_ms() > end)
                    FAIL("timed out after 10000 ms: new worker %u took %llu connections under load, waiting for 15",
                         after[i], (unsigned long long)connections_of(after[i]));
                check_load_running(l);
                cluster_dispatch(20);
            }
    }
}

static int case_reload(void) {
    startup_ms = 50;
    cluster_config *cfg = base_config(RELOAD_WORKERS);
    OK(cluster_primary_start(cfg, on_primary, NULL));
    cluster_config_free(cfg);
    int port = OK(cluster_local_port(0));
    wait_ready_events(RELOAD_WORKERS, 20000);
    min_ready_floor = RELOAD_WORKERS; /* from now on, never fewer READY workers */

    struct load l = start_load(port);
    {
        uint32_t ids[16];
        int n = live_ids(ids, 16);
        long long end = now_ms() + 10000;
        for (;;) {
            uint64_t total = 0;
            for (int i = 0; i < n; i++) total += connections_of(ids[i]);
            if (total >= 30) break;
            if (now_ms() > end) FAIL("timed out after 10000 ms: the load client made %llu connections, waiting for 30",
                                     (unsigned long long)total);
            check_load_running(&l);
            cluster_dispatch(20);
        }
    }

    for (int round = 1; round <= 3; round++) {
        uint32_t before[16], after[16];
        int nbefore = live_ids(before, 16);
        CHECK(nbefore == RELOAD_WORKERS, "%d live workers before reload %d", nbefore, round);
        long long t = now_ms();
        OK(cluster_reload());
        EXPECT_ERR(cluster_reload(), CLUSTER_E_STATE);
        int code = wait_reloaded(20000, &l);
        CHECK(code == 0, "reload %d: RELOADED exit_code %d (%s)", round, code, reloaded_msg);
        long long took = now_ms() - t;
        check_replaced(before, nbefore, after, &l);
        printf("lifecycle reload: reload %d: workers %u %u %u -> %u %u %u in %lld ms (\"%s\")\n", round, before[0],
               before[1], before[2], after[0], after[1], after[2], took, reloaded_msg);
    }
    CHECK(forks == RELOAD_WORKERS * 4, "%d workers forked, expected %d (3 + 3 reloads of 3)", forks, RELOAD_WORKERS * 4);

    long ok, failed;
    stop_load(&l, &ok, &failed);
    printf("lifecycle reload: load during 3 reloads: %ld answered, %ld failed; fewest READY workers seen %d\n", ok,
           failed, min_ready_seen);
    CHECK(failed == 0, "%ld requests failed during the reloads (%ld answered)", failed, ok);
    CHECK(ok > 100, "only %ld requests answered during the reloads", ok);
    CHECK(min_ready_seen >= RELOAD_WORKERS, "the READY count dropped to %d", min_ready_seen);

    /* An aborted reload: the replacement dies before READY. */
    uint32_t before[16], now_[16];
    int nbefore = live_ids(before, 16);
    int forks_before = forks;
    broken = 1;
    OK(cluster_reload());
    int code = wait_reloaded(20000, NULL);
    CHECK(code == -1, "reload with a dying replacement: RELOADED exit_code %d (%s), expected -1", code, reloaded_msg);
    CHECK(reloaded_msg[0] != '\0', "the aborted reload's RELOADED event has no sentence");
    printf("lifecycle reload: aborted reload: \"%s\"\n", reloaded_msg);
    CHECK(forks == forks_before + 1, "%d workers forked by the aborted reload, expected 1", forks - forks_before);
    {
        /* the dying replacement's EXIT (it may come with the RELOADED event or just after) */
        uint32_t newest = 0;
        for (int id = 1; id < MAX_IDS; id++)
            if (forked_of[id]) newest = (uint32_t)id;
        CHECK(!contains(before, nbefore, newest), "no replacement was forked by the aborted reload");
        long long end = now_ms() + 5000;
        while (!exited_of[newest]) {
            if (now_ms() > end) FAIL("timed out after 5000 ms waiting for the failed replacement %u's EXIT", newest);
            cluster_dispatch(20);
        }
        CHECK(exit_code_of[newest] == 1 && exit_signal_of[newest] == 0, "the failed replacement %u: exit code %d signal %d",
              newest, exit_code_of[newest], exit_signal_of[newest]);
        CHECK(!ready_of[newest], "the failed replacement %u was READY", newest);
    }
    broken = 0;
    /* Let the loop turn a little: nothing restarts the failed replacement, the old ones stay. */
    {
        long long end = now_ms() + 300;
        while (now_ms() < end) cluster_dispatch(20);
    }
    int nnow = live_ids(now_, 16);
    CHECK(nnow == nbefore && memcmp(now_, before, sizeof(uint32_t) * (size_t)nbefore) == 0,
          "the workers changed after an aborted reload (%d live)", nnow);
    CHECK(forks == forks_before + 1, "a worker was started after the aborted reload (%d forks)", forks - forks_before);
    for (int i = 0; i < nnow; i++) {
        struct cluster_worker_info info;
        OK(cluster_worker_info(now_[i], &info));
        CHECK(info.state == CLUSTER_WORKER_READY, "old worker %u is in state %u after the aborted reload", now_[i], info.state);
    }
    uint32_t answered_by[6];
    int answered = probe(port, 6, answered_by);
    CHECK(answered == 6, "%d of 6 requests answered after the aborted reload", answered);
    for (int i = 0; i < answered; i++)
        CHECK(contains(before, nbefore, answered_by[i]), "request answered by worker %u, not one of the old workers",
              answered_by[i]);
    for (int i = 0; i < nbefore; i++)
        CHECK(contains(answered_by, answered, before[i]), "round-robin: old worker %u answered none of 6", before[i]);

    /* The cause is gone: a reload works again. */
    {
        uint32_t after[16];
        OK(cluster_reload());
        int c = wait_reloaded(20000, NULL);
        CHECK(c == 0, "reload after the abort: RELOADED exit_code %d (%s)", c, reloaded_msg);
        check_replaced(before, nbefore, after, NULL);
        answered = probe(port, 3, answered_by);
        CHECK(answered == 3, "%d of 3 requests answered after the last reload", answered);
        for (int i = 0; i < answered; i++)
            CHECK(contains(after, RELOAD_WORKERS, answered_by[i]), "request answered by worker %u, not a new one",
                  answered_by[i]);
        printf("lifecycle reload: reload after the abort: workers %u %u %u -> %u %u %u\n", before[0], before[1],
               before[2], after[0], after[1], after[2]);
    }

    min_ready_floor = 0;
    OK(cluster_shutdown(10000));
    CHECK(cluster_run() == 0, "graceful stop");
    CHECK(exits == forks, "%d EXIT events for %d workers", exits, forks);
    check_all_gone();
    return 0;
}

/* ---------------------------------------------------------------- chaos ---- */

#define CHAOS_WORKERS 4

/* The sum of the "restarts" of the per-worker entries of the stats JSON, and how many there
 * are; -1 when the JSON does not look right. */
static long stats_restarts(const char *json, int *entries, long *total) {
    const char *w = strstr(json, "\"workers\":[");
    const char *t = strstr(json, "\"total\":");
    if (!w || !t || t < w) return -1;
    const char *end = strstr(w, "\"slots\":"); /* per-slot history follows the workers */
    if (!end || end > t) end = t;
    long sum = 0;
    *entries = 0;
    for (const char *p = strstr(w, "\"restarts\":"); p && p < end; p = strstr(p + 1, "\"restarts\":")) {
        char *e;
        long v = strtol(p + 11, &e, 10);
        if (e == p + 11) return -1;
        sum += v;
        (*entries)++;
    }
    const char *tr = strstr(t, "\"restarts\":");
    if (!tr) return -1;
    *total = strtol(tr + 11, NULL, 10);
    return sum;
}

static int case_chaos(void) {
    cluster_config *cfg = base_config(CHAOS_WORKERS);
    OK(cluster_config_set_restart(cfg, true));
    OK(cluster_config_set_backoff(cfg, 50, 200, 1000));
    OK(cluster_primary_start(cfg, on_primary, NULL));
    cluster_config_free(cfg);
    int port = OK(cluster_local_port(0));
    wait_ready_events(CHAOS_WORKERS, 20000);

    unsigned seed = (unsigned)(now_ms() ^ getpid());
    srand(seed);
    int killed_of[MAX_IDS] = {0};
    int kills = 0, skipped = 0;
    struct load l = start_load(port);
    long long t0 = now_ms(), next_kill = t0 + 300, end = t0 + 4000;
    while (now_ms() < end) {
        check_load_running(&l);
        cluster_dispatch(20);
        if (now_ms() < next_kill) continue;
        next_kill += 300;
        uint32_t ids[32], cand[32];
        int n = live_ids(ids, 32), nc = 0;
        for (int i = 0; i < n; i++) {
            struct cluster_worker_info info;
            if (cluster_worker_info(ids[i], &info) != CLUSTER_OK) continue;
            if (info.state == CLUSTER_WORKER_READY && !killed_of[ids[i]] && ready_of[ids[i]]) cand[nc++] = ids[i];
        }
        if (nc == 0) {
            skipped++;
            continue;
        }
        uint32_t victim = cand[rand() % nc];
        CHECK(pids[victim] > 0, "worker %u has no pid from its FORK event", victim);
        CHECK(kill(pids[victim], SIGKILL) == 0, "kill worker %u (pid %d): %s", victim, (int)pids[victim], strerror(errno));
        killed_of[victim] = 1;
        kills++;
    }
    long ok, failed;
    stop_load(&l, &ok, &failed);
    long long stopped = now_ms();

    /* Back to CHAOS_WORKERS READY workers. */
    uint32_t ids[32];
    int n = 0;
    for (;;) {
        n = live_ids(ids, 32);
        int nready = 0;
        for (int i = 0; i < n; i++) {
            struct cluster_worker_info info;
            OK(cluster_worker_info(ids[i], &info));
            if (info.state == CLUSTER_WORKER_READY) nready++;
        }
        if (n == CHAOS_WORKERS && nready == CHAOS_WORKERS) break;
        if (now_ms() - stopped > 5000)
            FAIL("timed out after 5000 ms: %d workers live, %d READY, expected %d READY", n, nready, CHAOS_WORKERS);
        cluster_dispatch(20);
    }
    long long back = now_ms() - stopped;
    for (int i = 0; i < n; i++) CHECK(!killed_of[ids[i]], "killed worker %u is still listed", ids[i]);
    for (int id = 1; id < MAX_IDS; id++)
        if (killed_of[id]) {
            CHECK(exited_of[id], "killed worker %d has no EXIT event", id);
            CHECK(exit_signal_of[id] == SIGKILL && exit_code_of[id] == -1 && !exit_after_disconnect_of[id],
                  "killed worker %d: EXIT signal %d code %d after_disconnect %d, expected a SIGKILL crash", id,
                  exit_signal_of[id], exit_code_of[id], exit_after_disconnect_of[id]);
        }
    CHECK(forks == CHAOS_WORKERS + kills, "%d workers forked for %d kills, expected %d", forks, kills, CHAOS_WORKERS + kills);

    char *json = stats_json();
    int entries = 0;
    long total = -1;
    long sum = stats_restarts(json, &entries, &total);

    printf("lifecycle chaos: seed %u, %d kills (%d ticks without a READY victim), load: %ld answered, %ld failed; "
           "%d READY again %lld ms after the load stopped; restarts in stats: %ld (total %ld)\n",
           seed, kills, skipped, ok, failed, CHAOS_WORKERS, back, sum, total);
    CHECK(sum >= 0, "cluster_stats JSON not understood: %s", json);
    CHECK(entries == CHAOS_WORKERS, "%d worker entries in the stats: %s", entries, json);
    CHECK(kills >= 8, "only %d workers were killed in 4 s", kills);
    CHECK(failed <= (long)kills * LOAD_THREADS, "%ld requests failed for %d kills (at most %d connections in flight)",
          failed, kills, LOAD_THREADS);
    CHECK(ok > 100, "only %ld requests answered", ok);
    CHECK(sum > 0, "no restarts in the stats after %d kills: %s", kills, json);
    CHECK(sum == kills && total == kills, "stats count %ld restarts (total %ld) for %d kills: %s", sum, total, kills, json);
    free(json);

    OK(cluster_shutdown(10000));
    CHECK(cluster_run() == 0, "graceful stop");
    CHECK(exits == forks, "%d EXIT events for %d workers", exits, forks);
    check_all_gone();
    return 0;
}

/* ---------------------------------------------------------------- notify ---- */

#define NOTIFY_WORKERS 2
#define MAX_NOTES 4096

struct note {
    char text[160];
    int readies;  /* READY events delivered when it was read */
    int reloads;  /* RELOADED events delivered when it was read */
    long long at; /* when it was read */
};
static struct note notes[MAX_NOTES];
static int nnotes, reload_events, notify_fd = -1;

/* Reads every datagram waiting on the notification socket. */
static void drain_notes(void) {
    for (;;) {
        char buf[4096];
        ssize_t n = recv(notify_fd, buf, sizeof buf - 1, MSG_DONTWAIT);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        CHECK(n >= 0, "recv on the notification socket: %s", strerror(errno));
        CHECK(nnotes < MAX_NOTES, "more than %d notifications", MAX_NOTES);
        buf[n] = '\0';
        struct note *no = &notes[nnotes++];
        size_t keep = (size_t)n < sizeof no->text - 1 ? (size_t)n : sizeof no->text - 1;
        memcpy(no->text, buf, keep);
        no->text[keep] = '\0';
        no->readies = ready_events;
        no->reloads = reload_events;
        no->at = now_ms();
    }
}

/* One loop turn, then the datagrams it sent. */
static void turn(int timeout_ms) {
    int rc = cluster_dispatch(timeout_ms);
    if (reloaded) {
        reloaded = 0;
        reload_events++;
    }
    CHECK(rc >= 0, "cluster_dispatch returned %d", rc);
    drain_notes();
}

/* A notification is exactly one of the lines sd_notify sends, or has it among its lines. */
static int has_line(const char *text, const char *line) {
    size_t len = strlen(line);
    for (const char *p = text; p; p = strchr(p, '\n')) {
        if (*p == '\n') p++;
        if (strncmp(p, line, len) == 0 && (p[len] == '\n' || p[len] == '\0')) return 1;
    }
    return 0;
}

/* The first note from index `from` on with `line`; -1 if none. */
static int find_note(int from, const char *line) {
    for (int i = from; i < nnotes; i++)
        if (has_line(notes[i].text, line)) return i;
    return -1;
}

static int count_notes(int from, const char *line, long long until) {
    int n = 0;
    for (int i = from; i < nnotes; i++)
        if (notes[i].at <= until && has_line(notes[i].text, line)) n++;
    return n;
}

static void show_notes(int from) {
    for (int i = from; i < nnotes; i++) {
        char flat[160];
        snprintf(flat, sizeof flat, "%s", notes[i].text);
        for (char *c = flat; *c; c++)
            if (*c == '\n') *c = '|';
        if (strcmp(flat, "WATCHDOG=1") != 0) printf("    note %d: \"%s\" (READY events %d)\n", i, flat, notes[i].readies);
    }
}

/* Waits until a note with `line` exists from index `from` on; returns its index. */
static int wait_note(int from, const char *line, int timeout_ms) {
    long long end = now_ms() + timeout_ms;
    int i;
    while ((i = find_note(from, line)) < 0) {
        if (now_ms() > end) {
            show_notes(from);
            FAIL("timed out after %d ms waiting for the notification \"%s\"", timeout_ms, line);
        }
        turn(20);
    }
    return i;
}

/* A datagram socket bound to `path` (abstract when it starts with '@'). */
static int notify_socket(const char *path) {
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    CHECK(fd >= 0, "socket(AF_UNIX, SOCK_DGRAM): %s", strerror(errno));
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    size_t len = strlen(path);
    CHECK(len < sizeof a.sun_path, "socket path too long: %s", path);
    memcpy(a.sun_path, path, len);
    if (path[0] == '@') a.sun_path[0] = '\0';
    socklen_t alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + (path[0] == '@' ? 0 : 1));
    CHECK(bind(fd, (struct sockaddr *)&a, alen) == 0, "bind %s: %s", path, strerror(errno));
    return fd;
}

/* One cluster life with NOTIFY_SOCKET=path. `watchdog`: WATCHDOG_PID is this process (else
 * another one: no WATCHDOG=1 may come). `reload`: also a reload. */
static void notify_run(const char *path, int watchdog, int reload) {
    reset_state();
    nnotes = 0;
    reload_events = 0;
    notify_fd = notify_socket(path);
    char pid[32];
    snprintf(pid, sizeof pid, "%d", watchdog ? (int)getpid() : (int)getppid());
    CHECK(setenv("NOTIFY_SOCKET", path, 1) == 0 && setenv("WATCHDOG_USEC", "200000", 1) == 0 &&
              setenv("WATCHDOG_PID", pid, 1) == 0,
          "setenv: %s", strerror(errno));

    cluster_config *cfg = base_config(NOTIFY_WORKERS);
    OK(cluster_primary_start(cfg, on_primary, NULL));
    cluster_config_free(cfg);
    drain_notes();
    long long started = now_ms();

    /* READY=1 once both workers are READY: read after the turn that delivered the second
     * READY event, never after only the first. */
    int r = wait_note(0, "READY=1", 20000);
    CHECK(notes[r].readies == NOTIFY_WORKERS, "READY=1 (\"%s\") came when %d of %d READY events were delivered",
          notes[r].text, notes[r].readies, NOTIFY_WORKERS);
    CHECK(ready_events == NOTIFY_WORKERS, "%d READY events", ready_events);
    printf("lifecycle notify (%s): READY=1 %lld ms after the start\n", path, notes[r].at - started);

    /* The watchdog: WATCHDOG_USEC/2 = 100 ms. */
    long long w0 = now_ms();
    int w_from = nnotes;
    while (now_ms() < w0 + 1000) turn(20);
    int wd = count_notes(w_from, "WATCHDOG=1", w0 + 1000);
    int wd_all = count_notes(0, "WATCHDOG=1", LLONG_MAX);
    printf("lifecycle notify (%s): %d WATCHDOG=1 in 1 s (%d since the start)\n", path, wd, wd_all);
    if (watchdog)
        CHECK(wd >= 2, "%d WATCHDOG=1 notifications in 1 s with WATCHDOG_USEC=200000", wd);
    else
        CHECK(wd_all == 0, "%d WATCHDOG=1 notifications though WATCHDOG_PID names process %s", wd_all, pid);

    if (reload) {
        int from = nnotes;
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        long long t_us = (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
        OK(cluster_reload());
        int rl = wait_note(from, "RELOADING=1", 5000);
        const char *m = strstr(notes[rl].text, "MONOTONIC_USEC=");
        CHECK(m, "RELOADING=1 without MONOTONIC_USEC=: \"%s\"", notes[rl].text);
        long long usec = strtoll(m + 15, NULL, 10);
        CHECK(usec >= t_us - 1000000 && usec <= t_us + 5000000, "MONOTONIC_USEC=%lld, CLOCK_MONOTONIC was %lld us", usec, t_us);
        CHECK(notes[rl].reloads == 0, "RELOADING=1 came after the RELOADED event");
        int rr = wait_note(rl + 1, "READY=1", 20000);
        CHECK(notes[rr].reloads == 1, "READY=1 after RELOADING=1 came before the reload ended (%d RELOADED events)",
              notes[rr].reloads);
        CHECK(reloaded_code == 0, "RELOADED exit_code %d (%s)", reloaded_code, reloaded_msg);
        CHECK(ready_events == 2 * NOTIFY_WORKERS, "%d READY events after the reload", ready_events);
        printf("lifecycle notify (%s): \"RELOADING=1\" then \"READY=1\" %lld ms later\n", path, notes[rr].at - notes[rl].at);
    }

    int from = nnotes;
    OK(cluster_shutdown(5000));
    drain_notes();
    long long end = now_ms() + 15000;
    for (;;) {
        int rc = cluster_dispatch(20);
        drain_notes();
        if (rc == CLUSTER_E_CLOSED) break;
        CHECK(rc >= 0, "cluster_dispatch returned %d during the stop", rc);
        if (now_ms() > end) FAIL("timed out after 15000 ms waiting for the stop");
    }
    int s = find_note(from, "STOPPING=1");
    if (s < 0) show_notes(from);
    CHECK(s >= 0, "no STOPPING=1 at the stop");
    CHECK(find_note(from, "READY=1") < 0, "READY=1 after the stop began");
    check_all_gone();
    show_notes(0);
    close(notify_fd);
    notify_fd = -1;
}

/* The temporary directory, removed at exit by this process (not by its forked workers and
 * clients, which run atexit handlers too) even when a check fails. */
static char notify_dir[64], notify_path[128];
static pid_t notify_owner;
static void remove_notify_dir(void) {
    if (getpid() != notify_owner || !notify_dir[0]) return;
    unlink(notify_path);
    rmdir(notify_dir);
}

static int case_notify(void) {
    snprintf(notify_dir, sizeof notify_dir, "/tmp/rcluster-notify-XXXXXX");
    CHECK(mkdtemp(notify_dir) != NULL, "mkdtemp: %s", strerror(errno));
    notify_owner = getpid();
    atexit(remove_notify_dir);
    snprintf(notify_path, sizeof notify_path, "%s/notify", notify_dir);
    notify_run(notify_path, 1, 1);
    CHECK(unlink(notify_path) == 0, "unlink %s: %s", notify_path, strerror(errno));
    CHECK(rmdir(notify_dir) == 0, "rmdir %s: %s", notify_dir, strerror(errno));
    notify_dir[0] = '\0';

    char abstract[108];
    snprintf(abstract, sizeof abstract, "@rcluster-lifecycle-%d-%lld", (int)getpid(), now_ms());
    notify_run(abstract, 0, 0);

    CHECK(unsetenv("NOTIFY_SOCKET") == 0 && unsetenv("WATCHDOG_USEC") == 0 && unsetenv("WATCHDOG_PID") == 0, "unsetenv");
    return 0;
}

int main(int argc, char **argv) {
    test_deadline(60);
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc != 2) {
        fprintf(stderr, "usage: %s reload|chaos|notify\n", argv[0]);
        return 2;
    }
    if (getenv("RCLUSTER_LOG")) OK(cluster_log_init());
    long long t0 = now_ms();
    int rc;
    if (strcmp(argv[1], "reload") == 0)
        rc = case_reload();
    else if (strcmp(argv[1], "chaos") == 0)
        rc = case_chaos();
    else if (strcmp(argv[1], "notify") == 0)
        rc = case_notify();
    else {
        fprintf(stderr, "unknown case '%s'\n", argv[1]);
        return 2;
    }
    printf("lifecycle %s: ok (%lld ms)\n", argv[1], now_ms() - t0);
    return rc;
}
