/* The balancing policies the primary applies when it accepts itself, seen from the clients:
 *   policies round_robin   8 workers, 10,000 connections (16 in flight): an even spread
 *   policies sticky        4 workers, 24 client addresses: each address stays on one worker
 *   policies least         4 workers holding their connections: the idle worker gets the new
 *                          ones (cluster_conn_done), equal loads spread
 * The primary's loop runs in this process, so the clients run in a forked child. */
#include "harness.h"
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>

#define MAX_WORKERS 8

/* ---------------------------------------------------------------- worker side ---- */

/* ROUND_ROBIN and STICKY: read the client's line, answer "worker N", close. */
static void on_worker_serve(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind == CLUSTER_EVENT_CONNECTION) answer_line(ev->fd);
}

/* LEAST_CONNECTIONS: answer at once but keep every connection open until "release". */
static int held[256];
static int nheld;

static int release_all(void) {
    int k = nheld;
    for (int i = 0; i < nheld; i++) {
        close(held[i]);
        OK(cluster_conn_done());
    }
    nheld = 0;
    return k;
}

static void on_worker_hold(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind == CLUSTER_EVENT_CONNECTION) {
        CHECK(nheld < (int)(sizeof held / sizeof held[0]), "too many held connections");
        char resp[64];
        int n = snprintf(resp, sizeof resp, "worker %u\n", cluster_worker_id());
        ssize_t w = write(ev->fd, resp, (size_t)n);
        (void)w;
        held[nheld++] = ev->fd;
    } else if (ev->kind == CLUSTER_EVENT_MESSAGE && ev->worker_id == 0) {
        if (ev->len == 7 && memcmp(ev->data, "release", 7) == 0) {
            char msg[64];
            int n = snprintf(msg, sizeof msg, "released %d", release_all());
            OK(cluster_send(0, (const uint8_t *)msg, (size_t)n));
        }
    } else if (ev->kind == CLUSTER_EVENT_SHUTDOWN) {
        release_all();
    }
}

/* The worker callback of the current case (set before the workers are forked). */
static cluster_event_cb worker_cb;

static int worker_main(void *ud) {
    OK(cluster_worker_start(worker_cb, ud));
    return cluster_run() == 0 ? 0 : 3;
}

/* ---------------------------------------------------------------- primary side ---- */

static int nworkers;
static pid_t pids[MAX_WORKERS + 1];
static volatile int ready, exits, bad_exits;
static volatile int got_msg;
static char msg_text[256];
static uint32_t msg_from;

static void on_primary(void *ud, const cluster_event *ev) {
    (void)ud;
    switch (ev->kind) {
    case CLUSTER_EVENT_FORK:
        CHECK(ev->worker_id >= 1 && ev->worker_id <= (uint32_t)nworkers && ev->pid > 0, "FORK event: worker %u pid %d",
              ev->worker_id, ev->pid);
        pids[ev->worker_id] = ev->pid;
        break;
    case CLUSTER_EVENT_READY:
        ready++;
        break;
    case CLUSTER_EVENT_EXIT:
        exits++;
        if (ev->exit_code != 0 || ev->signal != 0) {
            fprintf(stderr, "worker %u (pid %d) ended with code %d signal %d\n", ev->worker_id, ev->pid, ev->exit_code,
                    ev->signal);
            bad_exits++;
        }
        break;
    case CLUSTER_EVENT_MESSAGE: {
        size_t n = ev->len < sizeof msg_text - 1 ? ev->len : sizeof msg_text - 1;
        memcpy(msg_text, ev->data, n);
        msg_text[n] = '\0';
        msg_from = ev->worker_id;
        got_msg++;
        break;
    }
    case CLUSTER_EVENT_ERROR:
        fprintf(stderr, "ERROR event (worker %u): %.*s\n", ev->worker_id, (int)ev->len, (const char *)ev->data);
        break;
    default:
        break;
    }
}

/* Starts the cluster on 127.0.0.1:0 and waits for every worker's READY; returns the port. */
static int start_cluster(int n, cluster_policy policy, cluster_event_cb cb) {
    nworkers = n;
    worker_cb = cb;
    cluster_config *cfg = cluster_config_new();
    CHECK(cfg != NULL, "cluster_config_new");
    OK(cluster_config_set_workers(cfg, (uint32_t)n));
    OK(cluster_config_set_policy(cfg, policy));
    OK(cluster_config_set_worker_main(cfg, worker_main, NULL));
    OK(cluster_config_set_signals(cfg, false));
    CHECK(OK(cluster_config_listen_tcp(cfg, "127.0.0.1", 0)) == 0, "first listener is index 0");
    OK(cluster_primary_start(cfg, on_primary, NULL));
    cluster_config_free(cfg);
    int port = OK(cluster_local_port(0));
    CHECK(port > 0, "a real port");
    long long end = now_ms() + 20000;
    while (ready < n) {
        if (now_ms() > end) FAIL("timed out after 20000 ms: %d of %d workers ready", ready, n);
        cluster_dispatch(50);
    }
    for (int id = 1; id <= n; id++) CHECK(pids[id] > 0, "FORK event for worker %d", id);
    return port;
}

static uint64_t acked(uint32_t id) {
    struct cluster_worker_info info;
    OK(cluster_worker_info(id, &info));
    return info.connections;
}

static uint64_t acked_sum(void) {
    uint64_t s = 0;
    for (int id = 1; id <= nworkers; id++) s += acked((uint32_t)id);
    return s;
}

/* Dispatches until the workers acknowledged `want` connections in all (ACKs may still be in
 * flight when the client is done); fails after timeout_ms. */
static void wait_acked(uint64_t want, int timeout_ms) {
    long long end = now_ms() + timeout_ms;
    uint64_t s;
    while ((s = acked_sum()) < want) {
        if (now_ms() > end) FAIL("timed out after %d ms: %llu of %llu connections acknowledged", timeout_ms,
                                 (unsigned long long)s, (unsigned long long)want);
        cluster_dispatch(50);
    }
    CHECK(s == want, "workers acknowledged %llu connections, the clients made %llu", (unsigned long long)s,
          (unsigned long long)want);
}

/* Graceful stop; every worker exits cleanly and leaves no process. */
static void finish(void) {
    OK(cluster_shutdown(10000));
    CHECK(cluster_run() == 0, "graceful stop");
    CHECK(exits == nworkers, "%d EXIT events for %d workers", exits, nworkers);
    CHECK(bad_exits == 0, "%d workers did not exit cleanly", bad_exits);
    for (int id = 1; id <= nworkers; id++) CHECK(pid_gone(pids[id]), "worker %d (pid %d) is gone", id, pids[id]);
}

static void check_client_status(int status, const char *what) {
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s failed: %s %d (its message is above)", what,
          WIFEXITED(status) ? "exit code" : "signal", WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
}

/* ---------------------------------------------------------------- client helpers ---- */

/* Reads into buf until EOF (line == 0) or the first '\n' (line == 1), within timeout_ms.
 * NUL-terminates. Returns the length; -1 on error, -2 on timeout. */
static ssize_t read_line_or_eof(int fd, char *buf, size_t cap, int line, int timeout_ms) {
    long long end = now_ms() + timeout_ms;
    size_t n = 0;
    buf[0] = '\0';
    while (n + 1 < cap) {
        long long left = end - now_ms();
        if (left <= 0) return -2;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int pr = poll(&p, 1, (int)left);
        if (pr < 0 && errno == EINTR) continue;
        if (pr < 0) return -1;
        if (pr == 0) return -2;
        ssize_t r = read(fd, buf + n, cap - 1 - n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return -1;
        if (r == 0) break;
        n += (size_t)r;
        buf[n] = '\0';
        if (line && memchr(buf, '\n', n)) break;
    }
    buf[n] = '\0';
    return (ssize_t)n;
}

/* "worker N" -> N, or -1. */
static int parse_worker(const char *buf) {
    unsigned w;
    if (sscanf(buf, "worker %u", &w) != 1) return -1;
    return (int)w;
}

/* Writes one line to a pipe (the client's report). */
static void report(int fd, const char *line) {
    size_t len = strlen(line);
    CHECK(write(fd, line, len) == (ssize_t)len, "client: report to the primary: %s", strerror(errno));
}

/* ---------------------------------------------------------------- round_robin ---- */

#define RR_WORKERS 8
#define RR_CONNS 10000
#define RR_INFLIGHT 16

struct rr_slot {
    int fd;
    size_t n;
    char buf[64];
};

static void rr_client(int port, int out) {
    struct rr_slot slots[RR_INFLIGHT];
    struct pollfd pfds[RR_INFLIGHT];
    int counts[RR_WORKERS + 1] = {0};
    int started = 0, done = 0;
    for (int i = 0; i < RR_INFLIGHT; i++) slots[i].fd = -1;
    long long t0 = now_ms();
    while (done < RR_CONNS) {
        for (int i = 0; i < RR_INFLIGHT; i++) {
            if (slots[i].fd >= 0 || started >= RR_CONNS) continue;
            int fd = tcp_connect("127.0.0.1", port);
            CHECK(fd >= 0, "client: connect #%d: %s", started, strerror(errno));
            CHECK(write(fd, "hello\n", 6) == 6, "client: write #%d: %s", started, strerror(errno));
            slots[i].fd = fd;
            slots[i].n = 0;
            started++;
        }
        int np = 0;
        int idx[RR_INFLIGHT];
        for (int i = 0; i < RR_INFLIGHT; i++) {
            if (slots[i].fd < 0) continue;
            pfds[np] = (struct pollfd){.fd = slots[i].fd, .events = POLLIN};
            idx[np++] = i;
        }
        int pr = poll(pfds, (nfds_t)np, 10000);
        if (pr < 0 && errno == EINTR) continue;
        CHECK(pr >= 0, "client: poll: %s", strerror(errno));
        CHECK(pr > 0, "client: no answer for 10 s with %d connections in flight (%d of %d answered)", np, done,
              RR_CONNS);
        for (int k = 0; k < np; k++) {
            if (!pfds[k].revents) continue;
            struct rr_slot *s = &slots[idx[k]];
            ssize_t r = read(s->fd, s->buf + s->n, sizeof s->buf - 1 - s->n);
            if (r < 0 && errno == EINTR) continue;
            CHECK(r >= 0, "client: read: %s (%d answered)", strerror(errno), done);
            if (r > 0) {
                s->n += (size_t)r;
                CHECK(s->n < sizeof s->buf - 1, "client: answer too long");
                continue;
            }
            s->buf[s->n] = '\0'; /* EOF: the answer is complete */
            int w = parse_worker(s->buf);
            CHECK(w >= 1 && w <= RR_WORKERS, "client: answer '%s' (connection %d)", s->buf, done);
            counts[w]++;
            close(s->fd);
            s->fd = -1;
            done++;
        }
    }
    long long elapsed = now_ms() - t0;
    int total = 0, min = RR_CONNS, max = 0;
    char line[256];
    int len = snprintf(line, sizeof line, "%lld ms:", elapsed);
    for (int w = 1; w <= RR_WORKERS; w++) {
        total += counts[w];
        if (counts[w] < min) min = counts[w];
        if (counts[w] > max) max = counts[w];
        len += snprintf(line + len, sizeof line - (size_t)len, " %d", counts[w]);
    }
    snprintf(line + len, sizeof line - (size_t)len, "\n");
    report(out, line);
    CHECK(total == RR_CONNS, "client: %d of %d connections answered", total, RR_CONNS);
    CHECK(min > 0 && (double)max / (double)min <= 1.05, "client: uneven round-robin: max %d min %d (%s)", max, min,
          line);
}

static void test_round_robin(void) {
    int port = start_cluster(RR_WORKERS, CLUSTER_POLICY_ROUND_ROBIN, on_worker_serve);
    int p[2];
    CHECK(pipe2(p, O_CLOEXEC) == 0, "pipe");
    int keep[] = {p[1], -1};
    pid_t client = fork_client(keep);
    if (client == 0) {
        rr_client(port, p[1]);
        _exit(0);
    }
    close(p[1]);
    int status = dispatch_until_exit(client, 80000, "the round-robin client");
    char line[256];
    ssize_t n = read_bounded(p[0], line, sizeof line, 1000);
    close(p[0]);
    if (n > 0) printf("round_robin: client in %s", line);
    check_client_status(status, "the round-robin client");
    CHECK(n > 0, "the client reported its counts");
    wait_acked(RR_CONNS, 5000);
    uint64_t min = UINT64_MAX, max = 0;
    for (int id = 1; id <= RR_WORKERS; id++) {
        uint64_t c = acked((uint32_t)id);
        if (c < min) min = c;
        if (c > max) max = c;
    }
    CHECK(min > 0 && (double)max / (double)min <= 1.05, "primary's counters uneven: max %llu min %llu",
          (unsigned long long)max, (unsigned long long)min);
    finish();
    printf("policies round_robin: ok\n");
}

/* ---------------------------------------------------------------- sticky ---- */

#define ST_WORKERS 4
#define ST_ADDRS 24 /* 127.0.0.2 .. 127.0.0.25 */
#define ST_ROUNDS 10

/* One request from source address 127.0.0.<last>; returns the answering worker. */
static int sticky_request(int last, int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0, "client: socket: %s", strerror(errno));
    int one = 1; /* pick the port at connect(), against the full 4-tuple */
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    struct sockaddr_in src = {.sin_family = AF_INET, .sin_port = 0};
    src.sin_addr.s_addr = htonl(0x7f000000u | (uint32_t)last);
    CHECK(bind(fd, (struct sockaddr *)&src, sizeof src) == 0, "client: bind 127.0.0.%d: %s", last, strerror(errno));
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    dst.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(connect(fd, (struct sockaddr *)&dst, sizeof dst) == 0, "client: connect from 127.0.0.%d: %s", last,
          strerror(errno));
    struct sockaddr_in me;
    socklen_t len = sizeof me;
    CHECK(getsockname(fd, (struct sockaddr *)&me, &len) == 0 && me.sin_addr.s_addr == src.sin_addr.s_addr,
          "client: the connection's source address is 127.0.0.%d", last);
    CHECK(write(fd, "hello\n", 6) == 6, "client: write: %s", strerror(errno));
    char buf[64];
    ssize_t n = read_bounded(fd, buf, sizeof buf, 10000);
    CHECK(n > 0, "client: no answer from 127.0.0.%d (%zd)", last, n);
    close(fd);
    int w = parse_worker(buf);
    CHECK(w >= 1 && w <= ST_WORKERS, "client: answer '%s'", buf);
    return w;
}

static void sticky_client(int port, int out) {
    int owner[ST_ADDRS];
    int per_worker[ST_WORKERS + 1] = {0};
    for (int a = 0; a < ST_ADDRS; a++) owner[a] = 0;
    for (int round = 0; round < ST_ROUNDS; round++) {
        /* Interleaved across the addresses, each round starting one address later: 24 is a
         * multiple of 4, so in a fixed order round-robin would look sticky too. */
        for (int k = 0; k < ST_ADDRS; k++) {
            int a = (k + round) % ST_ADDRS;
            int w = sticky_request(2 + a, port);
            if (owner[a] == 0) owner[a] = w;
            CHECK(owner[a] == w, "client: 127.0.0.%d went to worker %d, then (round %d) to worker %d", 2 + a, owner[a],
                  round, w);
            per_worker[w]++;
        }
    }
    int used = 0;
    char line[512];
    int len = snprintf(line, sizeof line, "connections per worker:");
    for (int w = 1; w <= ST_WORKERS; w++) {
        used += per_worker[w] > 0;
        len += snprintf(line + len, sizeof line - (size_t)len, " %d", per_worker[w]);
    }
    snprintf(line + len, sizeof line - (size_t)len, "\n");
    report(out, line);
    CHECK(used >= 2, "client: %d addresses all went to %d worker(s)", ST_ADDRS, used);
}

static void test_sticky(void) {
    int port = start_cluster(ST_WORKERS, CLUSTER_POLICY_STICKY, on_worker_serve);
    int p[2];
    CHECK(pipe2(p, O_CLOEXEC) == 0, "pipe");
    int keep[] = {p[1], -1};
    pid_t client = fork_client(keep);
    if (client == 0) {
        sticky_client(port, p[1]);
        _exit(0);
    }
    close(p[1]);
    int status = dispatch_until_exit(client, 60000, "the sticky client");
    char line[512];
    ssize_t n = read_bounded(p[0], line, sizeof line, 1000);
    close(p[0]);
    if (n > 0) printf("sticky: %s", line);
    check_client_status(status, "the sticky client");
    CHECK(n > 0, "the client reported its counts");
    wait_acked(ST_ADDRS * ST_ROUNDS, 5000);
    finish();
    printf("policies sticky: ok\n");
}

/* ---------------------------------------------------------------- least ---- */

#define LC_WORKERS 4

/* Opens a connection and reads its first line; returns the worker id. */
static int least_open(int port, int *fd_out) {
    int fd = tcp_connect("127.0.0.1", port);
    CHECK(fd >= 0, "client: connect: %s", strerror(errno));
    char buf[64];
    ssize_t n = read_line_or_eof(fd, buf, sizeof buf, 1, 10000);
    CHECK(n > 0 && buf[n - 1] == '\n', "client: no first line (%zd: '%s')", n, n > 0 ? buf : "");
    int w = parse_worker(buf);
    CHECK(w >= 1 && w <= LC_WORKERS, "client: answer '%s'", buf);
    *fd_out = fd;
    return w;
}

static void least_client(int port, int in, int out) {
    int fds[64], owner[64];
    int n = 0;
    int per[LC_WORKERS + 1] = {0};
    char line[256];

    /* Step 1: 40 connections, kept open: 10 per worker. */
    for (int i = 0; i < 40; i++, n++) {
        owner[n] = least_open(port, &fds[n]);
        per[owner[n]]++;
    }
    snprintf(line, sizeof line, "step1 %d %d %d %d\n", per[1], per[2], per[3], per[4]);
    report(out, line);
    for (int w = 1; w <= LC_WORKERS; w++)
        CHECK(per[w] == 10, "client: 40 held connections, worker %d has %d (expected 10 each: %s)", w, per[w], line);

    /* Step 2, once worker 1 released its 10: they ended, the others' did not. */
    char go;
    struct pollfd pg = {.fd = in, .events = POLLIN};
    CHECK(poll(&pg, 1, 30000) == 1, "client: timed out after 30000 ms waiting for the primary's go (release)");
    CHECK(read(in, &go, 1) == 1, "client: the primary's go (release)");
    for (int i = 0; i < n; i++) {
        char buf[16];
        if (owner[i] == 1) {
            ssize_t r = read_bounded(fds[i], buf, sizeof buf, 10000);
            CHECK(r == 0, "client: worker 1's connection %d ended after the release (%zd)", i, r);
        } else {
            struct pollfd p = {.fd = fds[i], .events = POLLIN};
            CHECK(poll(&p, 1, 0) == 0, "client: worker %d's connection %d is still held", owner[i], i);
        }
    }
    int step2[LC_WORKERS + 1] = {0};
    for (int i = 0; i < 10; i++, n++) {
        owner[n] = least_open(port, &fds[n]);
        step2[owner[n]]++;
    }
    snprintf(line, sizeof line, "step2 %d %d %d %d\n", step2[1], step2[2], step2[3], step2[4]);
    report(out, line);
    CHECK(step2[1] == 10, "client: 10 connections after worker 1 released its own: %s (all expected on worker 1)",
          line);

    /* Step 3: every worker holds 10 now: the next 4 go one per worker. */
    int step3[LC_WORKERS + 1] = {0};
    for (int i = 0; i < 4; i++, n++) {
        owner[n] = least_open(port, &fds[n]);
        step3[owner[n]]++;
    }
    snprintf(line, sizeof line, "step3 %d %d %d %d\n", step3[1], step3[2], step3[3], step3[4]);
    report(out, line);
    for (int w = 1; w <= LC_WORKERS; w++)
        CHECK(step3[w] == 1, "client: 4 connections at equal loads, worker %d got %d (expected 1 each: %s)", w,
              step3[w], line);
    for (int i = 0; i < n; i++) close(fds[i]);
}

/* Primary: reads one line from the client while the loop keeps turning. */
static char lbuf[1024];
static size_t llen;

static void primary_read_line(int fd, pid_t client, char *out, size_t cap, int timeout_ms, const char *what) {
    long long end = now_ms() + timeout_ms;
    for (;;) {
        char *nl = memchr(lbuf, '\n', llen);
        if (nl) {
            size_t k = (size_t)(nl - lbuf);
            size_t c = k < cap - 1 ? k : cap - 1;
            memcpy(out, lbuf, c);
            out[c] = '\0';
            memmove(lbuf, nl + 1, llen - k - 1);
            llen -= k + 1;
            return;
        }
        if (now_ms() > end) FAIL("timed out after %d ms waiting for %s", timeout_ms, what);
        struct pollfd p[2] = {{.fd = fd, .events = POLLIN}, {.fd = cluster_fd(), .events = POLLIN}};
        poll(p, 2, 50);
        cluster_dispatch(0);
        if (p[0].revents) {
            ssize_t r = read(fd, lbuf + llen, sizeof lbuf - llen);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) {
                int status = dispatch_until_exit(client, 5000, "the client after it closed its pipe");
                check_client_status(status, "the least-connections client");
                FAIL("the client exited before %s", what);
            }
            llen += (size_t)r;
        }
    }
}

static void test_least(void) {
    int port = start_cluster(LC_WORKERS, CLUSTER_POLICY_LEAST_CONNECTIONS, on_worker_hold);
    int to_client[2], from_client[2];
    CHECK(pipe2(to_client, O_CLOEXEC) == 0 && pipe2(from_client, O_CLOEXEC) == 0, "pipes");
    int keep[] = {to_client[0], from_client[1], -1};
    pid_t client = fork_client(keep);
    if (client == 0) {
        least_client(port, to_client[0], from_client[1]);
        _exit(0);
    }
    close(to_client[0]);
    close(from_client[1]);
    char line[256];
    int a, b, c, d;

    primary_read_line(from_client[0], client, line, sizeof line, 30000, "the client's 40 connections");
    printf("least: %s\n", line);
    CHECK(sscanf(line, "step1 %d %d %d %d", &a, &b, &c, &d) == 4 && a == 10 && b == 10 && c == 10 && d == 10,
          "40 held connections spread 10 per worker: %s", line);
    wait_acked(40, 5000);

    got_msg = 0;
    OK(cluster_send(1, (const uint8_t *)"release", 7));
    dispatch_until(&got_msg, 10000, "worker 1's reply to release");
    CHECK(msg_from == 1 && strcmp(msg_text, "released 10") == 0, "worker %u replied '%s', expected 'released 10'",
          msg_from, msg_text);
    CHECK(write(to_client[1], "g", 1) == 1, "go to the client");

    primary_read_line(from_client[0], client, line, sizeof line, 30000, "the client's 10 connections after the release");
    printf("least: %s\n", line);
    CHECK(sscanf(line, "step2 %d %d %d %d", &a, &b, &c, &d) == 4 && a == 10 && b + c + d == 0,
          "after the release all 10 new connections went to worker 1: %s", line);
    primary_read_line(from_client[0], client, line, sizeof line, 30000, "the client's last 4 connections");
    printf("least: %s\n", line);
    CHECK(sscanf(line, "step3 %d %d %d %d", &a, &b, &c, &d) == 4 && a == 1 && b == 1 && c == 1 && d == 1,
          "at equal loads the 4 connections spread one per worker: %s", line);

    int status = dispatch_until_exit(client, 20000, "the least-connections client");
    check_client_status(status, "the least-connections client");
    close(to_client[1]);
    close(from_client[0]);
    wait_acked(54, 5000);
    CHECK(acked(1) == 21 && acked(2) == 11 && acked(3) == 11 && acked(4) == 11,
          "primary's counters %llu %llu %llu %llu, expected 21 11 11 11", (unsigned long long)acked(1),
          (unsigned long long)acked(2), (unsigned long long)acked(3), (unsigned long long)acked(4));
    finish();
    printf("policies least: ok\n");
}

int main(int argc, char **argv) {
    test_deadline(110);
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc != 2) {
        fprintf(stderr, "usage: %s round_robin|sticky|least\n", argv[0]);
        return 2;
    }
    long long t0 = now_ms();
    if (strcmp(argv[1], "round_robin") == 0) test_round_robin();
    else if (strcmp(argv[1], "sticky") == 0) test_sticky();
    else if (strcmp(argv[1], "least") == 0) test_least();
    else {
        fprintf(stderr, "unknown case '%s'\n", argv[1]);
        return 2;
    }
    printf("policies %s: %lld ms\n", argv[1], now_ms() - t0);
    return 0;
}
