/* Supervision: what the primary does over time with the workers it started.
 *   supervision crashloop      a slot whose workers die before READY is restarted with a
 *                              doubling backoff, then given up after 5 deaths (SLOT_FAILED);
 *                              the rest of the cluster keeps serving; cluster_stats.
 *   supervision startup        a worker not READY within the startup timeout is killed.
 *   supervision stuck          a worker whose loop stops (busy callback) is killed by the
 *                              heartbeat watchdog and replaced; idle workers are left alone.
 *   supervision pause          the primary's own loop stops longer than the heartbeat timeout
 *                              (the host does not dispatch, a host callback blocks, the process
 *                              is SIGSTOPped): on resume, no healthy worker is killed.
 *   supervision scale          cluster_scale up and down; SIGTTIN/SIGTTOU in a primary that
 *                              takes signals over (run in a child process), then SIGTERM.
 *   supervision maxreq         max-requests recycling loses no request.
 *   supervision served         a READY worker SIGKILLed after the minimum uptime, over and
 *                              over under load, is replaced at once (no doubling backoff),
 *                              and the cluster stays at full size.
 *   supervision readyloop      workers that report READY and then exit at once (a bind that
 *                              fails, over and over) make a crash loop: the slot is given up.
 *   supervision process fork|exec
 *                              (root only) workers drop to a uid/gid (and still die with the
 *                              primary: PR_SET_PDEATHSIG survives the drop), start in a
 *                              directory, get extra environment; silent workers' stdio is
 *                              /dev/null.
 * The primary's loop runs in the test process; clients run in forked children while the
 * parent keeps calling cluster_dispatch. */
#include "harness.h"
#include <fcntl.h>
#include <limits.h>
#include <sys/resource.h>
#include <sys/stat.h>

#define MAX_IDS 64

/* ================================================================ worker side ==== */

/* Serves HTTP: "worker <id>". */
static void on_http_worker(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind == CLUSTER_EVENT_CONNECTION) http_answer(ev->fd);
}

static int http_worker_main(void *ud) {
    OK(cluster_worker_start(on_http_worker, ud));
    return cluster_run() == 0 ? 0 : 3;
}

/* crashloop: worker 1 serves; every other worker fails before READY. */
static int crash_worker_main(void *ud) {
    if (cluster_worker_id() != 1) return 1;
    return http_worker_main(ud);
}

/* startup: never starts its runtime, so never READY. */
static int pause_worker_main(void *ud) {
    (void)ud;
    for (;;) pause();
    return 0;
}

/* stuck: "spin" makes the worker's loop stop for good, inside the callback. */
static void on_stuck_worker(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind == CLUSTER_EVENT_CONNECTION) {
        http_answer(ev->fd);
    } else if (ev->kind == CLUSTER_EVENT_MESSAGE && ev->worker_id == 0 && ev->len == 4 &&
               memcmp(ev->data, "spin", 4) == 0) {
        volatile unsigned long spins = 0;
        for (;;) spins++;
    }
}

static int stuck_worker_main(void *ud) {
    OK(cluster_worker_start(on_stuck_worker, ud));
    return cluster_run() == 0 ? 0 : 3;
}

/* process: reports what the worker process looks like, as "key=value" lines. This is also
 * the EXEC-mode entry point (main() calls it when cluster_is_worker()). */
static void on_process_worker(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind == CLUSTER_EVENT_CONNECTION) close(ev->fd);
}

static void fd_target(int fd, char *out, size_t cap) {
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(path, out, cap - 1);
    if (n < 0) n = snprintf(out, cap, "(readlink: %s)", strerror(errno));
    out[n] = '\0';
}

static int worker_main(void *ud) {
    OK(cluster_worker_start(on_process_worker, ud));
    char cwd[PATH_MAX], fd0[PATH_MAX], fd1[PATH_MAX], fd2[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd)) snprintf(cwd, sizeof cwd, "(getcwd: %s)", strerror(errno));
    fd_target(0, fd0, sizeof fd0);
    fd_target(1, fd1, sizeof fd1);
    fd_target(2, fd2, sizeof fd2);
    const char *var = getenv("RCLUSTER_TEST_VAR");
    int pdeath = -1;
    prctl(PR_GET_PDEATHSIG, &pdeath);
    char msg[4 * PATH_MAX + 256];
    int n = snprintf(msg, sizeof msg, "uid=%d\ngid=%d\ngroups=%d\ncwd=%s\nvar=%s\nfd0=%s\nfd1=%s\nfd2=%s\npdeathsig=%d\n",
                     (int)getuid(), (int)getgid(), getgroups(0, NULL), cwd, var ? var : "(unset)", fd0, fd1, fd2,
                     pdeath);
    OK(cluster_send(0, (const uint8_t *)msg, (size_t)n));
    return cluster_run() == 0 ? 0 : 3;
}

/* readyloop: worker 1 serves; every other worker reports READY, turns its loop a little (so
 * READY leaves), then exits with code 1, as a worker whose bind fails with EADDRINUSE does. */
static int ready_then_exit_main(void *ud) {
    if (cluster_worker_id() == 1) return http_worker_main(ud);
    OK(cluster_worker_start(on_http_worker, ud));
    OK(cluster_ready());
    long long end = now_ms() + 50;
    while (now_ms() < end) cluster_dispatch(10);
    return 1;
}

/* manual: READY only once the worker calls cluster_ready() (after the primary says "go"). */
static void on_manual_worker(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind == CLUSTER_EVENT_MESSAGE && ev->len == 2 && memcmp(ev->data, "go", 2) == 0) OK(cluster_ready());
}

static int manual_worker_main(void *ud) {
    OK(cluster_worker_start(on_manual_worker, ud));
    return cluster_run() == 0 ? 0 : 3;
}

/* exec-reload: an EXEC-mode worker started through a script names the version the script
 * passed it. */
static const char *version_arg;
static int version_worker_main(void *ud) {
    OK(cluster_worker_start(on_http_worker, ud));
    char m[64];
    int n = snprintf(m, sizeof m, "version %s", version_arg);
    OK(cluster_send(0, (const uint8_t *)m, (size_t)n));
    return cluster_run() == 0 ? 0 : 3;
}

/* ================================================================ primary side ==== */

struct wrec {
    pid_t pid;
    int forked, ready, exited, errors;
    long long fork_ms, ready_ms, exit_ms, error_ms;
    int code, sig, after_disconnect, online;
    char msg[4 * PATH_MAX + 256];
    int has_msg;
};

static struct wrec W[MAX_IDS + 1];
/* pause: the primary's callback blocks this long on the next FORK event. */
static int block_on_fork_ms;
static int n_forks, n_ready, n_exits, n_errors, n_msgs, n_reloaded, reloaded_code;
static int n_slot_failed, slot_failed_id, slot_failed_after_exit;
static long long slot_failed_ms;
static char slot_failed_why[512];

static void reset_records(void) {
    memset(W, 0, sizeof W);
    n_forks = n_ready = n_exits = n_errors = n_msgs = n_reloaded = reloaded_code = 0;
    n_slot_failed = slot_failed_id = slot_failed_after_exit = 0;
    slot_failed_ms = 0;
    slot_failed_why[0] = '\0';
}

static void on_primary(void *ud, const cluster_event *ev) {
    (void)ud;
    uint32_t id = ev->worker_id;
    long long t = now_ms();
    switch (ev->kind) {
    case CLUSTER_EVENT_FORK:
        CHECK(id >= 1 && id <= MAX_IDS && ev->pid > 0 && !W[id].forked, "FORK event: worker %u pid %d", id, ev->pid);
        if (block_on_fork_ms > 0) {
            usleep((useconds_t)block_on_fork_ms * 1000);
            block_on_fork_ms = 0;
        }
        W[id].pid = ev->pid;
        W[id].forked = 1;
        W[id].fork_ms = t;
        n_forks++;
        break;
    case CLUSTER_EVENT_READY:
        CHECK(id >= 1 && id <= MAX_IDS && W[id].forked && !W[id].ready, "READY of worker %u", id);
        W[id].ready = 1;
        W[id].ready_ms = t;
        n_ready++;
        break;
    case CLUSTER_EVENT_EXIT:
        CHECK(id >= 1 && id <= MAX_IDS && W[id].forked && !W[id].exited, "EXIT of worker %u (once, after its FORK)", id);
        CHECK(ev->pid == W[id].pid, "EXIT of worker %u names pid %d, its FORK said %d", id, ev->pid, W[id].pid);
        W[id].exited = 1;
        W[id].exit_ms = t;
        W[id].code = ev->exit_code;
        W[id].sig = ev->signal;
        W[id].after_disconnect = ev->exited_after_disconnect;
        n_exits++;
        break;
    case CLUSTER_EVENT_ERROR:
        fprintf(stderr, "ERROR event (worker %u): %.*s\n", id, (int)ev->len, (const char *)ev->data);
        CHECK(ev->len > 0 && ev->data, "an ERROR event without a sentence");
        if (id >= 1 && id <= MAX_IDS) {
            if (!W[id].errors) W[id].error_ms = t;
            W[id].errors++;
        }
        n_errors++;
        break;
    case CLUSTER_EVENT_ONLINE:
        if (id >= 1 && id <= MAX_IDS) W[id].online = 1;
        break;
    case CLUSTER_EVENT_RELOADED:
        n_reloaded++;
        reloaded_code = ev->exit_code;
        break;
    case CLUSTER_EVENT_SLOT_FAILED:
        printf("SLOT_FAILED (worker %u): %.*s\n", id, (int)ev->len, (const char *)ev->data);
        n_slot_failed++;
        slot_failed_id = (int)id;
        slot_failed_ms = t;
        slot_failed_after_exit = id >= 1 && id <= MAX_IDS && W[id].exited;
        snprintf(slot_failed_why, sizeof slot_failed_why, "%.*s", (int)(ev->data ? ev->len : 0),
                 ev->data ? (const char *)ev->data : "");
        break;
    case CLUSTER_EVENT_MESSAGE:
        CHECK(id >= 1 && id <= MAX_IDS && !W[id].has_msg && ev->len < sizeof W[id].msg,
              "unexpected message from worker %u (%zu bytes)", id, ev->len);
        memcpy(W[id].msg, ev->data, ev->len);
        W[id].msg[ev->len] = '\0';
        W[id].has_msg = 1;
        n_msgs++;
        break;
    default:
        break;
    }
}

/* Turns the loop until `cond` holds; fails after timeout_ms. */
#define WAIT_FOR(cond, timeout_ms, what)                                                      \
    do {                                                                                      \
        long long end_ = now_ms() + (timeout_ms);                                             \
        while (!(cond)) {                                                                     \
            if (now_ms() > end_) FAIL("timed out after %d ms waiting for %s", (int)(timeout_ms), what); \
            int32_t rc_ = cluster_dispatch(50);                                               \
            if (rc_ < 0 && !(cond)) FAIL("cluster_dispatch returned %d while waiting for %s", rc_, what); \
        }                                                                                     \
    } while (0)

/* Turns the loop for ms (a bounded "nothing happens" window). */
static void dispatch_for(int ms) {
    long long end = now_ms() + ms;
    for (long long left; (left = end - now_ms()) > 0;) {
        int32_t rc = cluster_dispatch(left > 50 ? 50 : (int32_t)left);
        CHECK(rc >= 0, "cluster_dispatch returned %d", rc);
    }
}

static int live_workers(void) {
    return OK(cluster_workers(NULL, 0));
}

/* Reads one line (without its '\n') within timeout_ms. 1: a line, 0: EOF, -1: error,
 * -2: timed out. Bytes after the line are kept for the next call. */
static char rbuf[8192];
static size_t rlen;
static int read_line(int fd, char *out, size_t cap, int timeout_ms) {
    long long end = now_ms() + timeout_ms;
    for (;;) {
        char *nl = memchr(rbuf, '\n', rlen);
        if (nl) {
            size_t n = (size_t)(nl - rbuf);
            size_t c = n < cap - 1 ? n : cap - 1;
            memcpy(out, rbuf, c);
            out[c] = '\0';
            memmove(rbuf, nl + 1, rlen - n - 1);
            rlen -= n + 1;
            return 1;
        }
        if (rlen == sizeof rbuf) return -1;
        long long left = end - now_ms();
        if (left <= 0) return -2;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int pr = poll(&p, 1, (int)left);
        if (pr < 0 && errno == EINTR) continue;
        if (pr < 0) return -1;
        if (pr == 0) return -2;
        ssize_t r = read(fd, rbuf + rlen, sizeof rbuf - rlen);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return -1;
        if (r == 0) return 0;
        rlen += (size_t)r;
    }
}

/* Starts a primary with the common settings. */
static cluster_config *base_config(uint32_t workers, cluster_worker_main fn) {
    reset_records();
    cluster_config *cfg = cluster_config_new();
    CHECK(cfg != NULL, "cluster_config_new");
    OK(cluster_config_set_workers(cfg, workers));
    OK(cluster_config_set_worker_main(cfg, fn, NULL));
    OK(cluster_config_set_signals(cfg, false));
    return cfg;
}

static void start(cluster_config *cfg) {
    OK(cluster_primary_start(cfg, on_primary, NULL));
    cluster_config_free(cfg);
}

/* Graceful stop; every worker seen is gone afterwards. */
static void stop_and_check(void) {
    OK(cluster_shutdown(10000));
    CHECK(cluster_run() == 0, "graceful stop");
    for (int id = 1; id <= MAX_IDS; id++) {
        if (!W[id].forked) continue;
        CHECK(W[id].exited, "worker %d has an EXIT event after the stop", id);
        CHECK(pid_gone(W[id].pid), "worker %d (pid %d) is gone", id, (int)W[id].pid);
    }
    EXPECT_ERR(cluster_workers(NULL, 0), CLUSTER_E_CLOSED);
}

/* ---------------------------------------------------------------- crashloop ---- */

static int case_crashloop(void) {
    cluster_config *cfg = base_config(2, crash_worker_main);
    CHECK(OK(cluster_config_listen_tcp(cfg, "127.0.0.1", 0)) == 0, "first listener is index 0");
    start(cfg);
    int port = OK(cluster_local_port(0));

    /* 100 + 200 + 400 + 800 ms of backoff between 5 deaths. */
    WAIT_FOR(n_slot_failed > 0, 15000, "SLOT_FAILED for the crashing slot");
    CHECK(W[1].ready && !W[1].exited, "worker 1 is ready and alive (ready %d exited %d)", W[1].ready, W[1].exited);
    int crashed = 0;
    for (int id = 2; id <= MAX_IDS; id++) crashed += W[id].forked;
    CHECK(crashed == 5, "%d workers were started in the crashing slot, expected 5 (ids 2..6)", crashed);
    for (int id = 2; id <= 6; id++) {
        CHECK(W[id].forked, "worker %d was started", id);
        CHECK(W[id].exited, "worker %d's EXIT before SLOT_FAILED", id);
        CHECK(W[id].code == 1 && W[id].sig == 0, "worker %d: exit code %d signal %d, expected code 1", id, W[id].code,
              W[id].sig);
        CHECK(!W[id].after_disconnect, "worker %d's EXIT says exited_after_disconnect: it crashed", id);
        CHECK(!W[id].ready, "worker %d was never READY", id);
    }
    /* The backoff is the time from a death (its EXIT) to the replacement's FORK: at least
     * 100, 200, 400, 800 ms (a loaded machine only makes it longer, so only the lower bound is
     * held; 10% for the clocks of the two events). */
    long long wait[4];
    for (int i = 0; i < 4; i++) wait[i] = W[3 + i].fork_ms - W[2 + i].exit_ms;
    printf("crashloop: EXIT-to-FORK backoffs %lld %lld %lld %lld ms\n", wait[0], wait[1], wait[2], wait[3]);
    for (int i = 0; i < 4; i++) {
        long long want = 100LL << i;
        CHECK(10 * wait[i] >= 9 * want, "restart %d came %lld ms after the death, the backoff is %lld ms", i + 1, wait[i],
              want);
    }
    CHECK(n_slot_failed == 1, "%d SLOT_FAILED events", n_slot_failed);
    CHECK(slot_failed_id == 6, "SLOT_FAILED names worker %d, expected the last one (6)", slot_failed_id);
    CHECK(slot_failed_after_exit && slot_failed_ms >= W[6].exit_ms, "SLOT_FAILED came before the 5th death's EXIT");
    CHECK(strlen(slot_failed_why) > 0, "SLOT_FAILED carries no sentence");

    /* The slot stays given up. */
    long long quiet_until = slot_failed_ms + 1200;
    if (quiet_until > now_ms()) dispatch_for((int)(quiet_until - now_ms()));
    CHECK(n_forks == 6, "%d FORK events: a worker was started after SLOT_FAILED", n_forks);
    CHECK(n_slot_failed == 1, "%d SLOT_FAILED events", n_slot_failed);
    uint32_t ids[8];
    CHECK(OK(cluster_workers(ids, 8)) == 1 && ids[0] == 1, "only worker 1 is left (%d workers)", live_workers());

    /* The primary keeps serving with what it has. */
    pid_t client = fork_client((const int[]){-1});
    if (client == 0) {
        int w = http_worker("127.0.0.1", port);
        _exit(w < 0 ? 100 : w > 99 ? 99 : w);
    }
    int status = dispatch_until_exit(client, 10000, "the HTTP client");
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 1, "the request was answered by %s %d, expected worker 1",
          WIFEXITED(status) && WEXITSTATUS(status) == 100 ? "nobody" : "worker",
          WIFEXITED(status) ? WEXITSTATUS(status) : -1);

    /* cluster_stats: snprintf-like (stats_json checks what each call wrote against what it
     * returned). Two calls may differ in length: the uptimes in it can gain a digit between. */
    char *json = stats_json();
    int len = (int)strlen(json);
    CHECK(len > 2, "cluster_stats length %d", len);
    printf("crashloop: stats %s\n", json);
    CHECK(json[0] == '{' && json[len - 1] == '}', "stats is a JSON object: %s", json);
    CHECK(strstr(json, "\"id\":1,") != NULL, "stats does not name worker 1: %s", json);
    CHECK(strstr(json, "\"restarts\"") != NULL, "stats does not say restarts: %s", json);
    CHECK(strstr(json, "\"id\":6,") == NULL, "stats names the dead worker 6: %s", json);
    char small[16];
    memset(small, 'x', sizeof small);
    int full = OK(cluster_stats(small, 8));
    CHECK(full > 8, "a truncated cluster_stats returns the full length (%d, the JSON had %d)", full, len);
    CHECK(strlen(small) == 7 && small[8] == 'x' && memcmp(small, json, 7) == 0,
          "a truncated cluster_stats is the NUL-terminated start of the JSON, and no more ('%.15s')", small);
    free(json);

    stop_and_check();
    CHECK(W[1].code == 0 && W[1].sig == 0, "worker 1: exit code %d signal %d at the stop", W[1].code, W[1].sig);
    return 0;
}

/* ---------------------------------------------------------------- startup ---- */

static int case_startup(void) {
    cluster_config *cfg = base_config(1, pause_worker_main);
    OK(cluster_config_set_startup_timeout(cfg, 500));
    OK(cluster_config_set_restart(cfg, false));
    start(cfg);
    WAIT_FOR(W[1].exited, 8000, "the EXIT of worker 1, which never becomes ready");
    long long after = W[1].exit_ms - W[1].fork_ms;
    printf("startup: worker 1 killed %lld ms after its FORK\n", after);
    CHECK(W[1].errors >= 1, "no ERROR event for worker 1");
    CHECK(W[1].error_ms <= W[1].exit_ms, "the ERROR came after the EXIT");
    CHECK(W[1].sig == SIGKILL && W[1].code == -1, "worker 1: exit code %d signal %d, expected SIGKILL", W[1].code,
          W[1].sig);
    CHECK(after >= 400 && after <= 5000, "worker 1 was killed %lld ms after its FORK, expected 400..5000", after);
    CHECK(!W[1].ready, "worker 1 was never READY");
    /* Restart is off: nothing replaces it. */
    dispatch_for(1000);
    CHECK(n_forks == 1, "%d FORK events with restart off", n_forks);
    CHECK(live_workers() == 0, "%d workers left", live_workers());
    stop_and_check();
    return 0;
}

/* ---------------------------------------------------------------- stuck ---- */

static int case_stuck(void) {
    cluster_config *cfg = base_config(2, stuck_worker_main);
    OK(cluster_config_set_heartbeat(cfg, 100, 600));
    start(cfg);
    WAIT_FOR(W[1].ready && W[2].ready, 10000, "2 workers READY");

    /* Idle workers heartbeat from their loop: nobody is killed. */
    dispatch_for(2000);
    CHECK(n_exits == 0 && n_errors == 0, "idle workers were stopped: %d EXIT, %d ERROR events", n_exits, n_errors);

    long long t_spin = now_ms();
    OK(cluster_send(1, (const uint8_t *)"spin", 4));
    WAIT_FOR(W[1].exited, 5000, "the watchdog to kill the stuck worker 1");
    printf("stuck: ERROR %lld ms and EXIT %lld ms after the spin (signal %d)\n", W[1].error_ms - t_spin,
           W[1].exit_ms - t_spin, W[1].sig);
    CHECK(W[1].errors >= 1, "no ERROR event for the stuck worker 1");
    /* The watchdog counts from the worker's last heartbeat, which came up to one interval
     * (100 ms) before the spin, or more if that timer ran late on a loaded machine: the kill
     * comes at least 600 - 100 ms after the spin, less another 100 ms of slack for a late
     * heartbeat timer. Never before 400 ms: the timeout was honoured. */
    CHECK(W[1].error_ms - t_spin >= 400, "the watchdog fired %lld ms after the spin, the timeout is 600 ms",
          W[1].error_ms - t_spin);
    CHECK(W[1].exit_ms - t_spin >= 400, "worker 1 died %lld ms after the spin, the timeout is 600 ms",
          W[1].exit_ms - t_spin);
    CHECK(W[1].sig == SIGABRT || W[1].sig == SIGKILL, "worker 1: exit code %d signal %d, expected SIGABRT (or SIGKILL)",
          W[1].code, W[1].sig);

    /* Replaced. */
    WAIT_FOR(W[3].ready, 5000, "the replacement (worker 3) READY");
    CHECK(W[3].fork_ms >= W[1].exit_ms, "the replacement started before the stuck worker died");
    struct cluster_worker_info info;
    OK(cluster_worker_info(3, &info));
    CHECK(info.restarts == 1, "the replacement's slot restarted %u times, expected 1", info.restarts);

    /* Worker 2, idle all along (more than 2 s), is untouched. */
    CHECK(now_ms() - W[2].ready_ms >= 2000, "worker 2 was idle for only %lld ms", now_ms() - W[2].ready_ms);
    CHECK(!W[2].exited && W[2].errors == 0 && kill(W[2].pid, 0) == 0, "the idle worker 2 was killed or reported");
    CHECK(n_exits == 1, "%d EXIT events, only the stuck worker died", n_exits);
    uint32_t ids[8];
    CHECK(OK(cluster_workers(ids, 8)) == 2 && ids[0] == 2 && ids[1] == 3, "live workers: %d", live_workers());

    stop_and_check();
    for (int id = 2; id <= 3; id++)
        CHECK(W[id].code == 0 && W[id].sig == 0, "worker %d: exit code %d signal %d at the stop", id, W[id].code,
              W[id].sig);
    return 0;
}

/* ---------------------------------------------------------------- pause ---- */

#define PAUSE_MS 1500

/* No EXIT and no ERROR since the start, and every worker forked is alive. */
static void check_nobody_killed(const char *after) {
    CHECK(n_exits == 0 && n_errors == 0, "after %s: %d EXIT, %d ERROR events: the watchdog judged healthy workers by the "
          "primary's own stall", after, n_exits, n_errors);
    for (int id = 1; id <= MAX_IDS; id++)
        if (W[id].forked) CHECK(kill(W[id].pid, 0) == 0, "after %s: worker %d (pid %d) is gone", after, id, W[id].pid);
}

static int case_pause(void) {
    cluster_config *cfg = base_config(2, http_worker_main);
    OK(cluster_config_set_heartbeat(cfg, 100, 600));
    start(cfg);
    WAIT_FOR(W[1].ready && W[2].ready, 10000, "2 workers READY");
    dispatch_for(1000);
    check_nobody_killed("a second of normal running");

    /* 1. The host does not dispatch for 2.5x the timeout (its own loop is busy). */
    usleep(PAUSE_MS * 1000);
    dispatch_for(1500);
    check_nobody_killed("the host did not dispatch for 1500 ms");

    /* 2. A host callback blocks as long (here, on the FORK of a third worker). */
    block_on_fork_ms = PAUSE_MS;
    OK(cluster_scale(3));
    WAIT_FOR(W[3].forked && block_on_fork_ms == 0, 10000, "the FORK of worker 3, and the blocked callback");
    dispatch_for(1500);
    WAIT_FOR(W[3].ready, 10000, "worker 3 READY");
    check_nobody_killed("a callback blocked for 1500 ms");

    /* 3. The whole primary is SIGSTOPped, then continued. */
    pid_t self = getpid();
    pid_t stopper = fork();
    CHECK(stopper >= 0, "fork: %s", strerror(errno));
    if (stopper == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        kill(self, SIGSTOP);
        usleep(PAUSE_MS * 1000);
        kill(self, SIGCONT);
        _exit(0);
    }
    int status = 0;
    CHECK(waitpid(stopper, &status, 0) == stopper && WIFEXITED(status) && WEXITSTATUS(status) == 0, "the stopper");
    dispatch_for(1500);
    check_nobody_killed("a SIGSTOP of 1500 ms");
    printf("pause: 3 workers survived 3 stalls of %d ms with a heartbeat timeout of 600 ms\n", PAUSE_MS);

    /* The watchdog still works afterwards: see "stuck". */
    stop_and_check();
    return 0;
}

/* ---------------------------------------------------------------- scale ---- */

static int sig_report = -1;

/* The signal child's primary: one line per FORK/READY/EXIT, with the live worker count. */
static void on_signal_primary(void *ud, const cluster_event *ev) {
    (void)ud;
    char line[128];
    int n, count = cluster_workers(NULL, 0);
    switch (ev->kind) {
    case CLUSTER_EVENT_FORK:
        n = snprintf(line, sizeof line, "F %u %d %d\n", ev->worker_id, ev->pid, count);
        break;
    case CLUSTER_EVENT_READY:
        n = snprintf(line, sizeof line, "R %u %d %d\n", ev->worker_id, ev->pid, count);
        break;
    case CLUSTER_EVENT_EXIT:
        n = snprintf(line, sizeof line, "E %u %d %d %d %d %d\n", ev->worker_id, ev->pid, count, ev->exit_code,
                     ev->signal, ev->exited_after_disconnect);
        break;
    default:
        return;
    }
    CHECK(write(sig_report, line, (size_t)n) == n, "report to the test");
}

static int signal_child(void) {
    cluster_config *cfg = cluster_config_new();
    CHECK(cfg != NULL, "cluster_config_new");
    OK(cluster_config_set_workers(cfg, 2));
    OK(cluster_config_set_worker_main(cfg, http_worker_main, NULL));
    OK(cluster_config_set_signals(cfg, true));
    OK(cluster_config_set_grace(cfg, 10000));
    OK(cluster_primary_start(cfg, on_signal_primary, NULL));
    cluster_config_free(cfg);
    return cluster_run() == 0 ? 0 : 2;
}

struct sigline {
    char kind;
    unsigned id;
    int pid, count, code, sig, disc;
};

/* Reads the child's next report line; fails after timeout_ms. */
static struct sigline next_report(int fd, int timeout_ms, const char *what, pid_t seen[], int *nseen) {
    char line[128];
    int r = read_line(fd, line, sizeof line, timeout_ms);
    CHECK(r == 1, "no report from the signal child while waiting for %s (%s)", what,
          r == -2 ? "timed out" : r == 0 ? "it ended" : "read error");
    printf("scale: child reports '%s'\n", line);
    struct sigline s = {0};
    int got = sscanf(line, "%c %u %d %d %d %d %d", &s.kind, &s.id, &s.pid, &s.count, &s.code, &s.sig, &s.disc);
    CHECK(got >= 4 && (s.kind != 'E' || got == 7), "report '%s'", line);
    if (s.kind == 'F' && *nseen < MAX_IDS) seen[(*nseen)++] = s.pid;
    return s;
}

static void scale_signals(void) {
    int p[2];
    CHECK(pipe2(p, O_CLOEXEC) == 0, "pipe");
    pid_t parent = getpid();
    pid_t child = fork();
    CHECK(child >= 0, "fork: %s", strerror(errno));
    if (child == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(98);
        alarm(40);
        close(p[0]);
        sig_report = p[1];
        _exit(signal_child());
    }
    close(p[1]);
    rlen = 0;
    pid_t seen[MAX_IDS];
    int nseen = 0;
    struct sigline s;

    /* 2 workers ready: the handlers are installed by then. */
    int ready = 0;
    while (ready < 2) {
        s = next_report(p[0], 10000, "2 workers READY", seen, &nseen);
        CHECK(s.kind != 'E', "a worker exited at the start");
        if (s.kind == 'R') ready++;
    }
    CHECK(s.count == 2, "%d workers at the start", s.count);

    CHECK(kill(child, SIGTTIN) == 0, "SIGTTIN: %s", strerror(errno));
    do s = next_report(p[0], 10000, "the READY after SIGTTIN", seen, &nseen);
    while (s.kind == 'F');
    CHECK(s.kind == 'R' && s.id == 3 && s.count == 3, "after SIGTTIN: '%c' of worker %u with %d workers, expected 3 ready",
          s.kind, s.id, s.count);

    CHECK(kill(child, SIGTTOU) == 0, "SIGTTOU: %s", strerror(errno));
    s = next_report(p[0], 10000, "the EXIT after SIGTTOU", seen, &nseen);
    CHECK(s.kind == 'E' && s.id == 3 && s.count == 2, "after SIGTTOU: '%c' of worker %u with %d workers, expected 2",
          s.kind, s.id, s.count);
    CHECK(s.code == 0 && s.sig == 0 && s.disc == 1, "SIGTTOU's stop: exit code %d signal %d after disconnect %d", s.code,
          s.sig, s.disc);

    CHECK(kill(child, SIGTERM) == 0, "SIGTERM: %s", strerror(errno));
    int exits = 0;
    for (;;) {
        char line[128];
        int r = read_line(p[0], line, sizeof line, 15000);
        if (r == 0) break;
        CHECK(r == 1, "the signal child did not end after SIGTERM (%s)", r == -2 ? "timed out" : "read error");
        printf("scale: child reports '%s'\n", line);
        CHECK(line[0] == 'E', "after SIGTERM: '%s'", line);
        exits++;
    }
    close(p[0]);
    CHECK(exits == 2, "%d EXIT reports after SIGTERM, expected 2", exits);
    int status = wait_child(child, 10000);
    CHECK(status != -1, "the signal child did not exit");
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the signal child ended with status 0x%x, expected exit 0",
          status);
    CHECK(nseen == 3, "%d workers started in the signal child, expected 3", nseen);
    for (int i = 0; i < nseen; i++) CHECK(pid_gone(seen[i]), "the signal child's worker pid %d is gone", (int)seen[i]);
}

static int case_scale(void) {
    cluster_config *cfg = base_config(2, http_worker_main);
    start(cfg);
    WAIT_FOR(W[1].ready && W[2].ready, 10000, "2 workers READY");

    OK(cluster_scale(4));
    WAIT_FOR(W[3].ready && W[4].ready, 10000, "workers 3 and 4 READY after scaling to 4");
    CHECK(live_workers() == 4, "%d workers after scaling to 4", live_workers());
    CHECK(n_forks == 4, "%d FORK events", n_forks);

    OK(cluster_scale(1));
    WAIT_FOR(W[2].exited && W[3].exited && W[4].exited, 10000, "the EXITs of workers 2, 3 and 4 after scaling to 1");
    for (int id = 2; id <= 4; id++) {
        CHECK(W[id].after_disconnect, "worker %d's EXIT does not say exited_after_disconnect", id);
        CHECK(W[id].code == 0 && W[id].sig == 0, "worker %d: exit code %d signal %d, expected 0", id, W[id].code,
              W[id].sig);
    }
    CHECK(!W[1].exited, "worker 1 (the oldest) was stopped");
    dispatch_for(1000);
    CHECK(n_forks == 4, "%d FORK events: a worker stopped by scaling was replaced", n_forks);
    CHECK(n_exits == 3, "%d EXIT events, expected 3", n_exits);
    uint32_t ids[8];
    CHECK(OK(cluster_workers(ids, 8)) == 1 && ids[0] == 1, "%d workers after scaling to 1", live_workers());
    stop_and_check();

    scale_signals();
    return 0;
}

/* ---------------------------------------------------------------- maxreq ---- */

#define REQUESTS 300

static int case_maxreq(void) {
    cluster_config *cfg = base_config(2, http_worker_main);
    OK(cluster_config_set_policy(cfg, CLUSTER_POLICY_ROUND_ROBIN));
    OK(cluster_config_set_max_requests(cfg, 50, 10));
    CHECK(OK(cluster_config_listen_tcp(cfg, "127.0.0.1", 0)) == 0, "first listener is index 0");
    start(cfg);
    int port = OK(cluster_local_port(0));
    WAIT_FOR(W[1].ready && W[2].ready, 10000, "2 workers READY");

    int p[2];
    CHECK(pipe2(p, O_CLOEXEC) == 0, "pipe");
    pid_t client = fork_client((const int[]){p[1], -1});
    if (client == 0) {
        int counts[MAX_IDS + 1] = {0}, failed = 0;
        for (int i = 0; i < REQUESTS; i++) {
            int w = http_worker("127.0.0.1", port);
            if (w >= 1 && w <= MAX_IDS)
                counts[w]++;
            else
                failed++;
        }
        char line[1024];
        int n = snprintf(line, sizeof line, "failed %d", failed);
        for (int w = 1; w <= MAX_IDS; w++)
            if (counts[w]) n += snprintf(line + n, sizeof line - (size_t)n, " %d:%d", w, counts[w]);
        n += snprintf(line + n, sizeof line - (size_t)n, "\n");
        _exit(write(p[1], line, (size_t)n) == n ? 0 : 97);
    }
    close(p[1]);
    int status = dispatch_until_exit(client, 45000, "the client's 300 requests");
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the client failed (status 0x%x)", status);
    char line[1024];
    rlen = 0;
    CHECK(read_line(p[0], line, sizeof line, 1000) == 1, "the client reported nothing");
    close(p[0]);
    printf("maxreq: client: %s\n", line);
    int failed, used, counts[MAX_IDS + 1] = {0}, distinct = 0, answered = 0;
    const char *q = line;
    CHECK(sscanf(q, "failed %d%n", &failed, &used) == 1, "report '%s'", line);
    q += used;
    int w, c;
    while (sscanf(q, " %d:%d%n", &w, &c, &used) == 2) {
        CHECK(w >= 1 && w <= MAX_IDS, "report '%s'", line);
        counts[w] = c;
        answered += c;
        distinct++;
        q += used;
    }
    CHECK(failed == 0, "%d of %d requests failed across the recycles", failed, REQUESTS);
    CHECK(answered == REQUESTS, "%d answers for %d requests", answered, REQUESTS);
    CHECK(distinct > 2, "only %d workers answered: none was recycled", distinct);
    for (int id = 1; id <= MAX_IDS; id++)
        CHECK(!counts[id] || W[id].forked, "worker %d answered but this primary never started it", id);

    CHECK(n_exits >= 1, "no worker exited: none was recycled");
    for (int id = 1; id <= MAX_IDS; id++) {
        if (!W[id].exited) continue;
        CHECK(W[id].after_disconnect, "recycled worker %d's EXIT does not say exited_after_disconnect", id);
        CHECK(W[id].code == 0 && W[id].sig == 0, "recycled worker %d: exit code %d signal %d", id, W[id].code, W[id].sig);
        CHECK(counts[id] >= 50, "worker %d was recycled after %d requests, the limit is 50..60", id, counts[id]);
    }
    CHECK(n_errors == 0, "%d ERROR events", n_errors);
    WAIT_FOR(live_workers() == 2, 10000, "the worker count to settle at 2");
    uint32_t ids[4];
    CHECK(OK(cluster_workers(ids, 4)) == 2, "2 workers");
    for (int i = 0; i < 2; i++) {
        struct cluster_worker_info info;
        OK(cluster_worker_info(ids[i], &info));
        CHECK(info.state == CLUSTER_WORKER_READY, "worker %u is in state %u, not READY", ids[i], info.state);
    }
    printf("maxreq: %d workers answered, %d recycled\n", distinct, n_exits);
    stop_and_check();
    return 0;
}

/* ---------------------------------------------------------------- served ---- */

#define SERVED_WORKERS 4
#define SERVED_MIN_UPTIME_MS 500

/* A client process that keeps sending requests until it is killed (failures are expected:
 * a SIGKILLed worker takes the requests it held with it). */
static pid_t start_http_load(int port) {
    pid_t pid = fork_client((const int[]){-1});
    if (pid == 0) {
        for (;;) (void)http_worker("127.0.0.1", port);
    }
    return pid;
}

static void stop_http_load(pid_t pid) {
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

static int case_served(void) {
    cluster_config *cfg = base_config(SERVED_WORKERS, http_worker_main);
    OK(cluster_config_set_min_uptime(cfg, SERVED_MIN_UPTIME_MS));
    CHECK(OK(cluster_config_listen_tcp(cfg, "127.0.0.1", 0)) == 0, "first listener is index 0");
    start(cfg);
    int port = OK(cluster_local_port(0));
    WAIT_FOR(n_ready == SERVED_WORKERS, 10000, "4 workers READY");
    pid_t load = start_http_load(port);

    /* Every 300 ms, SIGKILL the oldest READY worker, once it has lived past the minimum
     * uptime (with a margin): it served, so its slot is replaced at once every time. The
     * doubling backoff (100 ms, 200, 400, 800, 1600... in each slot) would leave the cluster
     * short of workers. */
    int kills = 0, skipped = 0;
    long long end = now_ms() + 6000, next_kill = now_ms() + 300;
    while (now_ms() < end) {
        dispatch_for(20);
        if (now_ms() < next_kill) continue;
        next_kill += 300;
        int victim = 0;
        for (int id = 1; id <= MAX_IDS; id++)
            if (W[id].ready && !W[id].exited && now_ms() - W[id].fork_ms >= SERVED_MIN_UPTIME_MS + 200 &&
                (!victim || W[id].fork_ms < W[victim].fork_ms))
                victim = id;
        if (!victim) {
            skipped++;
            continue;
        }
        CHECK(kill(W[victim].pid, SIGKILL) == 0, "kill worker %d: %s", victim, strerror(errno));
        WAIT_FOR(W[victim].exited, 5000, "the EXIT of the killed worker");
        kills++;
    }
    stop_http_load(load);
    long long stopped = now_ms();
    WAIT_FOR(n_forks == SERVED_WORKERS + kills && n_ready == n_forks && live_workers() == SERVED_WORKERS, 5000,
             "4 workers READY after the kills");
    long long back = now_ms() - stopped;

    /* Each replacement is the next FORK after an EXIT (nothing else starts workers here). */
    int exits_seen[MAX_IDS], ne = 0, forks_seen[MAX_IDS], nf = 0;
    for (int id = 1; id <= MAX_IDS; id++) {
        if (W[id].exited) exits_seen[ne++] = id;
        if (W[id].forked && id > SERVED_WORKERS) forks_seen[nf++] = id;
    }
    CHECK(ne == kills && nf == kills, "%d kills, %d EXIT events, %d replacements", kills, ne, nf);
    /* Sort the exits by time (ids are in start order, not death order). */
    for (int i = 1; i < ne; i++)
        for (int j = i; j > 0 && W[exits_seen[j]].exit_ms < W[exits_seen[j - 1]].exit_ms; j--) {
            int t = exits_seen[j];
            exits_seen[j] = exits_seen[j - 1];
            exits_seen[j - 1] = t;
        }
    long long worst = 0;
    for (int i = 0; i < ne; i++) {
        int dead = exits_seen[i], repl = forks_seen[i];
        CHECK(W[dead].sig == SIGKILL && !W[dead].after_disconnect, "worker %d: signal %d after_disconnect %d", dead,
              W[dead].sig, W[dead].after_disconnect);
        long long gap = W[repl].fork_ms - W[dead].exit_ms;
        if (gap > worst) worst = gap;
    }
    printf("served: %d kills (%d ticks skipped), slowest replacement %lld ms after its EXIT, "
           "4 READY %lld ms after the kills\n",
           kills, skipped, worst, back);
    CHECK(kills >= 10, "only %d workers were killed in 6 s", kills);
    /* At once: a loop turn and a fork. The backoff would reach 800 ms in a slot by its 4th
     * restart; 700 ms leaves room for a loaded machine. */
    CHECK(worst < 700, "a worker that served was replaced %lld ms after its EXIT: it waited a backoff", worst);
    CHECK(n_slot_failed == 0, "%d SLOT_FAILED: deaths after the minimum uptime are not a crash loop", n_slot_failed);
    stop_and_check();
    return 0;
}

/* ---------------------------------------------------------------- readyloop ---- */

static int case_readyloop(void) {
    cluster_config *cfg = base_config(2, ready_then_exit_main);
    CHECK(OK(cluster_config_listen_tcp(cfg, "127.0.0.1", 0)) == 0, "first listener is index 0");
    start(cfg);
    WAIT_FOR(n_slot_failed > 0, 15000, "SLOT_FAILED for the slot whose workers exit after READY");
    int crashed = 0;
    for (int id = 2; id <= MAX_IDS; id++) crashed += W[id].forked;
    CHECK(crashed == 5, "%d workers were started in the failing slot, expected 5", crashed);
    for (int id = 2; id <= 6; id++) {
        CHECK(W[id].ready, "worker %d reported READY before it exited", id);
        CHECK(W[id].exited && W[id].code == 1 && W[id].sig == 0, "worker %d: exited %d code %d signal %d", id,
              W[id].exited, W[id].code, W[id].sig);
    }
    CHECK(slot_failed_id == 6 && strlen(slot_failed_why) > 0, "SLOT_FAILED names worker %d ('%s')", slot_failed_id,
          slot_failed_why);
    printf("readyloop: %s\n", slot_failed_why);
    dispatch_for(1000);
    CHECK(n_forks == 6 && n_slot_failed == 1, "%d FORKs, %d SLOT_FAILED: the slot stays given up", n_forks,
          n_slot_failed);
    CHECK(W[1].ready && !W[1].exited, "worker 1 keeps serving");
    stop_and_check();
    return 0;
}

/* ---------------------------------------------------------------- process ---- */

/* The value of "key=" in a worker's report, or "" (static buffer). */
static const char *field(const char *msg, const char *key) {
    static char val[PATH_MAX];
    char pat[64];
    snprintf(pat, sizeof pat, "%s=", key);
    size_t klen = strlen(pat);
    for (const char *l = msg; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
        if (strncmp(l, pat, klen) == 0) {
            const char *v = l + klen, *e = strchr(v, '\n');
            size_t n = e ? (size_t)(e - v) : strlen(v);
            if (n >= sizeof val) n = sizeof val - 1;
            memcpy(val, v, n);
            val[n] = '\0';
            return val;
        }
    }
    val[0] = '\0';
    return val;
}

static void process_run(int exec_mode, int silent) {
    cluster_config *cfg = base_config(2, worker_main);
    if (exec_mode) OK(cluster_config_set_mode(cfg, CLUSTER_MODE_EXEC));
    if (silent) {
        OK(cluster_config_set_silent(cfg, true));
    } else {
        OK(cluster_config_set_user(cfg, 65534, 65534));
        OK(cluster_config_set_cwd(cfg, "/tmp"));
        OK(cluster_config_add_env(cfg, "RCLUSTER_TEST_VAR=hello"));
    }
    start(cfg);
    WAIT_FOR(W[1].has_msg && W[2].has_msg, 10000, "both workers' reports");
    for (int id = 1; id <= 2; id++) {
        const char *m = W[id].msg;
        printf("process (%s%s): worker %d reports: ", exec_mode ? "exec" : "fork", silent ? ", silent" : "", id);
        for (const char *c = m; *c; c++) putchar(*c == '\n' ? ' ' : *c);
        putchar('\n');
        if (silent) {
            CHECK(strcmp(field(m, "fd1"), "/dev/null") == 0, "worker %d's stdout is '%s', expected /dev/null", id,
                  field(m, "fd1"));
            CHECK(strcmp(field(m, "fd0"), "/dev/null") == 0, "worker %d's stdin is '%s', expected /dev/null", id,
                  field(m, "fd0"));
            CHECK(strcmp(field(m, "fd2"), "/dev/null") == 0, "worker %d's stderr is '%s', expected /dev/null", id,
                  field(m, "fd2"));
        } else {
            CHECK(atoi(field(m, "uid")) == 65534, "worker %d runs as uid %s, expected 65534", id, field(m, "uid"));
            CHECK(atoi(field(m, "gid")) == 65534, "worker %d runs as gid %s, expected 65534", id, field(m, "gid"));
            CHECK(strcmp(field(m, "groups"), "0") == 0, "worker %d has %s supplementary groups, expected 0", id,
                  field(m, "groups"));
            CHECK(strcmp(field(m, "cwd"), "/tmp") == 0, "worker %d runs in '%s', expected /tmp", id, field(m, "cwd"));
            CHECK(strcmp(field(m, "var"), "hello") == 0, "worker %d's RCLUSTER_TEST_VAR is '%s', expected hello", id,
                  field(m, "var"));
            char mine[PATH_MAX];
            fd_target(1, mine, sizeof mine);
            CHECK(strcmp(field(m, "fd1"), mine) == 0, "worker %d's stdout is '%s', the primary's is '%s' (not silent)", id,
                  field(m, "fd1"), mine);
        }
        /* Dropping privileges must not cost the "die with the primary" guarantee. */
        CHECK(atoi(field(m, "pdeathsig")) == SIGKILL, "worker %d's parent-death signal is %s, expected SIGKILL (%d)", id,
              field(m, "pdeathsig"), SIGKILL);
    }
    stop_and_check();
    for (int id = 1; id <= 2; id++)
        CHECK(W[id].code == 0 && W[id].sig == 0, "worker %d: exit code %d signal %d at the stop", id, W[id].code,
              W[id].sig);
    CHECK(getenv("RCLUSTER_TEST_VAR") == NULL, "cluster_config_add_env changed the primary's own environment");
}

static int case_process(const char *mode) {
    int exec_mode;
    if (strcmp(mode, "fork") == 0)
        exec_mode = 0;
    else if (strcmp(mode, "exec") == 0)
        exec_mode = 1;
    else
        FAIL("usage: supervision process fork|exec");
    if (geteuid() != 0) {
        printf("skipped: not root\n");
        return 0;
    }
    process_run(exec_mode, 0);
    process_run(exec_mode, 1);
    return 0;
}

/* ---------------------------------------------------------------- main ---- */

/* ---------------------------------------------------------------- manual ---- */

static int case_manual(void) {
    cluster_config *cfg = base_config(1, manual_worker_main);
    OK(cluster_config_set_manual_ready(cfg, true));
    start(cfg);
    WAIT_FOR(W[1].online, 10000, "worker 1 ONLINE");
    dispatch_for(300);
    CHECK(!W[1].ready, "READY before the worker called cluster_ready()");
    struct cluster_worker_info info;
    OK(cluster_worker_info(1, &info));
    CHECK(info.state == CLUSTER_WORKER_ONLINE, "state %u, expected ONLINE", info.state);
    OK(cluster_send(1, (const uint8_t *)"go", 2));
    WAIT_FOR(W[1].ready, 10000, "READY after cluster_ready()");
    stop_and_check();
    return 0;
}

/* ---------------------------------------------------------------- exec-reload ---- */

static void write_script(const char *dir, const char *self, const char *version) {
    char tmp[PATH_MAX], path[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s/app.new", dir);
    snprintf(path, sizeof path, "%s/app", dir);
    FILE *f = fopen(tmp, "w");
    CHECK(f != NULL, "create %s", tmp);
    fprintf(f, "#!/bin/sh\nexec '%s' version-worker %s\n", self, version);
    CHECK(fclose(f) == 0 && chmod(tmp, 0755) == 0, "write %s", tmp);
    CHECK(rename(tmp, path) == 0, "install %s", path); /* as a deploy does: a new file, renamed over */
}

static int case_exec_reload(void) {
    char dir[] = "/tmp/rcluster-exec-reload-XXXXXX", self[PATH_MAX], app[PATH_MAX];
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    CHECK(n > 0, "readlink /proc/self/exe");
    self[n] = '\0';
    snprintf(app, sizeof app, "%s/app", dir);
    write_script(dir, self, "v1");
    cluster_config *cfg = base_config(2, http_worker_main);
    OK(cluster_config_set_mode(cfg, CLUSTER_MODE_EXEC));
    const char *const argv[] = {app, NULL};
    OK(cluster_config_set_exec(cfg, app, argv));
    start(cfg);
    WAIT_FOR(W[1].has_msg && W[2].has_msg, 20000, "both v1 workers' versions");
    CHECK(!strcmp(W[1].msg, "version v1") && !strcmp(W[2].msg, "version v1"), "v1 workers say '%s' '%s'", W[1].msg, W[2].msg);
    write_script(dir, self, "v2");
    OK(cluster_reload());
    WAIT_FOR(n_reloaded == 1, 20000, "the reload's end");
    CHECK(reloaded_code == 0, "the reload completed (%d)", reloaded_code);
    WAIT_FOR(W[3].has_msg && W[4].has_msg, 20000, "the replacements' versions");
    CHECK(!strcmp(W[3].msg, "version v2") && !strcmp(W[4].msg, "version v2"), "replacements run the program now on disk: '%s' '%s'",
          W[3].msg, W[4].msg);
    stop_and_check();
    unlink(app);
    rmdir(dir);
    return 0;
}

int main(int argc, char **argv) {
    if (cluster_is_worker()) {
        if (argc > 2 && strcmp(argv[1], "version-worker") == 0) {
            version_arg = argv[2];
            return version_worker_main(NULL);
        }
        return worker_main(NULL);
    }
    test_deadline(60);
    setvbuf(stdout, NULL, _IONBF, 0);
    if (getenv("RCLUSTER_LOG")) cluster_log_init();
    struct rlimit no_core = {0, 0}; /* the watchdog's SIGABRT dumps no core */
    setrlimit(RLIMIT_CORE, &no_core);
    const char *c = argc > 1 ? argv[1] : "";
    long long t0 = now_ms();
    int rc;
    if (strcmp(c, "crashloop") == 0)
        rc = case_crashloop();
    else if (strcmp(c, "startup") == 0)
        rc = case_startup();
    else if (strcmp(c, "stuck") == 0)
        rc = case_stuck();
    else if (strcmp(c, "scale") == 0)
        rc = case_scale();
    else if (strcmp(c, "maxreq") == 0)
        rc = case_maxreq();
    else if (strcmp(c, "pause") == 0)
        rc = case_pause();
    else if (strcmp(c, "served") == 0)
        rc = case_served();
    else if (strcmp(c, "readyloop") == 0)
        rc = case_readyloop();
    else if (strcmp(c, "manual") == 0)
        rc = case_manual();
    else if (strcmp(c, "exec-reload") == 0)
        rc = case_exec_reload();
    else if (strcmp(c, "process") == 0)
        rc = case_process(argc > 2 ? argv[2] : "");
    else {
        fprintf(stderr, "usage: %s crashloop|startup|stuck|pause|scale|maxreq|served|readyloop|manual|exec-reload|process fork|process exec\n", argv[0]);
        return 2;
    }
    printf("supervision %s%s%s: ok (%lld ms)\n", c, argc > 2 ? " " : "", argc > 2 ? argv[2] : "", now_ms() - t0);
    return rc;
}
