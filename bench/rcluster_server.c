/* The rcluster contestant: N FORK workers behind the primary (policy from argv), answering a
 * small HTTP response. bench/run.sh and bench/full.sh drive it with wrk.
 *   rcluster_server PORT WORKERS [rr|least|shared|reuseport] [close|keepalive|id]
 * close (default): one response per connection, then close (wrk -H 'Connection: close').
 * keepalive: many requests per connection until EOF; each worker runs its own epoll loop
 *            around cluster_fd()/cluster_dispatch() so it serves many connections at once.
 * id: like close, but the body names the worker ("w<id>"), for the balance count; and the
 *     primary prints each worker's cluster_worker_info().connections when it shuts down. */
#define _GNU_SOURCE
#include <rcluster.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

static const char RESPONSE[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
static const char RESPONSE_KA[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
static int least, keepalive, idmode, ep = -1;

static void serve_once(int fd) {
    char buf[4096];
    ssize_t n = read(fd, buf, sizeof buf); /* wrk's request fits one read */
    if (n > 0) {
        if (idmode) {
            char r[128];
            int len = snprintf(r, sizeof r, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nw%04u",
                               cluster_worker_id() % 10000);
            if (write(fd, r, (size_t)len) < 0) perror("write");
        } else if (write(fd, RESPONSE, sizeof RESPONSE - 1) < 0) {
            perror("write");
        }
    }
    close(fd);
    if (least) cluster_conn_done();
}

/* keep-alive: one response per request in what was read (wrk does not pipeline by default). */
static void serve_ka(int fd) {
    char buf[16384];
    ssize_t n = read(fd, buf, sizeof buf);
    if (n <= 0) {
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
        epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
        close(fd);
        if (least) cluster_conn_done();
        return;
    }
    int reqs = 0;
    for (ssize_t i = 0; i + 3 < n; i++)
        if (buf[i] == '\r' && buf[i + 1] == '\n' && buf[i + 2] == '\r' && buf[i + 3] == '\n') reqs++;
    if (reqs == 0) reqs = 1;
    char out[sizeof RESPONSE_KA * 16];
    size_t len = 0;
    for (int i = 0; i < reqs && i < 16; i++) memcpy(out + len, RESPONSE_KA, sizeof RESPONSE_KA - 1), len += sizeof RESPONSE_KA - 1;
    if (write(fd, out, len) < 0) {
        epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
        close(fd);
        if (least) cluster_conn_done();
    }
}

static void on_worker(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind != CLUSTER_EVENT_CONNECTION) return;
    if (keepalive) {
        struct epoll_event e = {.events = EPOLLIN, .data.fd = ev->fd};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, ev->fd, &e) < 0) close(ev->fd);
        return;
    }
    serve_once(ev->fd);
}

/* Policy "rr-wl": the workers listen themselves (cluster_listen_tcp), the config has none. */
static uint16_t worker_listen_port;

static int worker_main(void *ud) {
    if (keepalive) ep = epoll_create1(EPOLL_CLOEXEC);
    if (cluster_worker_start(on_worker, ud) < 0) return 1;
    if (worker_listen_port && cluster_listen_tcp("127.0.0.1", worker_listen_port) < 0) {
        fprintf(stderr, "rcluster_server worker: %s\n", cluster_last_error());
        return 1;
    }
    if (!keepalive) return cluster_run() == 0 ? 0 : 1;
    int cfd = cluster_fd();
    struct epoll_event e = {.events = EPOLLIN, .data.fd = cfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &e);
    for (;;) {
        struct epoll_event evs[64];
        int n = epoll_wait(ep, evs, 64, 100);
        int dispatch = n <= 0;
        for (int i = 0; i < n; i++) {
            if (evs[i].data.fd == cfd) dispatch = 1;
            else serve_ka(evs[i].data.fd);
        }
        if (dispatch && cluster_dispatch(0) == CLUSTER_E_CLOSED) return 0;
    }
}

static void on_primary(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind == CLUSTER_EVENT_READY) printf("ready %u\n", ev->worker_id), fflush(stdout);
    if (ev->kind == CLUSTER_EVENT_SHUTDOWN && idmode) {
        uint32_t ids[256];
        int n = cluster_workers(ids, 256);
        printf("connections");
        for (int i = 0; i < n && i < 256; i++) {
            struct cluster_worker_info info;
            if (cluster_worker_info(ids[i], &info) == 0) printf(" %llu", (unsigned long long)info.connections);
        }
        printf("\n");
        fflush(stdout);
    }
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    const char *policy = argc > 3 ? argv[3] : "rr";
    const char *mode = argc > 4 ? argv[4] : "close";
    keepalive = !strcmp(mode, "keepalive");
    idmode = !strcmp(mode, "id");
    cluster_policy p = CLUSTER_POLICY_ROUND_ROBIN;
    if (!strcmp(policy, "least")) p = CLUSTER_POLICY_LEAST_CONNECTIONS, least = 1;
    if (!strcmp(policy, "shared")) p = CLUSTER_POLICY_SHARED;
    if (!strcmp(policy, "reuseport")) p = CLUSTER_POLICY_REUSEPORT;
    cluster_config *cfg = cluster_config_new();
    cluster_config_set_workers(cfg, (uint32_t)atoi(argv[2]));
    cluster_config_set_worker_main(cfg, worker_main, NULL);
    cluster_config_set_policy(cfg, p);
    if (!strcmp(policy, "rr-wl")) worker_listen_port = (uint16_t)atoi(argv[1]);
    if ((!worker_listen_port && cluster_config_listen_tcp(cfg, "127.0.0.1", (uint16_t)atoi(argv[1])) < 0) ||
        cluster_primary_start(cfg, on_primary, NULL) < 0) {
        fprintf(stderr, "rcluster_server: %s\n", cluster_last_error());
        return 1;
    }
    cluster_config_free(cfg);
    return cluster_run() == 0 ? 0 : 1;
}
