/* Stale fd and pid numbers: rcluster never acts on a number that may have become someone
 * else's.
 *
 *   stale_fds worker-retry     an EXEC worker whose first cluster_worker_start fails (out of
 *                              fds) retries: the retry runs on its real channel, and a file
 *                              the host opened meanwhile is left alone
 *   stale_fds systemd finished a config with cluster_config_listen_systemd, reused after a
 *   stale_fds systemd failed   start that finished (or failed after taking fd 3), is refused
 *                              with CLUSTER_E_STATE and the host's new fd 3 stays open
 *   stale_fds kill-after-reap  a worker reaped by someone else, its pid given to another
 *                              process (ns_last_pid; skipped where it cannot be written):
 *                              cluster_worker_kill reports it gone and signals nobody */
#include "harness.h"
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>

/* ---- worker side ---- */

static void on_worker(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind == CLUSTER_EVENT_MESSAGE && ev->len == 4 && memcmp(ev->data, "ping", 4) == 0)
        OK(cluster_send(0, (const uint8_t *)"pong", 4));
}

static int worker_main(void *ud) {
    OK(cluster_worker_start(on_worker, ud));
    return cluster_run() == 0 ? 0 : 3;
}

/* EXEC worker of worker-retry: the first start fails for want of fds. */
static int retrying_worker(void) {
    struct rlimit old, low;
    CHECK(getrlimit(RLIMIT_NOFILE, &old) == 0, "getrlimit");
    low = old;
    low.rlim_cur = 64;
    CHECK(setrlimit(RLIMIT_NOFILE, &low) == 0, "setrlimit");
    int fillers[64], n = 0;
    for (int fd; n < 64 && (fd = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0;) fillers[n++] = fd;
    CHECK(errno == EMFILE && n > 0, "filled the fd table (%d fds)", n);
    close(fillers[--n]); /* one free fd: the start gets past its first dup, not much further */
    int32_t rc = cluster_worker_start(on_worker, NULL);
    CHECK(rc < 0, "the start without a free fd failed (%d)", rc);
    for (int i = 0; i < n; i++) close(fillers[i]);
    CHECK(setrlimit(RLIMIT_NOFILE, &old) == 0, "setrlimit");
    /* If the failed start closed the channel, the host's next file gets its number. */
    const char *chan_s = getenv("RCLUSTER_CHANNEL_FD");
    CHECK(chan_s != NULL, "RCLUSTER_CHANNEL_FD is set");
    int chan = atoi(chan_s), host_fd = -1;
    if (fcntl(chan, F_GETFD) < 0) {
        fprintf(stderr, "the failed start closed the channel (fd %d)\n", chan);
        int f = open("/dev/null", O_RDONLY | O_CLOEXEC);
        CHECK(f >= 0 && dup2(f, chan) == chan, "the host takes fd %d", chan);
        close(f);
        host_fd = chan;
    }
    OK(cluster_worker_start(on_worker, NULL));
    if (host_fd >= 0) CHECK(fcntl(host_fd, F_GETFD) >= 0, "the host's fd %d is still open", host_fd);
    return cluster_run() == 0 ? 0 : 3;
}

/* ---- primary side ---- */

static volatile int ready, pongs, exits, bad_exits;

static void on_primary(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind == CLUSTER_EVENT_READY) ready++;
    if (ev->kind == CLUSTER_EVENT_MESSAGE && ev->len == 4 && memcmp(ev->data, "pong", 4) == 0) pongs++;
    if (ev->kind == CLUSTER_EVENT_EXIT) {
        exits++;
        if (!ev->exited_after_disconnect) {
            fprintf(stderr, "worker %u exited: code %d signal %d\n", ev->worker_id, ev->exit_code, ev->signal);
            bad_exits++;
        }
    }
}

static cluster_config *config(cluster_mode mode) {
    cluster_config *cfg = cluster_config_new();
    CHECK(cfg != NULL, "cluster_config_new");
    OK(cluster_config_set_workers(cfg, 1));
    OK(cluster_config_set_mode(cfg, mode));
    OK(cluster_config_set_worker_main(cfg, worker_main, NULL));
    OK(cluster_config_set_signals(cfg, false));
    return cfg;
}

static void wait_ready_and_ping(void) {
    long long end = now_ms() + 20000;
    while (!ready) {
        CHECK(now_ms() < end, "the worker became READY");
        CHECK(bad_exits == 0, "the worker did not die");
        OK(cluster_dispatch(50));
    }
    uint32_t id;
    CHECK(OK(cluster_workers(&id, 1)) == 1, "one worker");
    OK(cluster_send(id, (const uint8_t *)"ping", 4));
    end = now_ms() + 10000;
    while (!pongs) {
        CHECK(now_ms() < end, "the worker answered");
        OK(cluster_dispatch(50));
    }
}

static void stop(void) {
    OK(cluster_shutdown(5000));
    CHECK(cluster_run() == 0, "cluster_run ends with 0");
    CHECK(bad_exits == 0, "every worker stopped as asked");
}

static void worker_retry(void) {
    cluster_config *cfg = config(CLUSTER_MODE_EXEC);
    OK(cluster_primary_start(cfg, on_primary, NULL));
    cluster_config_free(cfg);
    wait_ready_and_ping();
    stop();
}

/* A listening socket at fd 3, announced as systemd does. */
static void pass_socket_as_systemd(void) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(s >= 0, "socket");
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    CHECK(bind(s, (struct sockaddr *)&a, sizeof a) == 0 && listen(s, 16) == 0, "bind/listen");
    if (s != 3) {
        CHECK(dup2(s, 3) == 3, "dup2 to fd 3");
        close(s);
    }
    char pid[32];
    snprintf(pid, sizeof pid, "%d", (int)getpid());
    setenv("LISTEN_PID", pid, 1);
    setenv("LISTEN_FDS", "1", 1);
}

static void systemd(const char *how) {
    pass_socket_as_systemd();
    cluster_config *cfg = config(CLUSTER_MODE_FORK);
    CHECK(OK(cluster_config_listen_systemd(cfg)) == 1, "one passed socket");
    int busy = -1;
    if (!strcmp(how, "failed")) {
        /* A second listener that cannot bind: the start fails after taking fd 3. */
        busy = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t len = sizeof a;
        CHECK(bind(busy, (struct sockaddr *)&a, sizeof a) == 0 && listen(busy, 1) == 0, "busy listener");
        CHECK(getsockname(busy, (struct sockaddr *)&a, &len) == 0, "getsockname");
        OK(cluster_config_listen_tcp(cfg, "127.0.0.1", ntohs(a.sin_port)));
        CHECK(cluster_primary_start(cfg, on_primary, NULL) < 0, "the start fails (address in use)");
    } else {
        OK(cluster_primary_start(cfg, on_primary, NULL));
        wait_ready_and_ping();
        stop();
    }
    CHECK(fcntl(3, F_GETFD) < 0, "the primary closed the passed socket when its start ended");
    /* The host's next file takes fd 3. */
    int f = open("/dev/null", O_RDONLY | O_CLOEXEC);
    CHECK(f >= 0, "open");
    if (f != 3) {
        CHECK(dup2(f, 3) == 3, "dup2 to fd 3");
        close(f);
    }
    struct stat before, after;
    CHECK(fstat(3, &before) == 0, "fstat");
    EXPECT_ERR(cluster_primary_start(cfg, on_primary, NULL), CLUSTER_E_STATE);
    fprintf(stderr, "refused: %s\n", cluster_last_error());
    cluster_config *again = config(CLUSTER_MODE_FORK);
    EXPECT_ERR(cluster_config_listen_systemd(again), CLUSTER_E_STATE);
    cluster_config_free(again);
    CHECK(fstat(3, &after) == 0 && after.st_ino == before.st_ino && after.st_dev == before.st_dev,
          "the host's fd 3 is still its file");
    cluster_config_free(cfg);
    close(3);
    if (busy >= 0) close(busy);
}

/* Gives `pid` to a new child (it sleeps); returns the child's pid, or -1 if the pid could not
 * be had (no permission to write ns_last_pid, or another process took it each time). */
static pid_t child_with_pid(pid_t pid) {
    for (int attempt = 0; attempt < 50; attempt++) {
        int f = open("/proc/sys/kernel/ns_last_pid", O_WRONLY | O_CLOEXEC);
        if (f < 0) return -1;
        char buf[32];
        int n = snprintf(buf, sizeof buf, "%d", (int)pid - 1);
        ssize_t w = write(f, buf, (size_t)n);
        close(f);
        if (w != n) return -1;
        pid_t c = fork();
        CHECK(c >= 0, "fork");
        if (c == 0) {
            sleep(30);
            _exit(0);
        }
        if (c == pid) return c;
        kill(c, SIGKILL);
        waitpid(c, NULL, 0);
    }
    return -1;
}

static void kill_after_reap(void) {
    cluster_config *cfg = config(CLUSTER_MODE_FORK);
    OK(cluster_primary_start(cfg, on_primary, NULL));
    cluster_config_free(cfg);
    wait_ready_and_ping();
    uint32_t id;
    CHECK(OK(cluster_workers(&id, 1)) == 1, "one worker");
    struct cluster_worker_info info;
    OK(cluster_worker_info(id, &info));
    pid_t old = info.pid;
    /* The host reaps the worker itself (a waitpid of its own), before the primary looks. */
    CHECK(kill(old, SIGKILL) == 0, "kill the worker");
    CHECK(waitpid(old, NULL, 0) == old, "the host reaps it");
    pid_t other = child_with_pid(old);
    if (other < 0) {
        printf("stale_fds kill-after-reap: skipped (pid %d could not be handed to another process)\n", (int)old);
    } else {
        int32_t rc = cluster_worker_kill(id, SIGTERM);
        CHECK(rc == CLUSTER_E_NOWORKER, "cluster_worker_kill of a reaped worker returned %d", rc);
        usleep(100000);
        CHECK(waitpid(other, NULL, WNOHANG) == 0, "the process that now has pid %d was not signalled", (int)old);
        kill(other, SIGKILL);
        CHECK(waitpid(other, NULL, 0) == other, "reap it");
    }
    /* The primary notices the loss (its exit status is lost: someone else reaped it). */
    dispatch_until(&exits, 10000, "the EXIT of the reaped worker");
    bad_exits = 0;
    stop();
}

int main(int argc, char **argv) {
    if (cluster_is_worker()) return argc >= 2 && !strcmp(argv[1], "worker-retry") ? retrying_worker() : worker_main(NULL);
    test_deadline(90);
    CHECK(argc >= 2, "usage: stale_fds worker-retry | systemd finished|failed | kill-after-reap");
    if (!strcmp(argv[1], "worker-retry")) worker_retry();
    else if (!strcmp(argv[1], "systemd") && argc == 3) systemd(argv[2]);
    else if (!strcmp(argv[1], "kill-after-reap")) kill_after_reap();
    else FAIL("unknown mode %s", argv[1]);
    printf("stale_fds %s: ok\n", argv[1]);
    return 0;
}
