/* The primary's own RLIMIT_NOFILE.
 *   primary_fds table   a primary whose soft limit is 64 fds, with 4 workers whose windows
 *                       (64 each) are far larger: 3 clients with 64 connections open at a time
 *                       each, 1920 in all. The primary must accept only what its fd table has
 *                       room for: no accept ever fails for want of fds (the 100 ms pause is
 *                       never taken: "accept_pauses" 0 in cluster_stats), nothing is dropped,
 *                       and every connection is answered.
 *   primary_fds inflight
 *                       fds in flight count against the sender's user, up to its RLIMIT_NOFILE
 *                       (past it, sendmsg fails with ETOOMANYREFS). The test runs as an
 *                       unprivileged user (nobody, when started as root) with a soft limit of
 *                       256; another process of that user holds 264 fds in flight that nobody
 *                       receives, so every handoff of the primary fails with ETOOMANYREFS until
 *                       that process lets go, 500 ms into a burst of 960 connections. Those
 *                       failures are transient: the connections wait (send_retries > 0 in
 *                       cluster_stats), no channel is given up (no DISCONNECT, EXIT or ERROR),
 *                       nothing is dropped, and every connection is answered.
 * The primary's loop runs in the test process; clients run in forked children. */
#include "harness.h"
#include <fcntl.h>
#include <grp.h>
#include <sys/resource.h>

#define WORKERS 4
#define CLIENTS 3
#define CONNS_PER_CLIENT 640

/* Workers and clients get their fds back (the soft limit up to the hard one): only the
 * primary is short. */
static void raise_fd_limit(void) {
    struct rlimit rl;
    CHECK(getrlimit(RLIMIT_NOFILE, &rl) == 0, "getrlimit: %s", strerror(errno));
    rl.rlim_cur = rl.rlim_max;
    CHECK(setrlimit(RLIMIT_NOFILE, &rl) == 0, "setrlimit: %s", strerror(errno));
}

static void on_worker(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind == CLUSTER_EVENT_CONNECTION) answer_line(ev->fd);
}

static int worker_main(void *ud) {
    raise_fd_limit();
    OK(cluster_worker_start(on_worker, ud));
    return cluster_run() == 0 ? 0 : 3;
}

static volatile int ready, disconnects, exits, errors;
static void on_primary(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind == CLUSTER_EVENT_READY) ready++;
    if (ev->kind == CLUSTER_EVENT_DISCONNECT) disconnects++;
    if (ev->kind == CLUSTER_EVENT_EXIT) exits++;
    if (ev->kind == CLUSTER_EVENT_ERROR) errors++;
    if (ev->kind == CLUSTER_EVENT_ERROR)
        fprintf(stderr, "ERROR event (worker %u): %.*s\n", ev->worker_id, (int)ev->len, (const char *)ev->data);
}

static int case_table(void) {
    struct rlimit rl;
    CHECK(getrlimit(RLIMIT_NOFILE, &rl) == 0, "getrlimit");
    rl.rlim_cur = 64;
    CHECK(setrlimit(RLIMIT_NOFILE, &rl) == 0, "setrlimit 64: %s", strerror(errno));
    int port = start_rr_cluster(WORKERS, worker_main, on_primary);
    dispatch_until(&ready, 20000, "a READY worker");
    { long long end = now_ms() + 20000; while (ready < WORKERS) { CHECK(now_ms() < end, "workers READY"); cluster_dispatch(50); } }
    printf("primary_fds table: primary holds %d fds of 64 with %d workers READY\n", count_fds(0) - 1, WORKERS);

    pid_t clients[CLIENTS];
    long long t0 = now_ms();
    for (int i = 0; i < CLIENTS; i++) {
        clients[i] = fork_client((const int[]){-1});
        if (clients[i] == 0) {
            raise_fd_limit();
            answered_clients(port, CONNS_PER_CLIENT, 64, 100);
        }
    }
    for (int i = 0; i < CLIENTS; i++) {
        int status = dispatch_until_exit(clients[i], 90000, "a client's connections");
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "client %d: not every connection was answered (0x%x)", i,
              status);
    }
    long pauses = total_stat("accept_pauses"), dropped = total_stat("dropped");
    printf("primary_fds table: %d connections answered in %lld ms; accept pauses %ld, dropped %ld\n",
           CLIENTS * CONNS_PER_CLIENT, now_ms() - t0, pauses, dropped);
    CHECK(pauses == 0, "the primary ran out of fds and paused accepting %ld times", pauses);
    CHECK(dropped == 0, "%ld connections dropped", dropped);
    OK(cluster_shutdown(10000));
    CHECK(cluster_run() == 0, "graceful stop");
    return 0;
}

#define INFLIGHT_LIMIT 256
#define HELD_IN_FLIGHT 264
#define INFLIGHT_CONNS 320

/* Root passes any fd-in-flight limit (CAP_SYS_RESOURCE): run as nobody then. */
static void become_unprivileged(void) {
    if (geteuid() != 0) return;
    CHECK(setgroups(0, NULL) == 0 && setgid(65534) == 0 && setuid(65534) == 0, "drop to nobody: %s",
          strerror(errno));
    prctl(PR_SET_DUMPABLE, 1); /* LeakSanitizer needs it at exit */
}

/* Another process of this user: puts HELD_IN_FLIGHT fds in flight on a socketpair nobody
 * reads, says so on `report`, and lets go (exits) when `release` reaches EOF. */
static void hold_in_flight(int release, int report) {
    raise_fd_limit();
    int sv[2], pfd[2];
    CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0 && pipe2(pfd, O_CLOEXEC) == 0, "%s",
          strerror(errno));
    for (int held = 0; held < HELD_IN_FLIGHT; held += 8) {
        union {
            char buf[CMSG_SPACE(8 * sizeof(int))];
            struct cmsghdr align;
        } u;
        memset(&u, 0, sizeof u);
        char c = 'x';
        struct iovec iov = {.iov_base = &c, .iov_len = 1};
        struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof u.buf};
        struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(8 * sizeof(int));
        int fds[8] = {pfd[0], pfd[0], pfd[0], pfd[0], pfd[0], pfd[0], pfd[0], pfd[0]};
        memcpy(CMSG_DATA(cm), fds, sizeof fds);
        CHECK(sendmsg(sv[0], &m, MSG_DONTWAIT) == 1, "holding %d fds in flight: %s", held, strerror(errno));
    }
    CHECK(write(report, "h", 1) == 1, "report");
    char b;
    while (read(release, &b, 1) > 0) {
    }
    _exit(0);
}

static int case_inflight(void) {
    become_unprivileged();
    struct rlimit rl;
    CHECK(getrlimit(RLIMIT_NOFILE, &rl) == 0, "getrlimit");
    rl.rlim_cur = INFLIGHT_LIMIT;
    CHECK(setrlimit(RLIMIT_NOFILE, &rl) == 0, "setrlimit %d: %s", INFLIGHT_LIMIT, strerror(errno));
    int port = start_rr_cluster(WORKERS, worker_main, on_primary);
    { long long end = now_ms() + 20000; while (ready < WORKERS) { CHECK(now_ms() < end, "workers READY"); cluster_dispatch(50); } }

    int release[2], report[2];
    CHECK(pipe2(release, O_CLOEXEC) == 0 && pipe2(report, O_CLOEXEC) == 0, "pipe");
    pid_t holder = fork_client((const int[]){release[0], report[1], -1});
    if (holder == 0) {
        close(release[1]);
        hold_in_flight(release[0], report[1]);
    }
    close(release[0]);
    close(report[1]);
    char b;
    CHECK(read(report[0], &b, 1) == 1, "the holder reported its fds in flight");
    close(report[0]);

    pid_t clients[CLIENTS];
    long long t0 = now_ms();
    for (int i = 0; i < CLIENTS; i++) {
        clients[i] = fork_client((const int[]){-1});
        if (clients[i] == 0) {
            raise_fd_limit();
            answered_clients(port, INFLIGHT_CONNS, 64, 100);
        }
    }
    while (now_ms() - t0 < 500) CHECK(cluster_dispatch(10) >= 0, "dispatch");
    long retries_held = total_stat("send_retries");
    close(release[1]);
    int status = dispatch_until_exit(holder, 10000, "the holder to let go");
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the holder (0x%x)", status);
    for (int i = 0; i < CLIENTS; i++) {
        status = dispatch_until_exit(clients[i], 90000, "a client's connections");
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "client %d: not every connection was answered (0x%x)", i,
              status);
    }
    long retries = total_stat("send_retries"), dropped = total_stat("dropped");
    printf("primary_fds inflight: %d connections answered in %lld ms; send retries %ld while the fds were held, "
           "%ld in all; dropped %ld; DISCONNECT %d EXIT %d ERROR %d\n",
           CLIENTS * INFLIGHT_CONNS, now_ms() - t0, retries_held, retries, dropped, disconnects, exits, errors);
    CHECK(retries_held > 0, "no handoff failed while %d fds were in flight: the test did not test", HELD_IN_FLIGHT);
    CHECK(disconnects == 0 && exits == 0 && errors == 0, "a worker was given up: DISCONNECT %d EXIT %d ERROR %d",
          disconnects, exits, errors);
    CHECK(dropped == 0, "%ld connections dropped", dropped);
    OK(cluster_shutdown(10000));
    CHECK(cluster_run() == 0, "graceful stop");
    return 0;
}

int main(int argc, char **argv) {
    test_deadline(120);
    setvbuf(stdout, NULL, _IONBF, 0);
    if (getenv("RCLUSTER_LOG")) cluster_log_init();
    const char *c = argc > 1 ? argv[1] : "";
    if (strcmp(c, "table") == 0) return case_table();
    if (strcmp(c, "inflight") == 0) return case_inflight();
    fprintf(stderr, "usage: %s table|inflight\n", argv[0]);
    return 2;
}
