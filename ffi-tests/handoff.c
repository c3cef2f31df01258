/* The accept-handoff path: the primary accepts on IPv4 and IPv6 listeners (port 0, shared)
 * and hands connections round-robin to FORK-mode workers, which get blocking, CLOEXEC fds
 * with the right listener index and peer address. */
#include "harness.h"
#include <arpa/inet.h>
#include <fcntl.h>

#define WORKERS 4

static void on_worker(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind != CLUSTER_EVENT_CONNECTION) return;
    int fl = fcntl(ev->fd, F_GETFL), fdfl = fcntl(ev->fd, F_GETFD);
    int peer_port = -1, family = -1;
    if (ev->peer && ev->peer_len >= sizeof(struct sockaddr_in)) {
        family = ev->peer->sa_family;
        if (family == AF_INET) peer_port = ntohs(((const struct sockaddr_in *)ev->peer)->sin_port);
        if (family == AF_INET6) peer_port = ntohs(((const struct sockaddr_in6 *)ev->peer)->sin6_port);
    }
    char req[1024];
    ssize_t r = read(ev->fd, req, sizeof req); /* the client sends one short line */
    (void)r;
    char resp[256];
    int n = snprintf(resp, sizeof resp, "worker %u listener %u family %d port %d blocking %d cloexec %d\n",
                     cluster_worker_id(), ev->listener, family, peer_port, !(fl & O_NONBLOCK), !!(fdfl & FD_CLOEXEC));
    ssize_t w = write(ev->fd, resp, (size_t)n);
    (void)w;
    close(ev->fd);
}

static int worker_main(void *ud) {
    OK(cluster_worker_start(on_worker, ud));
    return cluster_run() == 0 ? 0 : 3;
}

static volatile int ready, exits;
static void on_primary(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind == CLUSTER_EVENT_READY) ready++;
    if (ev->kind == CLUSTER_EVENT_EXIT) exits++;
}

/* One request; checks every field of the answer; returns the worker id. */
static int request(const char *host, int port, unsigned listener, int family) {
    int fd = tcp_connect(host, port);
    CHECK(fd >= 0, "connect %s:%d: %s", host, port, strerror(errno));
    struct sockaddr_storage me;
    socklen_t len = sizeof me;
    getsockname(fd, (struct sockaddr *)&me, &len);
    int my_port = ntohs(family == AF_INET ? ((struct sockaddr_in *)&me)->sin_port : ((struct sockaddr_in6 *)&me)->sin6_port);
    CHECK(write(fd, "hi\n", 3) == 3, "write");
    char buf[512];
    CHECK(read_all(fd, buf, sizeof buf) > 0, "no answer");
    close(fd);
    unsigned w, l;
    int fam, pport, blocking, cloexec;
    CHECK(sscanf(buf, "worker %u listener %u family %d port %d blocking %d cloexec %d", &w, &l, &fam, &pport, &blocking, &cloexec) == 6,
          "answer '%s'", buf);
    CHECK(l == listener, "listener %u, expected %u", l, listener);
    CHECK(fam == family && pport == my_port, "peer family %d port %d, expected %d %d", fam, pport, family, my_port);
    CHECK(blocking && cloexec, "the fd is blocking (%d) and CLOEXEC (%d)", blocking, cloexec);
    CHECK(w >= 1 && w <= WORKERS, "worker id %u", w);
    return (int)w;
}

int main(void) {
    test_deadline(60);
    cluster_config *cfg = cluster_config_new();
    OK(cluster_config_set_workers(cfg, WORKERS));
    OK(cluster_config_set_worker_main(cfg, worker_main, NULL));
    OK(cluster_config_set_signals(cfg, false));
    CHECK(OK(cluster_config_listen_tcp(cfg, "127.0.0.1", 0)) == 0, "first listener is index 0");
    /* IPv6 loopback when the machine has it. */
    int v6 = socket(AF_INET6, SOCK_STREAM, 0);
    struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    int have_v6 = v6 >= 0 && bind(v6, (struct sockaddr *)&a6, sizeof a6) == 0;
    if (v6 >= 0) close(v6);
    if (have_v6) CHECK(OK(cluster_config_listen_tcp(cfg, "::1", 0)) == 1, "second listener is index 1");
    OK(cluster_primary_start(cfg, on_primary, NULL));
    cluster_config_free(cfg);
    int port4 = OK(cluster_local_port(0));
    CHECK(port4 > 0, "port 0 was given a real port");
    { long long end = now_ms() + 20000; while (ready < WORKERS) { CHECK(now_ms() < end, "workers ready"); cluster_dispatch(50); } }

    /* The loop runs in this process: clients run in a forked child so it keeps turning. */
    pid_t client = fork();
    CHECK(client >= 0, "fork client");
    if (client == 0) {
        int counts[WORKERS + 1] = {0};
        for (int i = 0; i < 400; i++) counts[request("127.0.0.1", port4, 0, AF_INET)]++;
        for (int w = 1; w <= WORKERS; w++)
            CHECK(counts[w] == 100, "round-robin: worker %d got %d of 400 sequential connections", w, counts[w]);
        /* 64 connections open at once, then all served. */
        int fds[64];
        for (int i = 0; i < 64; i++) CHECK((fds[i] = tcp_connect("127.0.0.1", port4)) >= 0, "connect %d", i);
        for (int i = 0; i < 64; i++) CHECK(write(fds[i], "hi\n", 3) == 3, "write %d", i);
        for (int i = 0; i < 64; i++) {
            char buf[256];
            CHECK(read_all(fds[i], buf, sizeof buf) > 0 && strstr(buf, "worker "), "concurrent connection %d answered", i);
            close(fds[i]);
        }
        _exit(0);
    }
    int status = -1;
    long long end = now_ms() + 40000;
    while (waitpid(client, &status, WNOHANG) == 0) {
        CHECK(now_ms() < end, "the client finishes");
        cluster_dispatch(50);
    }
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the IPv4 client succeeded (status %d)", status);

    if (have_v6) {
        int port6 = OK(cluster_local_port(1));
        pid_t c6 = fork();
        CHECK(c6 >= 0, "fork");
        if (c6 == 0) {
            for (int i = 0; i < 8; i++) request("::1", port6, 1, AF_INET6);
            _exit(0);
        }
        end = now_ms() + 20000;
        while (waitpid(c6, &status, WNOHANG) == 0) {
            CHECK(now_ms() < end, "the IPv6 client finishes");
            cluster_dispatch(50);
        }
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the IPv6 client succeeded");
    }

    /* Counted when acknowledged: the last ACKs may still be on their way when the clients have
     * their answers. */
    uint64_t handed = 0, want = 400 + 64 + (have_v6 ? 8 : 0);
    end = now_ms() + 10000;
    for (;;) {
        handed = 0;
        for (uint32_t id = 1; id <= WORKERS; id++) {
            struct cluster_worker_info info;
            OK(cluster_worker_info(id, &info));
            handed += info.connections;
        }
        if (handed >= want || now_ms() > end) break;
        cluster_dispatch(20);
    }
    CHECK(handed == want, "connections counted: %llu, expected %llu", (unsigned long long)handed,
          (unsigned long long)want);

    OK(cluster_shutdown(10000));
    CHECK(cluster_run() == 0, "graceful stop");
    CHECK(exits == WORKERS, "every worker exited");
    CHECK(tcp_connect("127.0.0.1", port4) < 0, "the listener is closed after the stop");
    printf("handoff: ok (ipv6 %s)\n", have_v6 ? "tested" : "unavailable");
    return 0;
}
