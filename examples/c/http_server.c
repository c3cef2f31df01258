/* http_server.c: a small prefork HTTP server on rcluster.
 *
 *   http_server [port] [workers] [fork|exec] [rr|least|sticky|shared|reuseport]
 *   (defaults: 8080 4 fork rr)
 *
 * The primary binds 127.0.0.1:port, starts the workers and, with the default round-robin
 * policy, hands each connection to one of them in turn (least: to the one holding the fewest;
 * sticky: the same client address to the same worker; shared/reuseport: the workers accept by
 * themselves). The worker code is the same whatever the policy. Each worker answers with its id and pid, and logs what it answered.
 * Ctrl-C or SIGTERM: a graceful stop (in-flight requests finish), exit 0. SIGHUP: a rolling
 * reload (every worker replaced, never fewer ready). A crashed worker is replaced.
 * Try it: curl http://127.0.0.1:8080/   (RCLUSTER_LOG=debug shows the library's view)
 * Environment: HOST (the address to bind, default 127.0.0.1); METRICS=host:port serves
 * /metrics and /healthz there (a load balancer's health check; see docs/GUIDE.md "Past one
 * machine"), with HEALTHY_WORKERS (default 1) READY workers for /healthz to say 200;
 * DRAIN_DELAY_MS: on SIGTERM, /healthz says 503 and the server goes on serving that long first.
 *
 * A connection arrives as a blocking socket, and this worker serves one at a time: a client
 * that sends nothing, or reads nothing, holds the worker for as long as a read or a write
 * blocks. So the request must arrive within REQUEST_TIMEOUT_MS (a deadline for the whole
 * request head, not per read: a client sending a byte now and then gains nothing), writes time
 * out too (SO_SNDTIMEO), and SIGPIPE is ignored: writing to a client that has gone fails with
 * EPIPE instead of killing the worker. Slow clients in a row still add up: a worker kept from
 * its loop longer than the heartbeat timeout (10 s by default) is killed and replaced. A server
 * facing the internet serves its connections from a poll loop or threads instead. */
#define _GNU_SOURCE
#include <rcluster.h>

#include <arpa/inet.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* How long a client may keep a worker waiting for its request, or for room to write the answer. */
#define REQUEST_TIMEOUT_MS 3000

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- worker: one request per connection ---- */

static void serve(int fd, const struct sockaddr *peer) {
    struct timeval send_timeout = {.tv_sec = REQUEST_TIMEOUT_MS / 1000, .tv_usec = REQUEST_TIMEOUT_MS % 1000 * 1000};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &send_timeout, sizeof send_timeout);
    long long deadline = now_ms() + REQUEST_TIMEOUT_MS;
    char req[4096];
    size_t got = 0;
    while (got < sizeof req - 1) { /* read the request head, until the deadline */
        struct pollfd p = {.fd = fd, .events = POLLIN};
        long long left = deadline - now_ms();
        if (left <= 0 || poll(&p, 1, (int)left) <= 0) break; /* too slow (or poll failed) */
        ssize_t n = read(fd, req + got, sizeof req - 1 - got);
        if (n <= 0) break; /* EOF or an error */
        got += (size_t)n;
        req[got] = '\0';
        if (strstr(req, "\r\n\r\n")) break;
    }
    if (got == 0) { /* nothing came: no request to answer */
        close(fd);
        return;
    }
    req[got] = '\0';
    char method[16] = "?", path[256] = "?";
    sscanf(req, "%15s %255s", method, path);

    char body[128], head[256];
    int blen = snprintf(body, sizeof body, "Hello from worker %u (pid %d)\n", cluster_worker_id(), (int)getpid());
    int hlen = snprintf(head, sizeof head,
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n", blen);
    if (write(fd, head, (size_t)hlen) == hlen && write(fd, body, (size_t)blen) == blen) {
        char who[INET6_ADDRSTRLEN] = "?";
        int port = 0;
        if (peer && peer->sa_family == AF_INET) {
            inet_ntop(AF_INET, &((const struct sockaddr_in *)peer)->sin_addr, who, sizeof who);
            port = ntohs(((const struct sockaddr_in *)peer)->sin_port);
        }
        printf("worker %u answered %s %s from %s:%d\n", cluster_worker_id(), method, path, who, port);
        fflush(stdout);
    }
    close(fd);
}

static void on_worker(void *userdata, const cluster_event *ev) {
    (void)userdata;
    if (ev->kind == CLUSTER_EVENT_CONNECTION) {
        serve(ev->fd, ev->peer);
        cluster_conn_done(); /* lets the least-connections policy count what we hold */
    }
}

static int worker_main(void *userdata) {
    signal(SIGPIPE, SIG_IGN); /* a client that closed early must not kill the worker */
    if (cluster_worker_start(on_worker, userdata) < 0) {
        fprintf(stderr, "worker: %s\n", cluster_last_error());
        return 1;
    }
    return cluster_run() == 0 ? 0 : 1;
}

/* ---- primary: start, watch, stop ---- */

static void on_primary(void *userdata, const cluster_event *ev) {
    (void)userdata;
    switch (ev->kind) {
    case CLUSTER_EVENT_READY:
        printf("primary: worker %u (pid %d) is ready\n", ev->worker_id, ev->pid);
        break;
    case CLUSTER_EVENT_EXIT:
        printf("primary: worker %u exited (code %d, signal %d)\n", ev->worker_id, ev->exit_code, ev->signal);
        break;
    case CLUSTER_EVENT_SHUTDOWN:
        printf("primary: stopping gracefully\n");
        break;
    default:
        break;
    }
    fflush(stdout);
}

int main(int argc, char **argv) {
    if (cluster_is_worker()) return worker_main(NULL); /* EXEC mode workers land here */

    int port = argc > 1 ? atoi(argv[1]) : 8080;
    int workers = argc > 2 ? atoi(argv[2]) : 4;
    int exec_mode = argc > 3 && strcmp(argv[3], "exec") == 0;
    const char *policy_name = argc > 4 ? argv[4] : "rr";
    static const char *const names[] = {"rr", "least", "sticky", "shared", "reuseport"};
    cluster_policy policy = CLUSTER_POLICY_ROUND_ROBIN; /* the names are in CLUSTER_POLICY_* order */
    for (cluster_policy p = 0; p < 5; p++)
        if (strcmp(policy_name, names[p]) == 0) policy = p;
    cluster_log_init(); /* RCLUSTER_LOG=debug for more */

    cluster_config *cfg = cluster_config_new();
    cluster_config_set_workers(cfg, (uint32_t)workers);
    cluster_config_set_worker_main(cfg, worker_main, NULL);
    cluster_config_set_mode(cfg, exec_mode ? CLUSTER_MODE_EXEC : CLUSTER_MODE_FORK);
    cluster_config_set_grace(cfg, 10000);
    cluster_config_set_policy(cfg, policy);
    /* Under systemd socket activation (examples/systemd/) the socket comes from systemd. */
    int inherited = cluster_config_listen_systemd(cfg);
    const char *host = getenv("HOST") ? getenv("HOST") : "127.0.0.1";
    const char *metrics = getenv("METRICS");
    const char *healthy = getenv("HEALTHY_WORKERS");
    const char *drain = getenv("DRAIN_DELAY_MS");
    if ((inherited <= 0 && cluster_config_listen_tcp(cfg, host, (uint16_t)port) < 0) ||
        (metrics && cluster_config_set_metrics(cfg, metrics) < 0) ||
        (healthy && cluster_config_set_healthy_workers(cfg, (uint32_t)atoi(healthy)) < 0) ||
        (drain && cluster_config_set_drain_delay(cfg, (uint32_t)atoi(drain)) < 0) ||
        cluster_primary_start(cfg, on_primary, NULL) < 0) {
        fprintf(stderr, "http_server: %s\n", cluster_last_error());
        cluster_config_free(cfg);
        return 1;
    }
    cluster_config_free(cfg);
    printf("primary %d: serving http://%s:%d/ with %d workers (%s mode, %s); Ctrl-C stops\n", (int)getpid(), host,
           cluster_local_port(0), workers, exec_mode ? "exec" : "fork", names[policy]);
    if (metrics) printf("primary %d: metrics on http://%s/metrics and /healthz\n", (int)getpid(), metrics);
    fflush(stdout);
    int rc = cluster_run();
    if (rc < 0) fprintf(stderr, "http_server: %s\n", cluster_last_error());
    return rc < 0 ? 1 : 0;
}
