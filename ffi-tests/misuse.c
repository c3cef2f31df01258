/* The misuse matrix: every call made at the wrong time, in the wrong role or with a bad
 * argument returns its error code and leaves a sentence in cluster_last_error(), and nothing
 * crashes. Before any start, with NULLs and out-of-range values, with a port already taken;
 * then in a running FORK-mode cluster, in the primary (unknown ids, bad signals, a second
 * start, re-entering the loop from the callback) and in the worker (primary-only calls, a
 * send to itself, a second start), whose results the primary asserts; and after the end. */
#include "harness.h"

/* ---- a sentence that is really new ----
 * cluster_last_error() keeps the previous failure's sentence, so "a sentence is there" alone
 * cannot fail once any call has failed. Before each expected failure we leave a known marker
 * sentence (an empty exec path), and require the call under test to replace it. */

static cluster_config *marker_cfg;
static char marker[256];

static void set_marker(void) {
    if (!marker_cfg) {
        marker_cfg = cluster_config_new();
        CHECK(marker_cfg != NULL, "marker config");
    }
    int32_t rc = cluster_config_set_exec(marker_cfg, "", NULL);
    CHECK(rc == CLUSTER_E_INVAL, "an empty exec path is refused (got %d)", rc);
    snprintf(marker, sizeof marker, "%s", cluster_last_error());
    CHECK(marker[0] != '\0', "the marker failure left a sentence");
}

static int error_is_fresh(void) {
    return cluster_last_error()[0] != '\0' && strcmp(cluster_last_error(), marker) != 0;
}

/* EXPECT_ERR, and the sentence is this call's own. */
#define EXPECT_FRESH(expr, code)                                                          \
    do {                                                                                  \
        set_marker();                                                                     \
        EXPECT_ERR(expr, code);                                                           \
        CHECK(error_is_fresh(), "%s left no sentence of its own (still '%s')", #expr, marker); \
    } while (0)

/* ---- worker side ---- */

/* Checks run in the worker, reported to the primary, which holds the expectations. */
struct result {
    char name[32];
    int32_t rc;
    int fresh;
};
static struct result results[32];
static int nresults;

#define WCHECK(name_, expr)                                           \
    do {                                                              \
        set_marker();                                                 \
        CHECK(nresults < 32, "too many worker checks");               \
        struct result *r_ = &results[nresults++];                     \
        snprintf(r_->name, sizeof r_->name, "%s", name_);             \
        r_->rc = (expr);                                              \
        r_->fresh = error_is_fresh();                                 \
    } while (0)

static void on_worker(void *ud, const cluster_event *ev) {
    (void)ud;
    (void)ev; /* the loop ends after SHUTDOWN by itself */
}

static void no_batch(void *ud, const cluster_event *events, size_t n) {
    (void)ud;
    (void)events;
    (void)n;
}

static int noop_main(void *ud) {
    (void)ud;
    return 0;
}

/* A process forked (not by rcluster) from a running primary or worker is neither: every call
 * fails with CLUSTER_E_STATE, so it cannot read the parent's channels or send in its name.
 * Forks one, has it try, and checks what it found (its exit code is a bit mask of surprises). */
static void forked_copy_is_refused(const char *who) {
    pid_t pid = fork();
    CHECK(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        int bad = 0;
        bad |= cluster_is_worker() ? 1 : 0;
        bad |= cluster_worker_id() != 0 ? 2 : 0;
        bad |= cluster_send(0, (const uint8_t *)"copy", 4) != CLUSTER_E_STATE ? 4 : 0;
        bad |= cluster_dispatch(0) != CLUSTER_E_STATE ? 8 : 0;
        bad |= cluster_fd() != CLUSTER_E_STATE ? 16 : 0;
        bad |= cluster_workers(NULL, 0) != CLUSTER_E_STATE ? 32 : 0;
        bad |= strstr(cluster_last_error(), "forked") == NULL ? 64 : 0;
        _exit(bad);
    }
    int st = 0;
    CHECK(waitpid(pid, &st, 0) == pid && WIFEXITED(st), "the copy forked from the %s exited", who);
    CHECK(WEXITSTATUS(st) == 0, "a copy forked from the %s was refused everything (surprises: mask %d)", who,
          WEXITSTATUS(st));
}

static int worker_main(void *ud) {
    (void)ud;
    CHECK(cluster_is_worker() && cluster_worker_id() == 1, "worker 1");
    /* Before this worker's own start. */
    WCHECK("worker_start_null", cluster_worker_start(NULL, NULL));
    WCHECK("ready_before_start", cluster_ready());
    WCHECK("send_before_start", cluster_send(0, (const uint8_t *)"x", 1));
    WCHECK("dispatch_before_start", cluster_dispatch(0));

    OK(cluster_worker_start(on_worker, NULL));
    forked_copy_is_refused("worker");

    /* Primary-only calls. */
    cluster_config *cfg = cluster_config_new();
    CHECK(cfg != NULL, "config in the worker");
    OK(cluster_config_set_worker_main(cfg, noop_main, NULL));
    OK(cluster_config_set_workers(cfg, 1));
    OK(cluster_config_set_signals(cfg, false));
    struct cluster_worker_info info;
    uint32_t ids[4];
    WCHECK("fork", cluster_fork());
    WCHECK("workers", cluster_workers(ids, 4));
    WCHECK("local_port", cluster_local_port(0)); /* a worker's own listeners only: none here */
    WCHECK("fork_env", cluster_fork_env(NULL, 0));
    WCHECK("unlisten_unknown", cluster_unlisten(0));
    WCHECK("listen_null", cluster_listen_tcp(NULL, 0));
    WCHECK("listen_bad_host", cluster_listen_tcp("not a host!", 0));
    WCHECK("listen_unix_long", cluster_listen_unix("/tmp/xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"));
    WCHECK("primary_start", cluster_primary_start(cfg, on_worker, NULL));
    WCHECK("worker_info", cluster_worker_info(1, &info));
    WCHECK("worker_kill", cluster_worker_kill(1, 0));
    WCHECK("worker_disconnect", cluster_worker_disconnect(1));
    WCHECK("scale", cluster_scale(2));
    WCHECK("reload", cluster_reload());
    cluster_config_free(cfg);
    /* Bad sends and a second start. */
    WCHECK("send_self", cluster_send(1, (const uint8_t *)"me", 2));
    WCHECK("send_null_data", cluster_send(0, NULL, 5));
    WCHECK("worker_start_again", cluster_worker_start(on_worker, NULL));
    /* The runtime still works after all that: the reports go out. */
    for (int i = 0; i < nresults; i++) {
        char msg[96];
        int n = snprintf(msg, sizeof msg, "check %s %d %d", results[i].name, (int)results[i].rc, results[i].fresh);
        OK(cluster_send(0, (const uint8_t *)msg, (size_t)n));
    }
    OK(cluster_send(0, (const uint8_t *)"done", 4));
    return cluster_run() == 0 ? 0 : 3;
}

/* ---- primary side ---- */

static const struct {
    const char *name;
    int32_t expected;
} worker_expect[] = {
    {"worker_start_null", CLUSTER_E_INVAL},  {"ready_before_start", CLUSTER_E_STATE},
    {"send_before_start", CLUSTER_E_STATE},  {"dispatch_before_start", CLUSTER_E_STATE},
    {"fork", CLUSTER_E_ROLE},                {"workers", CLUSTER_E_ROLE},
    {"local_port", CLUSTER_E_INVAL},         {"primary_start", CLUSTER_E_ROLE},
    {"fork_env", CLUSTER_E_ROLE},            {"unlisten_unknown", CLUSTER_E_INVAL},
    {"listen_null", CLUSTER_E_INVAL},        {"listen_bad_host", CLUSTER_E_INVAL},
    {"listen_unix_long", CLUSTER_E_INVAL},
    {"worker_info", CLUSTER_E_ROLE},         {"worker_kill", CLUSTER_E_ROLE},
    {"worker_disconnect", CLUSTER_E_ROLE},   {"scale", CLUSTER_E_ROLE},
    {"reload", CLUSTER_E_ROLE},              {"send_self", CLUSTER_E_INVAL},
    {"send_null_data", CLUSTER_E_INVAL},     {"worker_start_again", CLUSTER_E_STATE},
};
#define NEXPECT ((int)(sizeof worker_expect / sizeof worker_expect[0]))

static int worker_seen[NEXPECT];
static volatile int ready, done, exits, clean_exits, stopping, in_cb_checked;
static pid_t worker_pid;
static int32_t in_cb_dispatch_rc = 1, in_cb_run_rc = 1;
static char in_cb_dispatch_err[256], in_cb_run_err[256];

static void on_primary(void *ud, const cluster_event *ev) {
    (void)ud;
    char text[256] = {0};
    if (ev->len) memcpy(text, ev->data, ev->len < sizeof text - 1 ? ev->len : sizeof text - 1);
    switch (ev->kind) {
    case CLUSTER_EVENT_FORK:
        CHECK(ev->worker_id == 1 && ev->pid > 0, "fork event %u pid %d", ev->worker_id, ev->pid);
        worker_pid = ev->pid;
        break;
    case CLUSTER_EVENT_READY:
        ready++;
        if (!in_cb_checked) {
            /* Re-entering the loop from the callback is refused, with a sentence. */
            set_marker();
            in_cb_dispatch_rc = cluster_dispatch(0);
            snprintf(in_cb_dispatch_err, sizeof in_cb_dispatch_err, "%s", error_is_fresh() ? cluster_last_error() : "");
            set_marker();
            in_cb_run_rc = cluster_run();
            snprintf(in_cb_run_err, sizeof in_cb_run_err, "%s", error_is_fresh() ? cluster_last_error() : "");
            in_cb_checked = 1;
        }
        break;
    case CLUSTER_EVENT_MESSAGE: {
        char name[64];
        int rc, fresh;
        if (strcmp(text, "done") == 0) {
            done = 1;
        } else if (sscanf(text, "check %63s %d %d", name, &rc, &fresh) == 3) {
            int i;
            for (i = 0; i < NEXPECT; i++)
                if (strcmp(worker_expect[i].name, name) == 0) break;
            CHECK(i < NEXPECT, "unknown worker check '%s'", name);
            CHECK(!worker_seen[i], "worker check '%s' reported twice", name);
            worker_seen[i] = 1;
            if (rc != worker_expect[i].expected)
                FAIL("in the worker, %s returned %d (%s), expected %d (%s)", name, rc, cluster_strerror(rc),
                     worker_expect[i].expected, cluster_strerror(worker_expect[i].expected));
            CHECK(fresh, "in the worker, %s left no sentence of its own", name);
        } else {
            FAIL("unexpected message '%s' from %u", text, ev->worker_id);
        }
        break;
    }
    case CLUSTER_EVENT_ERROR:
        FAIL("unexpected ERROR event about worker %u: %.*s", ev->worker_id, (int)ev->len, (const char *)ev->data);
        break;
    case CLUSTER_EVENT_EXIT:
        CHECK(stopping, "worker %u exited before the shutdown: code %d signal %d", ev->worker_id, ev->exit_code, ev->signal);
        exits++;
        clean_exits += exit_is_clean(ev);
        break;
    default:
        break;
    }
}

/* listen_tcp on `host` fails, says so about that host, and adds no listener. */
static void bad_host(cluster_config *cfg, const char *host) {
    set_marker();
    int32_t rc = cluster_config_listen_tcp(cfg, host, 8080);
    CHECK(rc < 0, "listen_tcp(\"%s\") returned %d", host, rc);
    CHECK(rc == CLUSTER_E_INVAL || rc == CLUSTER_E_SYS, "listen_tcp(\"%s\") returned %d (%s)", host, rc, cluster_strerror(rc));
    CHECK(error_is_fresh(), "listen_tcp(\"%s\") left no sentence of its own", host);
    CHECK(strstr(cluster_last_error(), host) != NULL, "the sentence names the host: %s", cluster_last_error());
}

static void before_any_start(void) {
    uint32_t ids[4];
    struct cluster_worker_info info;
    /* The loop and messaging need a runtime. */
    EXPECT_FRESH(cluster_run(), CLUSTER_E_STATE);
    EXPECT_FRESH(cluster_dispatch(0), CLUSTER_E_STATE);
    EXPECT_FRESH(cluster_dispatch(-1), CLUSTER_E_STATE); /* must not block */
    EXPECT_FRESH(cluster_set_batch_handler(no_batch, NULL), CLUSTER_E_STATE);
    EXPECT_FRESH(cluster_fd(), CLUSTER_E_STATE);
    EXPECT_FRESH(cluster_send(1, (const uint8_t *)"x", 1), CLUSTER_E_STATE);
    EXPECT_FRESH(cluster_send_fd(1, (const uint8_t *)"x", 1, 0), CLUSTER_E_STATE);
    EXPECT_FRESH(cluster_broadcast((const uint8_t *)"x", 1), CLUSTER_E_STATE);
    EXPECT_FRESH(cluster_shutdown(5000), CLUSTER_E_STATE);
    /* Primary calls before cluster_primary_start. */
    EXPECT_FRESH(cluster_fork(), CLUSTER_E_STATE);
    EXPECT_FRESH(cluster_fork_env(NULL, 0), CLUSTER_E_STATE);
    EXPECT_FRESH(cluster_listen_tcp("127.0.0.1", 0), CLUSTER_E_STATE);
    EXPECT_FRESH(cluster_local_port(0), CLUSTER_E_STATE);
    EXPECT_FRESH(cluster_workers(ids, 4), CLUSTER_E_STATE);
    EXPECT_FRESH(cluster_workers(NULL, 0), CLUSTER_E_STATE);
    EXPECT_FRESH(cluster_worker_info(1, &info), CLUSTER_E_STATE);
    EXPECT_FRESH(cluster_worker_kill(1, SIGTERM), CLUSTER_E_STATE);
    EXPECT_FRESH(cluster_worker_disconnect(1), CLUSTER_E_STATE);
    EXPECT_FRESH(cluster_scale(2), CLUSTER_E_STATE);
    EXPECT_FRESH(cluster_reload(), CLUSTER_E_STATE);
    /* Worker-only calls in the primary. */
    EXPECT_FRESH(cluster_unlisten(0), CLUSTER_E_ROLE);
    EXPECT_FRESH(cluster_worker_start(on_primary, NULL), CLUSTER_E_ROLE);
    EXPECT_FRESH(cluster_ready(), CLUSTER_E_ROLE);
    CHECK(cluster_is_primary() && !cluster_is_worker() && cluster_worker_id() == 0, "still a plain primary");
}

static void null_and_bad_arguments(void) {
    /* Every config call with a NULL config. */
    EXPECT_FRESH(cluster_config_set_workers(NULL, 1), CLUSTER_E_INVAL);
    EXPECT_FRESH(cluster_config_set_mode(NULL, CLUSTER_MODE_FORK), CLUSTER_E_INVAL);
    EXPECT_FRESH(cluster_config_set_worker_main(NULL, noop_main, NULL), CLUSTER_E_INVAL);
    EXPECT_FRESH(cluster_config_set_exec(NULL, "/bin/true", NULL), CLUSTER_E_INVAL);
    EXPECT_FRESH(cluster_config_set_policy(NULL, CLUSTER_POLICY_ROUND_ROBIN), CLUSTER_E_INVAL);
    EXPECT_FRESH(cluster_config_listen_tcp(NULL, "127.0.0.1", 0), CLUSTER_E_INVAL);
    EXPECT_FRESH(cluster_config_listen_unix(NULL, "/tmp/rcluster-misuse.sock"), CLUSTER_E_INVAL);
    EXPECT_FRESH(cluster_config_set_max_message(NULL, 1024), CLUSTER_E_INVAL);
    EXPECT_FRESH(cluster_config_set_signals(NULL, false), CLUSTER_E_INVAL);
    EXPECT_FRESH(cluster_config_set_grace(NULL, 1000), CLUSTER_E_INVAL);
    EXPECT_FRESH(cluster_config_set_send_queue(NULL, 1 << 20, 16), CLUSTER_E_INVAL);
    EXPECT_FRESH(cluster_config_set_manual_ready(NULL, true), CLUSTER_E_INVAL);
    cluster_config_free(NULL); /* fine */

    cluster_config *cfg = cluster_config_new();
    CHECK(cfg != NULL, "config");
    /* NULL arguments. */
    EXPECT_FRESH(cluster_config_listen_tcp(cfg, NULL, 0), CLUSTER_E_INVAL);
    EXPECT_FRESH(cluster_config_set_exec(cfg, NULL, NULL), CLUSTER_E_INVAL);
    EXPECT_FRESH(cluster_config_set_worker_main(cfg, NULL, NULL), CLUSTER_E_INVAL);
    EXPECT_FRESH(cluster_config_listen_unix(cfg, NULL), CLUSTER_E_INVAL);
    /* Out-of-range enumerations. */
    EXPECT_FRESH(cluster_config_set_mode(cfg, 2), CLUSTER_E_INVAL);
    EXPECT_FRESH(cluster_config_set_mode(cfg, (cluster_mode)-1), CLUSTER_E_INVAL);
    EXPECT_FRESH(cluster_config_set_policy(cfg, 5), CLUSTER_E_INVAL);
    EXPECT_FRESH(cluster_config_set_policy(cfg, 0xffffffffu), CLUSTER_E_INVAL);
    /* Bad values. */
    EXPECT_FRESH(cluster_config_set_workers(cfg, 100000), CLUSTER_E_INVAL);
    EXPECT_FRESH(cluster_config_set_max_message(cfg, 0), CLUSTER_E_INVAL);
    EXPECT_FRESH(cluster_config_set_max_message(cfg, (1ull << 30) + 1), CLUSTER_E_INVAL);
    EXPECT_FRESH(cluster_config_set_send_queue(cfg, 0, 16), CLUSTER_E_INVAL);
    EXPECT_FRESH(cluster_config_set_send_queue(cfg, 1 << 20, 0), CLUSTER_E_INVAL);
    bad_host(cfg, "not an ip!!");
    bad_host(cfg, "no-such-host.invalid");
    /* The failures added no listener: the next good one is listener 0. */
    CHECK(OK(cluster_config_listen_tcp(cfg, "127.0.0.1", 0)) == 0, "failed listen_tcp calls add no listener");
    /* The good values next to the bad ones are taken. */
    OK(cluster_config_set_workers(cfg, 4096));
    OK(cluster_config_set_max_message(cfg, 1ull << 30));
    OK(cluster_config_set_mode(cfg, CLUSTER_MODE_EXEC));
    OK(cluster_config_set_policy(cfg, CLUSTER_POLICY_REUSEPORT));
    cluster_config_free(cfg);

    /* cluster_primary_start: a NULL config, a NULL callback (with a config that would start). */
    cfg = cluster_config_new();
    CHECK(cfg != NULL, "config");
    OK(cluster_config_set_workers(cfg, 1));
    OK(cluster_config_set_worker_main(cfg, worker_main, NULL));
    OK(cluster_config_set_signals(cfg, false));
    EXPECT_FRESH(cluster_primary_start(NULL, on_primary, NULL), CLUSTER_E_INVAL);
    EXPECT_FRESH(cluster_primary_start(cfg, NULL, NULL), CLUSTER_E_INVAL);
    cluster_config_free(cfg);
    EXPECT_FRESH(cluster_fd(), CLUSTER_E_STATE); /* nothing started */

    /* NULL out-pointers and data. */
    EXPECT_FRESH(cluster_worker_info(1, NULL), CLUSTER_E_INVAL);
    EXPECT_FRESH(cluster_workers(NULL, 5), CLUSTER_E_INVAL);
    EXPECT_FRESH(cluster_send(1, NULL, 5), CLUSTER_E_INVAL);
    EXPECT_FRESH(cluster_send_fd(1, NULL, 5, 0), CLUSTER_E_INVAL);
    EXPECT_FRESH(cluster_broadcast(NULL, 5), CLUSTER_E_INVAL);
}

/* A port someone else listens on: the start fails with CLUSTER_E_SYS naming the address, and
 * leaves nothing started. */
static void port_in_use(void) {
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(s >= 0, "socket: %s", strerror(errno));
    struct sockaddr_in sin = {0};
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sin.sin_port = 0;
    CHECK(bind(s, (struct sockaddr *)&sin, sizeof sin) == 0, "bind: %s", strerror(errno));
    CHECK(listen(s, 16) == 0, "listen: %s", strerror(errno));
    socklen_t len = sizeof sin;
    CHECK(getsockname(s, (struct sockaddr *)&sin, &len) == 0, "getsockname: %s", strerror(errno));
    int port = ntohs(sin.sin_port);
    CHECK(port > 0, "a real port");

    cluster_config *cfg = cluster_config_new();
    CHECK(cfg != NULL, "config");
    OK(cluster_config_set_workers(cfg, 1));
    OK(cluster_config_set_worker_main(cfg, worker_main, NULL));
    OK(cluster_config_set_signals(cfg, false));
    CHECK(OK(cluster_config_listen_tcp(cfg, "127.0.0.1", (uint16_t)port)) == 0, "listener 0");
    EXPECT_FRESH(cluster_primary_start(cfg, on_primary, NULL), CLUSTER_E_SYS);
    char want[64];
    snprintf(want, sizeof want, "127.0.0.1:%d", port);
    CHECK(strstr(cluster_last_error(), want) != NULL, "the sentence names %s: %s", want, cluster_last_error());
    cluster_config_free(cfg);
    /* Nothing is running. */
    EXPECT_FRESH(cluster_fd(), CLUSTER_E_STATE);
    EXPECT_FRESH(cluster_workers(NULL, 0), CLUSTER_E_STATE);
    EXPECT_FRESH(cluster_dispatch(0), CLUSTER_E_STATE);
    CHECK(worker_pid == 0 && ready == 0, "no worker was started");
    close(s);
}

static void strerror_for_every_code(void) {
    for (int32_t code = -11; code <= 0; code++) {
        const char *s = cluster_strerror(code);
        CHECK(s != NULL && s[0] != '\0', "strerror(%d)", code);
    }
    const int32_t odd[] = {12345, -999, -12, INT32_MIN, INT32_MAX};
    for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++) {
        const char *s = cluster_strerror(odd[i]);
        CHECK(s != NULL && s[0] != '\0', "strerror(%d)", odd[i]);
    }
    EXPECT_FRESH(cluster_set_batch_handler(NULL, NULL), CLUSTER_E_INVAL);
    /* Each known error code has its own description. */
    for (int32_t a = -11; a <= -1; a++)
        for (int32_t b = a + 1; b <= -1; b++)
            CHECK(strcmp(cluster_strerror(a), cluster_strerror(b)) != 0, "strerror(%d) == strerror(%d)", a, b);
}

static void in_a_running_cluster(void) {
    cluster_config *cfg = cluster_config_new();
    CHECK(cfg != NULL, "config");
    OK(cluster_config_set_mode(cfg, CLUSTER_MODE_FORK));
    OK(cluster_config_set_workers(cfg, 1));
    OK(cluster_config_set_worker_main(cfg, worker_main, NULL));
    OK(cluster_config_set_signals(cfg, false));
    OK(cluster_primary_start(cfg, on_primary, NULL));
    /* A second start, while running, and with the same config. */
    EXPECT_FRESH(cluster_primary_start(cfg, on_primary, NULL), CLUSTER_E_STATE);
    cluster_config_free(cfg);

    dispatch_until(&ready, 20000, "worker 1 READY");
    forked_copy_is_refused("primary");
    CHECK(in_cb_checked, "the callback ran its checks");
    if (in_cb_dispatch_rc != CLUSTER_E_STATE)
        FAIL("cluster_dispatch inside the callback returned %d, expected CLUSTER_E_STATE", in_cb_dispatch_rc);
    CHECK(in_cb_dispatch_err[0] != '\0', "cluster_dispatch inside the callback left no sentence of its own");
    if (in_cb_run_rc != CLUSTER_E_STATE)
        FAIL("cluster_run inside the callback returned %d, expected CLUSTER_E_STATE", in_cb_run_rc);
    CHECK(in_cb_run_err[0] != '\0', "cluster_run inside the callback left no sentence of its own");

    dispatch_until(&done, 20000, "the worker's reports");
    for (int i = 0; i < NEXPECT; i++) CHECK(worker_seen[i], "the worker reported '%s'", worker_expect[i].name);

    /* Unknown worker ids. */
    struct cluster_worker_info info;
    EXPECT_FRESH(cluster_worker_info(999, &info), CLUSTER_E_NOWORKER);
    EXPECT_FRESH(cluster_worker_kill(999, SIGTERM), CLUSTER_E_NOWORKER);
    EXPECT_FRESH(cluster_worker_kill(999, 0), CLUSTER_E_NOWORKER);
    EXPECT_FRESH(cluster_worker_disconnect(999), CLUSTER_E_NOWORKER);
    EXPECT_FRESH(cluster_send(999, (const uint8_t *)"x", 1), CLUSTER_E_NOWORKER);
    /* Bad arguments. */
    EXPECT_FRESH(cluster_send(0, (const uint8_t *)"x", 1), CLUSTER_E_INVAL);
    EXPECT_FRESH(cluster_send(1, NULL, 5), CLUSTER_E_INVAL);
    EXPECT_FRESH(cluster_send_fd(1, (const uint8_t *)"x", 1, -1), CLUSTER_E_INVAL);
    EXPECT_FRESH(cluster_worker_kill(1, 1000), CLUSTER_E_INVAL);
    EXPECT_FRESH(cluster_worker_kill(1, -1), CLUSTER_E_INVAL);
    EXPECT_FRESH(cluster_local_port(7), CLUSTER_E_INVAL); /* no listener at all */
    const char *bad_env[] = {"NOEQUALS"}, *internal_env[] = {"RCLUSTER_WORKER_ID=9"}, *null_env[] = {NULL};
    EXPECT_FRESH(cluster_fork_env(bad_env, 1), CLUSTER_E_INVAL);
    EXPECT_FRESH(cluster_fork_env(internal_env, 1), CLUSTER_E_INVAL);
    EXPECT_FRESH(cluster_fork_env(null_env, 1), CLUSTER_E_INVAL);
    EXPECT_FRESH(cluster_fork_env(NULL, 2), CLUSTER_E_INVAL);
    EXPECT_FRESH(cluster_listen_tcp(NULL, 80), CLUSTER_E_INVAL);
    EXPECT_FRESH(cluster_listen_unix(""), CLUSTER_E_INVAL);
    EXPECT_FRESH(cluster_unlisten(0), CLUSTER_E_ROLE);
    EXPECT_FRESH(cluster_scale(100000), CLUSTER_E_INVAL);
    EXPECT_FRESH(cluster_workers(NULL, 5), CLUSTER_E_INVAL);
    EXPECT_FRESH(cluster_worker_info(1, NULL), CLUSTER_E_INVAL);
    /* Worker-only calls in a running primary. */
    EXPECT_FRESH(cluster_worker_start(on_primary, NULL), CLUSTER_E_ROLE);
    EXPECT_FRESH(cluster_ready(), CLUSTER_E_ROLE);

    /* None of that hurt the cluster: worker 1 is still there and ready. */
    CHECK(OK(cluster_worker_kill(1, 0)) == 0, "signal 0 only checks");
    OK(cluster_worker_info(1, &info));
    CHECK(info.id == 1 && info.pid == worker_pid && info.state == CLUSTER_WORKER_READY, "worker 1 ready (state %u)", info.state);
    CHECK(OK(cluster_workers(NULL, 0)) == 1, "one worker");
    CHECK(OK(cluster_fd()) >= 0, "a loop fd");
    CHECK(exits == 0, "no exit yet");

    stopping = 1;
    OK(cluster_shutdown(5000));
    CHECK(cluster_run() == 0, "run returns 0 after a graceful stop");
    CHECK(exits == 1 && clean_exits == 1, "%d exit(s), %d clean", exits, clean_exits);
    CHECK(pid_gone(worker_pid), "worker 1 (pid %d) is gone", worker_pid);
    /* After the end. */
    EXPECT_FRESH(cluster_dispatch(0), CLUSTER_E_CLOSED);
    EXPECT_FRESH(cluster_set_batch_handler(no_batch, NULL), CLUSTER_E_CLOSED);
    CHECK(cluster_run() == 0, "cluster_run on a finished runtime returns at once, 0");
    EXPECT_FRESH(cluster_send(1, (const uint8_t *)"x", 1), CLUSTER_E_CLOSED);
    EXPECT_FRESH(cluster_worker_info(1, &info), CLUSTER_E_CLOSED);
    EXPECT_FRESH(cluster_workers(NULL, 0), CLUSTER_E_CLOSED);
    EXPECT_FRESH(cluster_worker_kill(1, 0), CLUSTER_E_CLOSED);
    EXPECT_FRESH(cluster_ready(), CLUSTER_E_ROLE);
    CHECK(OK(cluster_fd()) >= 0, "the loop fd stays valid after the end");
    /* Like every other primary call after the end: closed, not "not started". */
    EXPECT_FRESH(cluster_fork(), CLUSTER_E_CLOSED);
    EXPECT_FRESH(cluster_scale(2), CLUSTER_E_CLOSED);
}

int main(void) {
    test_deadline(60);
    CHECK(cluster_is_primary(), "a plain process is the primary");
    before_any_start();
    null_and_bad_arguments();
    port_in_use();
    strerror_for_every_code();
    in_a_running_cluster();
    cluster_config_free(marker_cfg);
    printf("misuse: ok\n");
    return 0;
}
