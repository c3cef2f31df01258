/* harness.h: shared helpers of the C tests. Each test is one program that uses only
 * rcluster.h (plus libc), exits 0 on success, and fails loudly with the line and the
 * library's last error. tests/ffi.rs compiles them with -Wall -Wextra -Werror and runs them. */
#ifndef RCLUSTER_TEST_HARNESS_H
#define RCLUSTER_TEST_HARNESS_H

#define _GNU_SOURCE
#include <rcluster.h>

#include <dirent.h>
#include <fcntl.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define FAIL(...)                                                                     \
    do {                                                                              \
        fprintf(stderr, "[%s %d] %s:%d: ", cluster_is_worker() ? "worker" : "primary", \
                (int)getpid(), __FILE__, __LINE__);                                   \
        fprintf(stderr, __VA_ARGS__);                                                 \
        fprintf(stderr, " (last error: %s)\n", cluster_last_error());                 \
        exit(99);                                                                     \
    } while (0)

#define CHECK(cond, ...)                             \
    do {                                             \
        if (!(cond)) {                               \
            fprintf(stderr, "CHECK(%s) failed: ", #cond); \
            FAIL(__VA_ARGS__);                       \
        }                                            \
    } while (0)

/* A call that must succeed (>= 0); evaluates to its result. */
#define OK(expr)                                                              \
    ({                                                                        \
        int32_t rc_ = (expr);                                                 \
        if (rc_ < 0) FAIL("%s returned %d (%s)", #expr, rc_, cluster_strerror(rc_)); \
        rc_;                                                                  \
    })

/* A call that must fail with `code`, and leave a sentence in cluster_last_error(). */
#define EXPECT_ERR(expr, code)                                                      \
    do {                                                                            \
        int32_t rc_ = (expr);                                                       \
        if (rc_ != (code)) FAIL("%s returned %d, expected %s (%d)", #expr, rc_, #code, code); \
        if (cluster_last_error()[0] == '\0') FAIL("%s left no sentence", #expr);   \
    } while (0)

static inline long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* RSS bounds hold in normal builds only: under AddressSanitizer freed memory waits in a
 * quarantine and shadow memory grows with use, so RSS says nothing there (LeakSanitizer checks
 * for leaks instead). tests/common/mod.rs sets RCLUSTER_TEST_SANITIZED=1 for sanitized runs. */
static inline int rss_checked(void) {
    const char *s = getenv("RCLUSTER_TEST_SANITIZED");
    return !(s && s[0] == '1');
}

/* The whole test must end within `secs`: SIGALRM's default action kills it. */
static inline void test_deadline(unsigned secs) { alarm(secs); }

/* Turns the loop until *flag becomes true; fails after timeout_ms. */
static inline void dispatch_until(volatile int *flag, int timeout_ms, const char *what) {
    long long end = now_ms() + timeout_ms;
    while (!*flag) {
        if (now_ms() > end) FAIL("timed out after %d ms waiting for %s", timeout_ms, what);
        int32_t rc = cluster_dispatch(50);
        if (rc < 0 && !*flag) FAIL("cluster_dispatch returned %d while waiting for %s", rc, what);
    }
}

/* Connects to host:port over TCP (blocking), -1 on failure. */
static inline int tcp_connect(const char *host, int port) {
    char p[16];
    snprintf(p, sizeof p, "%d", port);
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST;
    if (getaddrinfo(host, p, &hints, &res) != 0) return -1;
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, res->ai_addr, res->ai_addrlen) != 0) {
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    return fd;
}

/* Reads until EOF or cap-1 bytes; NUL-terminates. Returns the length, -1 on error. */
static inline ssize_t read_all(int fd, char *buf, size_t cap) {
    size_t n = 0;
    while (n + 1 < cap) {
        ssize_t r = read(fd, buf + n, cap - 1 - n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return -1;
        if (r == 0) break;
        n += (size_t)r;
    }
    buf[n] = '\0';
    return (ssize_t)n;
}

/* One HTTP/1.0 request to host:port; returns the worker id the body names ("worker N"), or -1. */
static inline int http_worker(const char *host, int port) {
    int fd = tcp_connect(host, port);
    if (fd < 0) return -1;
    const char req[] = "GET / HTTP/1.0\r\nHost: test\r\n\r\n";
    if (write(fd, req, sizeof req - 1) != (ssize_t)(sizeof req - 1)) {
        close(fd);
        return -1;
    }
    char buf[1024];
    ssize_t n = read_all(fd, buf, sizeof buf);
    close(fd);
    if (n <= 0) return -1;
    const char *w = strstr(buf, "worker ");
    return w ? atoi(w + 7) : -1;
}

/* Answers one HTTP request on fd with "worker <id>" and closes it. */
static inline void http_answer(int fd) {
    char req[2048];
    size_t got = 0;
    while (got < sizeof req - 1) { /* read the request head */
        ssize_t r = read(fd, req + got, sizeof req - 1 - got);
        if (r <= 0) break;
        got += (size_t)r;
        req[got] = '\0';
        if (strstr(req, "\r\n\r\n")) break;
    }
    char body[64], resp[256];
    int blen = snprintf(body, sizeof body, "worker %u\n", cluster_worker_id());
    int rlen = snprintf(resp, sizeof resp,
                        "HTTP/1.0 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", blen, body);
    ssize_t w = write(fd, resp, (size_t)rlen);
    (void)w;
    close(fd);
}

/* Reads the client's line (or up to EOF), answers "worker <id>\n" and closes the fd. */
static inline void answer_line(int fd) {
    char req[256];
    size_t got = 0;
    while (got < sizeof req - 1) {
        ssize_t r = read(fd, req + got, sizeof req - 1 - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += (size_t)r;
        if (memchr(req, '\n', got)) break;
    }
    char resp[64];
    int n = snprintf(resp, sizeof resp, "worker %u\n", cluster_worker_id());
    ssize_t w = write(fd, resp, (size_t)n);
    (void)w;
    close(fd);
}

/* Waits up to timeout_ms for our child `pid` to exit; returns its wait status or -1. */
static inline int wait_child(pid_t pid, int timeout_ms) {
    long long end = now_ms() + timeout_ms;
    for (;;) {
        int status;
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid) return status;
        if (r < 0 && errno != EINTR) return -1;
        if (now_ms() > end) return -1;
        usleep(10000);
    }
}

/* True when no process `pid` exists (or it is a zombie nobody reaped yet). */
static inline int pid_gone(pid_t pid) {
    if (kill(pid, 0) != 0 && errno == ESRCH) return 1;
    char path[64], stat[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return 1;
    size_t n = fread(stat, 1, sizeof stat - 1, f);
    fclose(f);
    stat[n] = '\0';
    const char *rp = strrchr(stat, ')');
    return rp && rp[1] == ' ' && rp[2] == 'Z';
}

/* True for the EXIT of a worker that stopped as asked (code 0, no signal, after a
 * disconnect); otherwise says what it was on stderr and returns false. */
static inline int exit_is_clean(const cluster_event *ev) {
    if (ev->exit_code == 0 && ev->signal == 0 && ev->exited_after_disconnect) return 1;
    fprintf(stderr, "worker %u exit code %d signal %d after_disconnect %d\n", ev->worker_id, ev->exit_code,
            ev->signal, ev->exited_after_disconnect);
    return 0;
}

/* cluster_stats() as a malloc'd string (the caller frees it). The call is snprintf-like (the
 * whole length back, at most cap-1 bytes and a NUL written), and the JSON holds uptimes that
 * can gain a digit between two calls: so this asks again with a bigger buffer until it fits,
 * rather than expecting the length to stay the same. */
static inline char *stats_json(void) {
    size_t cap = (size_t)OK(cluster_stats(NULL, 0)) + 1;
    for (;;) {
        char *json = malloc(cap);
        CHECK(json != NULL, "malloc");
        memset(json, 'x', cap);
        size_t n = (size_t)OK(cluster_stats(json, cap));
        CHECK(strlen(json) == (n < cap ? n : cap - 1), "cluster_stats(buf, %zu) wrote %zu bytes and returned %zu", cap,
              strlen(json), n);
        if (n < cap) return json;
        free(json);
        cap = n + 1;
    }
}

/* A number that follows `key` in the stats JSON object of worker `id` (-1 if absent). */
static inline long worker_stat(uint32_t id, const char *key) {
    char *json = stats_json();
    char who[32], what[64];
    snprintf(who, sizeof who, "{\"id\":%u,", id);
    snprintf(what, sizeof what, "\"%s\":", key);
    long v = -1;
    char *w = strstr(json, who);
    char *k = w ? strstr(w, what) : NULL;
    if (k) v = strtol(k + strlen(what), NULL, 10);
    free(json);
    return v;
}

static inline long total_stat(const char *key) {
    char *json = stats_json();
    char what[64];
    snprintf(what, sizeof what, "\"%s\":", key);
    char *t = strstr(json, "\"total\":");
    char *k = t ? strstr(t, what) : NULL;
    long v = k ? strtol(k + strlen(what), NULL, 10) : -1;
    free(json);
    return v;
}

/* Forks a client process for a test whose loop runs here. In the child (returns 0): dies with
 * the primary, has its own deadline, ignores SIGPIPE, and keeps only stdio and the fds in
 * `keep` (a list ended by -1). */
static inline pid_t fork_client(const int *keep) {
    pid_t parent = getpid();
    pid_t pid = fork();
    CHECK(pid >= 0, "fork client: %s", strerror(errno));
    if (pid > 0) return pid;
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(98);
    alarm(100);
    signal(SIGPIPE, SIG_IGN);
    for (int fd = 3; fd < 1024; fd++) {
        int kept = 0;
        for (const int *k = keep; *k >= 0; k++) kept |= *k == fd;
        if (!kept) close(fd);
    }
    return 0;
}

/* Turns the loop until client `pid` exits (at most timeout_ms); returns its wait status. */
static inline int dispatch_until_exit(pid_t pid, int timeout_ms, const char *what) {
    long long end = now_ms() + timeout_ms;
    int status;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid) return status;
        CHECK(r == 0, "waitpid(client): %s", strerror(errno));
        if (now_ms() > end) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            FAIL("timed out after %d ms waiting for %s", timeout_ms, what);
        }
        int32_t rc = cluster_dispatch(20);
        CHECK(rc >= 0, "cluster_dispatch returned %d while waiting for %s", rc, what);
    }
}

/* Reads until EOF within timeout_ms; NUL-terminates. Returns the length, -1 error, -2 timeout. */
static inline ssize_t read_bounded(int fd, char *buf, size_t cap, int timeout_ms) {
    long long end = now_ms() + timeout_ms;
    size_t n = 0;
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
    }
    buf[n] = '\0';
    return (ssize_t)n;
}

/* Open fds of process `pid` (0: this process): entries in /proc/<pid>/fd (when pid is 0 this
 * counts the directory's own fd too, the same each time). */
static inline int count_fds(pid_t pid) {
    char path[64];
    if (pid) snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    else snprintf(path, sizeof path, "/proc/self/fd");
    DIR *d = opendir(path);
    CHECK(d != NULL, "opendir %s: %s", path, strerror(errno));
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

/* The "<field>: <n> kB" line of /proc/<pid>/status (pid 0: this process), in KiB. */
static inline long proc_status_kb(pid_t pid, const char *field) {
    char path[64], line[256], fmt[64];
    if (pid) snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    else snprintf(path, sizeof path, "/proc/self/status");
    snprintf(fmt, sizeof fmt, "%s: %%ld kB", field);
    FILE *f = fopen(path, "r");
    CHECK(f != NULL, "fopen %s: %s", path, strerror(errno));
    long kb = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, fmt, &kb) == 1) break;
    fclose(f);
    CHECK(kb > 0, "no %s in %s", field, path);
    return kb;
}

/* VmRSS of process `pid` (0: this process) in KiB. */
static inline long vm_rss_kb(pid_t pid) { return proc_status_kb(pid, "VmRSS"); }

/* VmHWM (the peak RSS so far, shared memory included) of process `pid` (0: this process) in KiB. */
static inline long vm_hwm_kb(pid_t pid) { return proc_status_kb(pid, "VmHWM"); }

/* One HTTP request to host:port made by a child while the loop turns here (at most
 * timeout_ms); returns the id of the worker that answered, or -1. `what` names it in failures. */
static inline int http_worker_in_child(const char *host, int port, int timeout_ms, const char *what) {
    int p[2];
    CHECK(pipe2(p, O_CLOEXEC) == 0, "pipe");
    pid_t pid = fork_client((const int[]){p[1], -1});
    if (pid == 0) {
        int w = http_worker(host, port);
        _exit(write(p[1], &w, sizeof w) == sizeof w ? 0 : 1);
    }
    close(p[1]);
    int status = dispatch_until_exit(pid, timeout_ms, what);
    int w = -1;
    CHECK(WIFEXITED(status) && read(p[0], &w, sizeof w) == sizeof w, "%s: the client reported nothing", what);
    close(p[0]);
    return w;
}

/* A client process's work: `conns` TCP connections to 127.0.0.1:port, `batch` open at a time
 * (batch <= 64), each writing a line and reading its answer to EOF; the answer must start with
 * "worker ". Exits 0 when every one was answered; dies with the parent. */
static inline void answered_clients(int port, int conns, int batch, unsigned deadline_secs) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    test_deadline(deadline_secs);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    CHECK(batch > 0 && batch <= 64, "batch %d", batch);
    for (int done = 0; done < conns; done += batch) {
        int fds[64], k = conns - done < batch ? conns - done : batch;
        for (int i = 0; i < k; i++) {
            fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
            CHECK(fds[i] >= 0, "socket: %s", strerror(errno));
            CHECK(connect(fds[i], (struct sockaddr *)&a, sizeof a) == 0, "connection %d: connect: %s", done + i,
                  strerror(errno));
            CHECK(write(fds[i], "hi\n", 3) == 3, "connection %d: write: %s", done + i, strerror(errno));
        }
        for (int i = 0; i < k; i++) {
            char buf[64];
            ssize_t n = read_all(fds[i], buf, sizeof buf);
            CHECK(n > 0 && !strncmp(buf, "worker ", 7), "connection %d was not answered (%zd bytes)", done + i, n);
            close(fds[i]);
        }
    }
    _exit(0);
}

/* Starts a FORK-mode round-robin cluster of `workers` on 127.0.0.1:0 (signals left alone);
 * returns the port it got. */
static inline int start_rr_cluster(uint32_t workers, cluster_worker_main main_fn, cluster_event_cb on_event) {
    cluster_config *cfg = cluster_config_new();
    CHECK(cfg != NULL, "cluster_config_new");
    OK(cluster_config_set_workers(cfg, workers));
    OK(cluster_config_set_worker_main(cfg, main_fn, NULL));
    OK(cluster_config_set_signals(cfg, false));
    OK(cluster_config_set_policy(cfg, CLUSTER_POLICY_ROUND_ROBIN));
    CHECK(OK(cluster_config_listen_tcp(cfg, "127.0.0.1", 0)) == 0, "the listener is index 0");
    OK(cluster_primary_start(cfg, on_event, NULL));
    cluster_config_free(cfg);
    int port = OK(cluster_local_port(0));
    CHECK(port > 0, "port 0 was given a real port");
    return port;
}

#endif
