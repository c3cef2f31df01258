/* Hostile workers: in EXEC mode, worker 1 writes a garbage datagram straight onto its channel
 * and worker 2 one far bigger than any valid frame. The primary reports each with an ERROR
 * event and kills it (EXIT by SIGKILL), and carries on: the healthy worker 3 still answers,
 * and a newly forked worker becomes READY and answers too. Then a graceful shutdown that
 * leaves no process behind. */
#include "harness.h"

#define WORKERS 3
#define MAX_IDS 16
#define GARBAGE_LEN 40
#define HUGE_LEN (200 * 1024)
#define HUGE_MIN (100 * 1024)

/* ---- worker side ---- */

static int channel_fd(void) {
    const char *s = getenv("RCLUSTER_CHANNEL_FD");
    CHECK(s != NULL && *s, "RCLUSTER_CHANNEL_FD is set in an EXEC-mode worker");
    char *end;
    long fd = strtol(s, &end, 10);
    CHECK(*end == '\0' && fd >= 0 && fd < 1 << 20, "RCLUSTER_CHANNEL_FD='%s'", s);
    int type = 0;
    socklen_t len = sizeof type;
    CHECK(getsockopt((int)fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 && type == SOCK_SEQPACKET,
          "fd %ld is the SOCK_SEQPACKET channel (%s)", fd, strerror(errno));
    return (int)fd;
}

/* One datagram of len bytes straight onto the channel (non-blocking: wait a bounded time for
 * room). Returns 0, or the errno of a failure other than EAGAIN. */
static int raw_send(int fd, const void *buf, size_t len) {
    long long end = now_ms() + 5000;
    for (;;) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
        if (n == (ssize_t)len) return 0;
        CHECK(n < 0, "a datagram went out short: %zd of %zu bytes", n, len);
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) return errno;
        CHECK(now_ms() < end, "no room on the channel for %zu bytes within 5 s", len);
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        poll(&p, 1, 100);
    }
}

static void send_garbage(void) {
    unsigned char buf[GARBAGE_LEN];
    memset(buf, 0xAB, sizeof buf);
    int err = raw_send(channel_fd(), buf, sizeof buf);
    CHECK(err == 0, "send of %d garbage bytes: %s", GARBAGE_LEN, strerror(err));
}

static void send_huge(void) {
    int fd = channel_fd();
    unsigned char *buf = malloc(HUGE_LEN);
    CHECK(buf != NULL, "malloc");
    memset(buf, 0xCD, HUGE_LEN);
    size_t len = HUGE_LEN;
    int err;
    /* The socket's send buffer bounds a datagram: step down to the largest that goes. */
    while ((err = raw_send(fd, buf, len)) == EMSGSIZE && len - 4096 >= HUGE_MIN) len -= 4096;
    CHECK(err == 0, "send of a %zu-byte datagram: %s", len, strerror(err));
    fprintf(stderr, "[worker %u] sent a %zu-byte datagram\n", cluster_worker_id(), len);
    free(buf);
}

static void on_worker(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind != CLUSTER_EVENT_MESSAGE || ev->worker_id != 0) return;
    char text[64] = {0};
    if (ev->len) memcpy(text, ev->data, ev->len < sizeof text - 1 ? ev->len : sizeof text - 1);
    if (strcmp(text, "ping") == 0) {
        char msg[32];
        int n = snprintf(msg, sizeof msg, "pong %u", cluster_worker_id());
        OK(cluster_send(0, (const uint8_t *)msg, (size_t)n));
    } else if (strcmp(text, "garbage") == 0) {
        send_garbage();
    } else if (strcmp(text, "huge") == 0) {
        send_huge();
    } else {
        FAIL("worker %u: unexpected message '%s'", cluster_worker_id(), text);
    }
}

static int worker_main(void *ud) {
    OK(cluster_worker_start(on_worker, ud));
    return cluster_run() == 0 ? 0 : 3;
}

/* ---- primary side ---- */

static volatile int ready[MAX_IDS], pongs[MAX_IDS], errors[MAX_IDS], exited[MAX_IDS];
static int exit_code[MAX_IDS], exit_signal[MAX_IDS], exit_after_disconnect[MAX_IDS];
static pid_t pids[MAX_IDS];
static uint32_t max_id; /* the highest id a FORK event named */
static volatile int all_ready, misbehaved_done, stopping;

static int hostile(uint32_t id) { return id == 1 || id == 2; }

static void on_primary(void *ud, const cluster_event *ev) {
    (void)ud;
    uint32_t id = ev->worker_id;
    if (ev->kind == CLUSTER_EVENT_SHUTDOWN || ev->kind > CLUSTER_EVENT_ERROR) return; /* not about one worker */
    CHECK(id >= 1 && id < MAX_IDS, "event %u about worker %u", ev->kind, id);
    switch (ev->kind) {
    case CLUSTER_EVENT_FORK:
        CHECK(ev->pid > 0 && pids[id] == 0, "fork event for worker %u, pid %d", id, ev->pid);
        pids[id] = ev->pid;
        if (id > max_id) max_id = id;
        break;
    case CLUSTER_EVENT_READY:
        ready[id] = 1;
        if (ready[1] && ready[2] && ready[3]) all_ready = 1;
        break;
    case CLUSTER_EVENT_MESSAGE: {
        char text[64] = {0};
        if (ev->len) memcpy(text, ev->data, ev->len < sizeof text - 1 ? ev->len : sizeof text - 1);
        unsigned who;
        CHECK(sscanf(text, "pong %u", &who) == 1 && who == id, "message '%s' from worker %u", text, id);
        pongs[id]++;
        break;
    }
    case CLUSTER_EVENT_ERROR:
        CHECK(ev->data != NULL && ev->len > 0, "an ERROR event carries a sentence");
        fprintf(stderr, "ERROR event about worker %u: %.*s\n", id, (int)ev->len, (const char *)ev->data);
        CHECK(hostile(id), "ERROR event about well-behaved worker %u: %.*s", id, (int)ev->len, (const char *)ev->data);
        errors[id]++;
        break;
    case CLUSTER_EVENT_EXIT:
        CHECK(!exited[id], "worker %u exited twice", id);
        CHECK(ev->pid == pids[id], "exit of worker %u names pid %d, it was %d", id, ev->pid, pids[id]);
        exited[id] = 1;
        exit_code[id] = ev->exit_code;
        exit_signal[id] = ev->signal;
        exit_after_disconnect[id] = ev->exited_after_disconnect;
        if (!hostile(id) && !stopping)
            FAIL("well-behaved worker %u exited: code %d signal %d", id, ev->exit_code, ev->signal);
        break;
    default:
        break;
    }
    misbehaved_done = errors[1] && errors[2] && exited[1] && exited[2];
}

static void ping(uint32_t id) {
    int before = pongs[id];
    OK(cluster_send(id, (const uint8_t *)"ping", 4));
    long long end = now_ms() + 10000;
    while (pongs[id] == before) {
        CHECK(now_ms() < end, "worker %u answers a ping", id);
        int32_t rc = cluster_dispatch(50);
        CHECK(rc >= 0, "cluster_dispatch returned %d", rc);
    }
}

int main(void) {
    if (cluster_is_worker()) return worker_main(NULL); /* EXEC mode lands here */
    test_deadline(60);

    cluster_config *cfg = cluster_config_new();
    CHECK(cfg != NULL, "config");
    OK(cluster_config_set_mode(cfg, CLUSTER_MODE_EXEC));
    OK(cluster_config_set_workers(cfg, WORKERS));
    OK(cluster_config_set_signals(cfg, false));
    OK(cluster_primary_start(cfg, on_primary, NULL));
    cluster_config_free(cfg);

    dispatch_until(&all_ready, 20000, "workers 1-3 READY");
    for (uint32_t id = 1; id <= WORKERS; id++) ping(id);

    /* Workers 1 and 2 break the protocol. */
    OK(cluster_send(1, (const uint8_t *)"garbage", 7));
    OK(cluster_send(2, (const uint8_t *)"huge", 4));
    dispatch_until(&misbehaved_done, 15000, "ERROR and EXIT events for workers 1 and 2");
    for (uint32_t id = 1; id <= 2; id++) {
        CHECK(errors[id] == 1, "one ERROR event about worker %u (%d)", id, errors[id]);
        CHECK(exit_signal[id] == SIGKILL && exit_code[id] == -1, "worker %u killed by SIGKILL (signal %d, code %d)", id,
              exit_signal[id], exit_code[id]);
        struct cluster_worker_info info;
        EXPECT_ERR(cluster_worker_info(id, &info), CLUSTER_E_NOWORKER);
        EXPECT_ERR(cluster_send(id, (const uint8_t *)"ping", 4), CLUSTER_E_NOWORKER);
        CHECK(pid_gone(pids[id]), "worker %u (pid %d) is gone", id, pids[id]);
    }

    /* The primary carries on: worker 3 still answers. */
    ping(3);
    struct cluster_worker_info info;
    OK(cluster_worker_info(3, &info));
    CHECK(info.state == CLUSTER_WORKER_READY && info.pid == pids[3], "worker 3 is ready (state %u)", info.state);

    /* And a new worker starts, gets the next id, becomes READY and answers. */
    uint32_t expect_id = max_id + 1; /* 4, unless the primary respawned 1 and 2 itself */
    int32_t id = OK(cluster_fork());
    CHECK((uint32_t)id == expect_id && id < MAX_IDS, "cluster_fork returned %d, expected %u", id, expect_id);
    {
        long long end = now_ms() + 20000;
        while (!ready[id]) {
            CHECK(now_ms() < end, "worker %d READY", id);
            CHECK(cluster_dispatch(50) >= 0, "dispatch");
        }
    }
    CHECK(pids[id] > 0, "a FORK event for worker %d", id);
    ping((uint32_t)id);
    ping(3);

    stopping = 1;
    OK(cluster_shutdown(5000));
    CHECK(cluster_run() == 0, "run returns 0 after a graceful stop");
    for (uint32_t w = 1; w <= max_id; w++) {
        if (!pids[w]) continue;
        CHECK(exited[w], "an EXIT event for worker %u", w);
        if (!hostile(w))
            CHECK(exit_code[w] == 0 && exit_signal[w] == 0 && exit_after_disconnect[w], "worker %u stopped cleanly (code %d signal %d after_disconnect %d)",
                  w, exit_code[w], exit_signal[w], exit_after_disconnect[w]);
        CHECK(pid_gone(pids[w]), "worker %u (pid %d) is gone", w, pids[w]);
    }
    EXPECT_ERR(cluster_dispatch(0), CLUSTER_E_CLOSED);
    printf("hostile: ok\n");
    return 0;
}
