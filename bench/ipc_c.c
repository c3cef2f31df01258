/* IPC in C: rcluster messages between a FORK-mode primary and one worker (the worker echoes
 * each message with cluster_send(0, ...)), against the limit, a raw socketpair echo between
 * two forked processes. For each size: windowed throughput (64 messages in flight) and the
 * median round-trip time with one in flight.
 *   ipc_c [seconds_per_test] [batched]
 * `batched` runs only rcluster, with cluster_set_batching(1) in the primary and (inherited by
 * fork) the worker: what callbacks send leaves batched when their dispatch ends.
 * Prints one line per contestant and size:
 *   ipc NAME SIZE MSGS_PER_S MB_PER_S RTT_MEDIAN_US
 * msgs/s counts round trips (echoes back at the primary); MB/s is payload one way
 * (msgs/s * size). The raw peer is a SOCK_SEQPACKET socketpair for 64 B and 4 KiB; for 1 MiB a
 * SOCK_STREAM socketpair ("raw-stream"), since a seqpacket datagram cannot exceed the socket
 * buffer (~208 KiB by default). */
#define _GNU_SOURCE
#include <rcluster.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define WINDOW 64
#define MAX_SAMPLES 200000
static const size_t SIZES[] = {64, 4096, 1 << 20};
#define NSIZES 3
static double secs = 1.0;
static unsigned char *payload;
static double samples[MAX_SAMPLES];
static size_t nsamples;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmpd(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(void) {
    if (nsamples == 0) return 0;
    qsort(samples, nsamples, sizeof samples[0], cmpd);
    return samples[nsamples / 2];
}

static void report(const char *name, size_t size, double msgs, double elapsed, double rtt) {
    double rate = msgs / elapsed;
    printf("ipc %s %zu %.0f %.1f %.1f\n", name, size, rate, rate * (double)size / 1e6, rtt * 1e6);
    fflush(stdout);
}

/* ---- raw socketpair echo ---- */

/* Returns round trips completed; *elapsed the time they took. window 1 records RTT samples. */
static double raw_run(int type, size_t size, int window, double dur, double *elapsed) {
    int sv[2];
    if (socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, sv) < 0) return perror("socketpair"), 0;
    pid_t child = fork();
    if (child == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        close(sv[0]);
        unsigned char *buf = malloc(1 << 20);
        for (;;) {
            ssize_t n = read(sv[1], buf, 1 << 20);
            if (n <= 0) _exit(0);
            for (ssize_t off = 0; off < n;) {
                ssize_t w = write(sv[1], buf + off, (size_t)(n - off));
                if (w <= 0) _exit(1);
                off += w;
            }
        }
    }
    close(sv[1]);
    int fd = sv[0];
    fcntl(fd, F_SETFL, O_NONBLOCK);
    unsigned char *rbuf = malloc(1 << 20);
    unsigned long long sent = 0, recvd = 0;
    double t0 = now(), end = t0 + dur, tsend = 0;
    int stop = 0;
    for (;;) {
        if (!stop && now() >= end) stop = 1;
        if (stop && sent == recvd && sent % size == 0) break;
        /* send while the window allows (and finish a partly sent message) */
        for (;;) {
            size_t part = (size_t)(sent % size);
            if (part == 0 && (stop || sent / size - recvd / size >= (unsigned long long)window)) break; /* messages in flight */
            size_t chunk = size - part;
            /* Timed before the send: the echo can run (and answer) before send() returns here,
             * when the wakeup preempts this process. */
            double t = now();
            ssize_t w = send(fd, payload, chunk, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (w < 0) {
                if (errno == EAGAIN) break;
                perror("send");
                return 0;
            }
            if (part == 0 && window == 1) tsend = t;
            sent += (unsigned long long)w;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN | (sent % size ? POLLOUT : 0)};
        if (sent == recvd && sent % size == 0) continue;
        if (poll(&p, 1, 100) < 0 && errno != EINTR) return perror("poll"), 0;
        for (;;) {
            ssize_t r = recv(fd, rbuf, 1 << 20, MSG_DONTWAIT);
            if (r <= 0) break;
            unsigned long long before = recvd / size;
            recvd += (unsigned long long)r;
            if (window == 1 && recvd / size > before && nsamples < MAX_SAMPLES) samples[nsamples++] = now() - tsend;
        }
    }
    *elapsed = now() - t0;
    close(fd);
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    free(rbuf);
    return (double)(recvd / size);
}

static void raw_test(const char *name, int type, size_t size) {
    double el = 1, msgs = raw_run(type, size, WINDOW, secs, &el);
    nsamples = 0;
    double el1 = 1;
    raw_run(type, size, 1, secs / 2, &el1);
    report(name, size, msgs, el, median());
}

/* ---- rcluster echo ---- */

static struct backlog {
    struct backlog *next;
    size_t len;
    unsigned char data[];
} *bl_head, *bl_tail;

static void worker_flush(void) {
    while (bl_head) {
        int r = cluster_send(0, bl_head->data, bl_head->len);
        if (r == CLUSTER_E_AGAIN) return;
        struct backlog *b = bl_head;
        bl_head = b->next;
        if (!bl_head) bl_tail = NULL;
        free(b);
    }
}

static void on_worker(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind == CLUSTER_EVENT_DRAIN) worker_flush();
    if (ev->kind != CLUSTER_EVENT_MESSAGE) return;
    if (!bl_head) {
        int r = cluster_send(0, ev->data, ev->len);
        if (r != CLUSTER_E_AGAIN) {
            if (r < 0) fprintf(stderr, "worker send: %s\n", cluster_strerror(r));
            return;
        }
    }
    struct backlog *b = malloc(sizeof *b + ev->len);
    b->next = NULL;
    b->len = ev->len;
    memcpy(b->data, ev->data, ev->len);
    if (bl_tail) bl_tail->next = b;
    else bl_head = b;
    bl_tail = b;
}

static int worker_main(void *ud) {
    if (cluster_worker_start(on_worker, ud) < 0) return 1;
    return cluster_run() == 0 ? 0 : 1;
}

static uint32_t wid;
static int batched;
static int phase;   /* 2*size index + (0 windowed, 1 rtt) */
static int window, blocked, stopping;
static long inflight;
static double done, t0, tend, tsend, win_msgs, win_el;

static void pump(void) {
    size_t size = SIZES[phase / 2];
    while (!blocked && !stopping && inflight < window) {
        double t = now();
        if (t >= tend) {
            stopping = 1;
            break;
        }
        int r = cluster_send(wid, payload, size);
        if (r == CLUSTER_E_AGAIN) {
            blocked = 1;
            break;
        }
        if (r < 0) {
            fprintf(stderr, "send: %s: %s\n", cluster_strerror(r), cluster_last_error());
            exit(1);
        }
        if (window == 1) tsend = t;
        inflight++;
    }
}

static void start_phase(void) {
    if (phase >= 2 * NSIZES) {
        cluster_shutdown(0);
        return;
    }
    window = phase % 2 ? 1 : WINDOW;
    done = 0;
    inflight = 0;
    blocked = 0;
    stopping = 0;
    nsamples = 0;
    t0 = now();
    tend = t0 + (phase % 2 ? secs / 2 : secs);
    pump();
}

static void on_primary(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind == CLUSTER_EVENT_READY) {
        wid = ev->worker_id;
        phase = 0;
        start_phase();
    } else if (ev->kind == CLUSTER_EVENT_DRAIN) {
        blocked = 0;
        pump();
    } else if (ev->kind == CLUSTER_EVENT_MESSAGE) {
        double t = now();
        inflight--;
        done++;
        if (window == 1 && nsamples < MAX_SAMPLES) samples[nsamples++] = t - tsend;
        if (t >= tend) stopping = 1;
        pump();
        if (stopping && inflight == 0) {
            if (phase % 2 == 0) {
                win_msgs = done;
                win_el = t - t0;
            } else {
                report(batched ? "rcluster-batched" : "rcluster", SIZES[phase / 2], win_msgs, win_el, median());
            }
            phase++;
            start_phase();
        }
    } else if (ev->kind == CLUSTER_EVENT_ERROR) {
        fprintf(stderr, "error: %.*s\n", (int)ev->len, (const char *)ev->data);
    }
}

int main(int argc, char **argv) {
    if (argc > 1) secs = atof(argv[1]);
    payload = malloc(1 << 20);
    memset(payload, 7, 1 << 20);
    batched = argc > 2 && strcmp(argv[2], "batched") == 0;
    if (batched) {
        cluster_set_batching(1);
    } else {
        /* the limit first, before the rcluster runtime exists */
        raw_test("raw-seqpacket", SOCK_SEQPACKET, 64);
        raw_test("raw-seqpacket", SOCK_SEQPACKET, 4096);
        raw_test("raw-stream", SOCK_STREAM, 1 << 20);
    }

    cluster_config *cfg = cluster_config_new();
    cluster_config_set_workers(cfg, 1);
    cluster_config_set_worker_main(cfg, worker_main, NULL);
    cluster_config_set_send_queue(cfg, (size_t)256 << 20, 65536);
    if (cluster_primary_start(cfg, on_primary, NULL) < 0) {
        fprintf(stderr, "ipc_c: %s\n", cluster_last_error());
        return 1;
    }
    cluster_config_free(cfg);
    return cluster_run() == 0 ? 0 : 1;
}
