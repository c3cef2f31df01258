/* File-descriptor passing both ways: the primary hands a pipe's write end to each worker,
 * which writes through it; a worker hands a pipe's read end to the primary. The received fd
 * is owned by the receiver and FD_CLOEXEC, the sender's duplicate is closed once sent (the
 * reader sees EOF), plain messages carry fd -1, and a bad fd (-1, a closed number) is an
 * error on both sides, not a crash, and sends nothing. Ends with a graceful shutdown that
 * leaves no process behind. */
#include "harness.h"
#include <fcntl.h>
#include <stdarg.h>

#define WORKERS 2
#define TEXT "through the pipe"

/* ---- worker side ---- */

static void reply(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void reply(const char *fmt, ...) {
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    OK(cluster_send(0, (const uint8_t *)msg, (size_t)n));
}

static int is_cloexec(int fd) {
    int fl = fcntl(fd, F_GETFD);
    return fl >= 0 && (fl & FD_CLOEXEC) != 0;
}

/* A closed descriptor number (nothing reopens it before it is used: one thread). */
static int closed_fd(void) {
    int p[2];
    CHECK(pipe(p) == 0, "pipe: %s", strerror(errno));
    close(p[0]);
    close(p[1]);
    return p[0];
}

static int bad_code(int32_t rc) { return rc == CLUSTER_E_INVAL || rc == CLUSTER_E_SYS; }

static void on_worker(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind != CLUSTER_EVENT_MESSAGE) return;
    char text[256] = {0};
    if (ev->len) memcpy(text, ev->data, ev->len < sizeof text - 1 ? ev->len : sizeof text - 1);
    int me = (int)cluster_worker_id();
    if (ev->worker_id != 0) {
        if (ev->fd >= 0) close(ev->fd);
        reply("unexpected from %u: %s", ev->worker_id, text);
        return;
    }
    if (ev->len == 4 && memcmp(ev->data, "pipe", 4) == 0) {
        if (ev->fd < 0) {
            reply("nofd");
            return;
        }
        int cloexec = is_cloexec(ev->fd);
        ssize_t w = write(ev->fd, TEXT, sizeof TEXT - 1);
        int wr_errno = errno;
        close(ev->fd);
        reply("wrote %zd cloexec %d errno %d", w, cloexec, w < 0 ? wr_errno : 0);
    } else if (ev->fd >= 0) {
        close(ev->fd);
        reply("unexpected fd with: %s", text);
    } else if (strcmp(text, "make-pipe") == 0) {
        int p[2];
        CHECK(pipe(p) == 0, "pipe: %s", strerror(errno)); /* no O_CLOEXEC: the receiver's flag is the library's */
        OK(cluster_send_fd(0, (const uint8_t *)"rpipe", 5, p[0]));
        close(p[0]); /* ours; the library passes its own duplicate */
        char msg[64];
        int n = snprintf(msg, sizeof msg, "back from worker %d", me);
        CHECK(write(p[1], msg, (size_t)n) == n, "write into our pipe: %s", strerror(errno));
        close(p[1]);
    } else if (strcmp(text, "bad-fd") == 0) {
        int32_t a = cluster_send_fd(0, (const uint8_t *)"x", 1, -1);
        int sa = cluster_last_error()[0] != '\0';
        int32_t b = cluster_send_fd(0, (const uint8_t *)"y", 1, closed_fd());
        int sb = cluster_last_error()[0] != '\0';
        reply("badfd %d %d %d %d", (int)a, sa, (int)b, sb);
    } else {
        reply("unexpected: %s", text);
    }
}

static int worker_main(void *ud) {
    OK(cluster_worker_start(on_worker, ud));
    return cluster_run() == 0 ? 0 : 3;
}

/* ---- primary side ---- */

static volatile int ready, exits, clean_exits, got_wrote, got_rpipe, got_badfd;
static pid_t pids[WORKERS + 1];
static int wrote_n, wrote_cloexec, wrote_errno, wrote_from;
static int rpipe_fd = -1, rpipe_cloexec = -1, rpipe_from;
static int badfd[4];

static void on_primary(void *ud, const cluster_event *ev) {
    (void)ud;
    char text[256] = {0};
    if (ev->len) memcpy(text, ev->data, ev->len < sizeof text - 1 ? ev->len : sizeof text - 1);
    switch (ev->kind) {
    case CLUSTER_EVENT_FORK:
        CHECK(ev->worker_id >= 1 && ev->worker_id <= WORKERS && ev->pid > 0, "fork event %u pid %d", ev->worker_id, ev->pid);
        pids[ev->worker_id] = ev->pid;
        break;
    case CLUSTER_EVENT_READY:
        ready++;
        break;
    case CLUSTER_EVENT_MESSAGE:
        if (ev->len == 5 && memcmp(ev->data, "rpipe", 5) == 0) {
            CHECK(ev->fd >= 0, "the rpipe message from %u carries no fd", ev->worker_id);
            CHECK(rpipe_fd < 0, "a second rpipe");
            rpipe_fd = ev->fd; /* ours now */
            rpipe_cloexec = is_cloexec(ev->fd);
            rpipe_from = (int)ev->worker_id;
            got_rpipe = 1;
            break;
        }
        CHECK(ev->fd == -1, "a plain message ('%s') has fd %d, expected -1", text, ev->fd);
        if (sscanf(text, "wrote %d cloexec %d errno %d", &wrote_n, &wrote_cloexec, &wrote_errno) == 3) {
            wrote_from = (int)ev->worker_id;
            got_wrote = 1;
        } else if (sscanf(text, "badfd %d %d %d %d", &badfd[0], &badfd[1], &badfd[2], &badfd[3]) == 4) {
            got_badfd = 1;
        } else {
            FAIL("unexpected message '%s' from worker %u", text, ev->worker_id);
        }
        break;
    case CLUSTER_EVENT_EXIT:
        exits++;
        clean_exits += exit_is_clean(ev);
        break;
    case CLUSTER_EVENT_ERROR:
        FAIL("ERROR event about worker %u: %.*s", ev->worker_id, (int)ev->len, (const char *)ev->data);
    default:
        break;
    }
}

/* Reads `fd` until EOF while turning the loop; fails after timeout_ms. NUL-terminates. */
static size_t read_to_eof(int fd, char *buf, size_t cap, int timeout_ms, const char *what) {
    long long end = now_ms() + timeout_ms;
    size_t n = 0;
    for (;;) {
        if (now_ms() > end) FAIL("timed out after %d ms reading %s to EOF (%zu bytes so far)", timeout_ms, what, n);
        cluster_dispatch(10);
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int pr = poll(&pfd, 1, 10);
        if (pr < 0 && errno == EINTR) continue;
        CHECK(pr >= 0, "poll: %s", strerror(errno));
        if (pr == 0) continue;
        CHECK(n + 1 < cap, "%s: more than %zu bytes", what, cap - 1);
        ssize_t r = read(fd, buf + n, cap - 1 - n);
        if (r < 0 && errno == EINTR) continue;
        CHECK(r >= 0, "read %s: %s", what, strerror(errno));
        if (r == 0) break;
        n += (size_t)r;
    }
    buf[n] = '\0';
    return n;
}

int main(void) {
    if (cluster_is_worker()) return worker_main(NULL);
    test_deadline(60);

    cluster_config *cfg = cluster_config_new();
    CHECK(cfg != NULL, "config");
    OK(cluster_config_set_workers(cfg, WORKERS));
    OK(cluster_config_set_worker_main(cfg, worker_main, NULL));
    OK(cluster_config_set_signals(cfg, false));
    OK(cluster_primary_start(cfg, on_primary, NULL));
    cluster_config_free(cfg);

    { long long end = now_ms() + 20000; while (ready < WORKERS) { CHECK(now_ms() < end, "%d of %d workers ready", ready, WORKERS); cluster_dispatch(50); } }
    for (int i = 1; i <= WORKERS; i++) CHECK(pids[i] > 0, "FORK event for worker %d", i);

    /* (a) primary -> worker: the write end of a pipe. */
    for (int w = 1; w <= WORKERS; w++) {
        int p[2];
        CHECK(pipe(p) == 0, "pipe: %s", strerror(errno));
        got_wrote = 0;
        OK(cluster_send_fd((uint32_t)w, (const uint8_t *)"pipe", 4, p[1]));
        /* The caller keeps its own fd: it is still open after the call. */
        CHECK(fcntl(p[1], F_GETFD) >= 0, "our write end is still open after cluster_send_fd");
        close(p[1]);
        char buf[256];
        size_t n = read_to_eof(p[0], buf, sizeof buf, 10000, "the pipe written by the worker");
        CHECK(n == sizeof TEXT - 1 && memcmp(buf, TEXT, n) == 0, "read '%s' (%zu bytes) from worker %d's end", buf, n, w);
        close(p[0]);
        dispatch_until(&got_wrote, 10000, "the worker's report");
        CHECK(wrote_from == w, "report from worker %d, expected %d", wrote_from, w);
        CHECK(wrote_n == (int)(sizeof TEXT - 1) && wrote_errno == 0, "worker wrote %d (errno %d)", wrote_n, wrote_errno);
        CHECK(wrote_cloexec == 1, "the fd received by worker %d has FD_CLOEXEC %d", w, wrote_cloexec);
    }

    /* (b) worker -> primary: the read end of a pipe the worker made. */
    OK(cluster_send(2, (const uint8_t *)"make-pipe", 9));
    dispatch_until(&got_rpipe, 10000, "the read end from worker 2");
    CHECK(rpipe_from == 2, "the rpipe came from worker %d", rpipe_from);
    /* (c) the primary's received fd is FD_CLOEXEC too. */
    CHECK(rpipe_cloexec == 1, "the fd received by the primary has FD_CLOEXEC %d", rpipe_cloexec);
    {
        char buf[256];
        size_t n = read_to_eof(rpipe_fd, buf, sizeof buf, 10000, "the pipe from worker 2");
        CHECK(strcmp(buf, "back from worker 2") == 0, "read '%s' (%zu bytes)", buf, n);
        close(rpipe_fd);
        rpipe_fd = -1;
    }

    /* (d) bad fds: an error, not a crash, and nothing is sent (the worker would report it). */
    {
        int32_t rc = cluster_send_fd(1, (const uint8_t *)"x", 1, -1);
        CHECK(bad_code(rc), "send_fd with fd -1 returned %d (%s)", rc, cluster_strerror(rc));
        CHECK(cluster_last_error()[0] != '\0', "fd -1 left no sentence");
        rc = cluster_send_fd(1, (const uint8_t *)"y", 1, closed_fd());
        CHECK(bad_code(rc), "send_fd with a closed fd returned %d (%s)", rc, cluster_strerror(rc));
        CHECK(cluster_last_error()[0] != '\0', "a closed fd left no sentence");
        rc = cluster_send_fd(1, (const uint8_t *)"z", 1, 1 << 20);
        CHECK(bad_code(rc), "send_fd with fd 2^20 returned %d (%s)", rc, cluster_strerror(rc));
    }
    OK(cluster_send(1, (const uint8_t *)"bad-fd", 6));
    dispatch_until(&got_badfd, 10000, "the worker's bad-fd report");
    CHECK(bad_code(badfd[0]) && badfd[1], "worker send_fd with fd -1: %d (sentence %d)", badfd[0], badfd[1]);
    CHECK(bad_code(badfd[2]) && badfd[3], "worker send_fd with a closed fd: %d (sentence %d)", badfd[2], badfd[3]);

    OK(cluster_shutdown(5000));
    CHECK(cluster_run() == 0, "run returns 0 after a graceful stop");
    CHECK(exits == WORKERS && clean_exits == WORKERS, "%d exits, %d clean", exits, clean_exits);
    for (int i = 1; i <= WORKERS; i++) CHECK(pid_gone(pids[i]), "worker %d (pid %d) is gone", i, pids[i]);
    printf("fd_passing: ok\n");
    return 0;
}
