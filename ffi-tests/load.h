/* load.h: HTTP clients for tests whose primary loop runs in the test process: a forked load
 * client (LOAD_THREADS connections at a time until told to stop, then counts), and a probe
 * (n sequential requests, reporting which worker answered each). Workers answer with
 * harness.h's http_answer ("worker N"). */
#ifndef RCLUSTER_TEST_LOAD_H
#define RCLUSTER_TEST_LOAD_H

#include "harness.h"

#include <fcntl.h>
#include <pthread.h>

#define LOAD_THREADS 4

/* One request on a new connection; 1 when answered "worker N", else 0 with the reason. */
static inline int one_request(int port, char *why, size_t cap) {
    int fd = tcp_connect("127.0.0.1", port);
    if (fd < 0) {
        snprintf(why, cap, "connect: %s", strerror(errno));
        return 0;
    }
    const char req[] = "GET / HTTP/1.0\r\nHost: test\r\n\r\n";
    if (write(fd, req, sizeof req - 1) != (ssize_t)(sizeof req - 1)) {
        snprintf(why, cap, "write: %s", strerror(errno));
        close(fd);
        return 0;
    }
    char buf[1024];
    ssize_t n = read_bounded(fd, buf, sizeof buf, 5000);
    int e = errno;
    close(fd);
    if (n == -2) {
        snprintf(why, cap, "no answer within 5 s");
        return 0;
    }
    if (n < 0) {
        snprintf(why, cap, "read: %s", strerror(e));
        return 0;
    }
    if (!strstr(buf, "worker ")) {
        snprintf(why, cap, "answer without \"worker \": '%.60s' (%zd bytes)", buf, n);
        return 0;
    }
    return 1;
}

static volatile int load_stop;
struct loader {
    pthread_t thread;
    int port;
    long ok, failed;
};

static inline void *load_thread(void *arg) {
    struct loader *l = arg;
    while (!__atomic_load_n(&load_stop, __ATOMIC_ACQUIRE)) {
        char why[160];
        if (one_request(l->port, why, sizeof why)) {
            l->ok++;
        } else {
            l->failed++;
            if (l->failed <= 5) fprintf(stderr, "load client: request failed: %s\n", why);
        }
    }
    return NULL;
}

/* The load client (in its child): LOAD_THREADS connections at a time, each connect, request,
 * read the answer to EOF, until a byte arrives on `stop`; then "ok N failed M\n" on `out`. */
static inline void load_client(int port, int stop, int out) {
    struct loader l[LOAD_THREADS];
    for (int i = 0; i < LOAD_THREADS; i++) {
        l[i] = (struct loader){.port = port};
        CHECK(pthread_create(&l[i].thread, NULL, load_thread, &l[i]) == 0, "load client: pthread_create");
    }
    char c;
    ssize_t r;
    do r = read(stop, &c, 1); /* bounded by the client's alarm */
    while (r < 0 && errno == EINTR);
    __atomic_store_n(&load_stop, 1, __ATOMIC_RELEASE);
    long ok = 0, failed = 0;
    for (int i = 0; i < LOAD_THREADS; i++) {
        pthread_join(l[i].thread, NULL);
        ok += l[i].ok;
        failed += l[i].failed;
    }
    char line[64];
    int n = snprintf(line, sizeof line, "ok %ld failed %ld\n", ok, failed);
    CHECK(write(out, line, (size_t)n) == n, "load client: report");
}

struct load {
    pid_t pid;
    int stop_w, report_r;
};

static inline struct load start_load(int port) {
    int stop[2], report[2];
    CHECK(pipe2(stop, O_CLOEXEC) == 0 && pipe2(report, O_CLOEXEC) == 0, "pipe: %s", strerror(errno));
    pid_t pid = fork_client((const int[]){stop[0], report[1], -1});
    if (pid == 0) {
        load_client(port, stop[0], report[1]);
        _exit(0);
    }
    close(stop[0]);
    close(report[1]);
    return (struct load){.pid = pid, .stop_w = stop[1], .report_r = report[0]};
}

/* The client has not ended on its own. */
static inline void check_load_running(const struct load *l) {
    int st = 0;
    CHECK(waitpid(l->pid, &st, WNOHANG) == 0, "the load client ended early (status %d)", st);
}

/* Stops the load client; its counts go to *ok and *failed. */
static inline void stop_load(struct load *l, long *ok, long *failed) {
    CHECK(write(l->stop_w, "x", 1) == 1, "telling the load client to stop: %s", strerror(errno));
    int status = dispatch_until_exit(l->pid, 15000, "the load client to stop");
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the load client failed (status %d)", status);
    char line[128];
    ssize_t n = read_bounded(l->report_r, line, sizeof line, 1000);
    CHECK(n > 0, "the load client reported nothing");
    CHECK(sscanf(line, "ok %ld failed %ld", ok, failed) == 2, "the load client's report '%s'", line);
    close(l->stop_w);
    close(l->report_r);
}

/* A child makes `n` sequential requests; returns how many were answered and the worker ids
 * that answered them in ids[]. */
static inline int probe(int port, int n, uint32_t *ids) {
    int p[2];
    CHECK(pipe2(p, O_CLOEXEC) == 0, "pipe");
    pid_t pid = fork_client((const int[]){p[1], -1});
    if (pid == 0) {
        char line[512];
        int len = 0;
        for (int i = 0; i < n; i++) len += snprintf(line + len, sizeof line - (size_t)len, "%d ", http_worker("127.0.0.1", port));
        snprintf(line + len, sizeof line - (size_t)len, "\n");
        CHECK(write(p[1], line, strlen(line)) == (ssize_t)strlen(line), "probe: report");
        _exit(0);
    }
    close(p[1]);
    int status = dispatch_until_exit(pid, 20000, "the probe requests");
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the probe client failed (status %d)", status);
    char line[512];
    CHECK(read_bounded(p[0], line, sizeof line, 1000) > 0, "the probe client reported nothing");
    close(p[0]);
    int answered = 0;
    const char *s = line;
    for (int i = 0; i < n; i++) {
        int w, used;
        CHECK(sscanf(s, "%d%n", &w, &used) == 1, "probe report '%s'", line);
        s += used;
        if (w > 0) ids[answered++] = (uint32_t)w;
    }
    return answered;
}

#endif
