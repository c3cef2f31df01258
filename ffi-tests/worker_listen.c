/* Workers that listen (cluster_listen_tcp/_unix in the worker, node:cluster's model), one case
 * per run: worker_listen <case> <fork|exec> [rr|shared|reuseport]
 *   share     3 workers listen on 127.0.0.1:0 and on one unix path: one LISTENING per worker
 *             and key, every worker gets the same listener index and port (cluster_local_port
 *             agrees in the primary and in the workers), requests on both keys are answered,
 *             round-robin splits them evenly; a listener the primary adds at run time reaches
 *             every worker (SHARED/REUSEPORT workers are told about it).
 *   inuse     a worker asks for a port another socket holds: CLUSTER_E_SYS, and the sentence
 *             names the address and says it is in use; the worker lives on.
 *   unlisten  2 workers under load: one unlistens (0 failed requests, the other takes all),
 *             then the other: the primary closes the port.
 *   respawn   the only worker listening is SIGKILLed: the port stays open, a client that
 *             connects meanwhile is answered by the replacement, which listens again
 *             (LISTENING again, same index and port).
 *   reload    3 workers listening, a rolling reload under load: 0 failed requests, every
 *             replacement listens again.
 *   env       cluster_fork_env: the variable reaches that worker only, and its respawn.
 * The primary's loop runs in this process; clients run in forked children. */
#include "harness.h"
#include "load.h"

#include <stdarg.h>
#include <sys/un.h>

#define MAX_IDS 64

static const char *which, *mode_name, *policy_name = "rr";
static char unix_path[108];

/* ---------------------------------------------------------------- worker side ---- */

static int tcp_index = -1;

static void report(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void report(const char *fmt, ...) {
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    OK(cluster_send(0, (const uint8_t *)line, (size_t)n));
}

static void on_worker(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind == CLUSTER_EVENT_CONNECTION) {
        http_answer(ev->fd);
    } else if (ev->kind == CLUSTER_EVENT_MESSAGE && ev->len == 8 && !memcmp(ev->data, "unlisten", 8)) {
        int rc = cluster_unlisten((uint32_t)tcp_index);
        report("unlistened %d", rc);
        /* A second time: it no longer listens there. */
        CHECK(cluster_unlisten((uint32_t)tcp_index) == CLUSTER_E_INVAL, "a second unlisten is INVAL");
    }
}

static int worker_main(void *ud) {
    (void)ud;
    OK(cluster_worker_start(on_worker, NULL));
    if (!strcmp(which, "inuse")) {
        int busy = atoi(getenv("WL_BUSY"));
        int rc = cluster_listen_tcp("127.0.0.1", (uint16_t)busy);
        report("inuse %d %s", rc, cluster_last_error());
        return cluster_run() == 0 ? 0 : 3;
    }
    if (!strcmp(which, "env")) {
        const char *g = getenv("GREETING");
        report("env %s", g ? g : "(none)");
    }
    tcp_index = OK(cluster_listen_tcp("127.0.0.1", 0));
    int port = OK(cluster_local_port((uint32_t)tcp_index));
    /* Asking again for the same key gives the same listener. */
    CHECK(OK(cluster_listen_tcp("127.0.0.1", 0)) == tcp_index, "a second listen on the same key");
    if (!strcmp(which, "share") && !strcmp(policy_name, "reuseport")) {
        /* SO_REUSEPORT is a TCP thing: a unix socket is refused, the worker lives on. */
        CHECK(cluster_listen_unix(unix_path) == CLUSTER_E_INVAL, "a unix listener with REUSEPORT");
        CHECK(strstr(cluster_last_error(), unix_path), "the sentence '%s' names the path", cluster_last_error());
        report("listened %d %d unix %d", tcp_index, port, -1);
    } else if (!strcmp(which, "share")) {
        int u = OK(cluster_listen_unix(unix_path));
        CHECK(u != tcp_index, "the unix key got the tcp listener's index %d", u);
        report("listened %d %d unix %d", tcp_index, port, u);
    } else {
        report("listened %d %d", tcp_index, port);
    }
    return cluster_run() == 0 ? 0 : 3;
}

/* ---------------------------------------------------------------- primary side ---- */

static int forks, listenings, exits, reloaded = -2;
static uint32_t forked[MAX_IDS], exited[MAX_IDS];
static pid_t pid_of[MAX_IDS];
static int listened_of[MAX_IDS]; /* LISTENING events per worker */
static int index_of[MAX_IDS], port_of[MAX_IDS], unix_of[MAX_IDS], unlistened_of[MAX_IDS];
static char addr_of[MAX_IDS][128], inuse_msg[512], env_of[MAX_IDS][64];
static int inuse_rc = 1;

static void on_primary(void *ud, const cluster_event *ev) {
    (void)ud;
    uint32_t id = ev->worker_id;
    CHECK(id < MAX_IDS, "worker id %u", id);
    char text[512] = {0};
    if (ev->data && ev->len) memcpy(text, ev->data, ev->len < sizeof text - 1 ? ev->len : sizeof text - 1);
    switch (ev->kind) {
    case CLUSTER_EVENT_FORK:
        forked[forks++ % MAX_IDS] = id;
        pid_of[id] = ev->pid;
        break;
    case CLUSTER_EVENT_LISTENING:
        listenings++;
        if (listened_of[id]++ == 0 || text[0] != '/') snprintf(addr_of[id], sizeof addr_of[id], "%.100s", text);
        break;
    case CLUSTER_EVENT_EXIT:
        exited[exits++ % MAX_IDS] = id;
        break;
    case CLUSTER_EVENT_RELOADED:
        reloaded = ev->exit_code;
        break;
    case CLUSTER_EVENT_ERROR:
        fprintf(stderr, "ERROR event about worker %u: %s\n", id, text);
        break;
    case CLUSTER_EVENT_MESSAGE: {
        int a, b, c;
        if (sscanf(text, "listened %d %d unix %d", &a, &b, &c) == 3) {
            index_of[id] = a, port_of[id] = b, unix_of[id] = c;
        } else if (sscanf(text, "listened %d %d", &a, &b) == 2) {
            index_of[id] = a, port_of[id] = b;
        } else if (sscanf(text, "unlistened %d", &a) == 1) {
            unlistened_of[id] = a == 0 ? 1 : a;
        } else if (sscanf(text, "inuse %d", &a) == 1) {
            inuse_rc = a;
            snprintf(inuse_msg, sizeof inuse_msg, "%s", strchr(strchr(text, ' ') + 1, ' ') + 1);
        } else if (!strncmp(text, "env ", 4)) {
            snprintf(env_of[id], sizeof env_of[id], "%.60s", text + 4);
        } else {
            FAIL("unexpected message '%s' from worker %u", text, id);
        }
        break;
    }
    default:
        break;
    }
}

static int32_t policy_of(const char *name) {
    if (!strcmp(name, "shared")) return CLUSTER_POLICY_SHARED;
    if (!strcmp(name, "reuseport")) return CLUSTER_POLICY_REUSEPORT;
    return CLUSTER_POLICY_ROUND_ROBIN;
}

/* A cluster of `n` workers with no listener of its own. */
static void start_cluster(uint32_t n, const char *extra_env) {
    cluster_config *cfg = cluster_config_new();
    CHECK(cfg != NULL, "cluster_config_new");
    OK(cluster_config_set_workers(cfg, n));
    OK(cluster_config_set_signals(cfg, false));
    OK(cluster_config_set_policy(cfg, policy_of(policy_name)));
    if (!strcmp(mode_name, "exec")) {
        OK(cluster_config_set_mode(cfg, CLUSTER_MODE_EXEC));
    } else {
        OK(cluster_config_set_worker_main(cfg, worker_main, NULL));
    }
    if (extra_env) OK(cluster_config_add_env(cfg, extra_env));
    OK(cluster_primary_start(cfg, on_primary, NULL));
    cluster_config_free(cfg);
}

/* Turns the loop until `n` workers have reported their listeners (LISTENING and the report). */
static void wait_listening(int n, int timeout_ms) {
    long long end = now_ms() + timeout_ms;
    for (;;) {
        int done = 0;
        for (int id = 1; id < MAX_IDS; id++) done += listened_of[id] > 0 && port_of[id] > 0;
        if (done >= n) return;
        if (now_ms() > end) FAIL("timed out after %d ms: %d of %d workers listening", timeout_ms, done, n);
        cluster_dispatch(20);
    }
}

/* The port in "127.0.0.1:34567". */
static int port_in(const char *addr) {
    const char *colon = strrchr(addr, ':');
    return colon ? atoi(colon + 1) : -1;
}

/* One HTTP request over the unix socket; the worker id that answered, or -1 (in a child). */
static int unix_request(const char *path) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) return -1;
    const char req[] = "GET / HTTP/1.0\r\n\r\n";
    char buf[512];
    if (write(fd, req, sizeof req - 1) != (ssize_t)(sizeof req - 1) || read_all(fd, buf, sizeof buf) <= 0) {
        close(fd);
        return -1;
    }
    close(fd);
    const char *w = strstr(buf, "worker ");
    return w ? atoi(w + 7) : -1;
}

static int count_of(const uint32_t *ids, int n, uint32_t id) {
    int c = 0;
    for (int i = 0; i < n; i++) c += ids[i] == id;
    return c;
}

static void stop_cluster(void) {
    OK(cluster_shutdown(5000));
    long long end = now_ms() + 15000;
    int32_t rc;
    while ((rc = cluster_dispatch(50)) >= 0)
        if (now_ms() > end) FAIL("the cluster did not stop within 15 s");
    CHECK(rc == CLUSTER_E_CLOSED, "cluster_dispatch returned %d at the end", rc);
}

static void case_share(void) {
    start_cluster(3, NULL);
    wait_listening(3, 15000);
    int index = -1, port = -1, uindex = -1;
    for (int id = 1; id < MAX_IDS; id++) {
        if (!port_of[id]) continue;
        if (index < 0) index = index_of[id], port = port_of[id], uindex = unix_of[id];
        CHECK(index_of[id] == index && port_of[id] == port && unix_of[id] == uindex,
              "worker %d got listener %d port %d unix %d; worker 1 got %d %d %d", id, index_of[id], port_of[id],
              unix_of[id], index, port, uindex);
        CHECK(port_in(addr_of[id]) == port, "worker %d's LISTENING says %s, its port is %d", id, addr_of[id], port);
        int expect = uindex < 0 ? 1 : 2;
        CHECK(listened_of[id] == expect, "worker %d: %d LISTENING events, expected %d (one per key, however often asked)",
              id, listened_of[id], expect);
    }
    CHECK(port > 0 && OK(cluster_local_port((uint32_t)index)) == port, "cluster_local_port in the primary");
    uint32_t ids[60];
    int answered = probe(port, 60, ids);
    CHECK(answered == 60, "%d of 60 requests answered", answered);
    int distinct = 0;
    for (int id = 1; id < MAX_IDS; id++) {
        int c = count_of(ids, 60, (uint32_t)id);
        distinct += c > 0;
        if (!strcmp(policy_name, "rr") && port_of[id]) CHECK(c == 20, "round-robin: worker %d answered %d of 60", id, c);
    }
    printf("worker_listen share %s %s: port %d, 60 requests over %d workers\n", mode_name, policy_name, port, distinct);
    /* The unix key, in a child (the loop turns here). */
    if (uindex < 0) goto primary_listens;
    int p[2];
    CHECK(pipe2(p, O_CLOEXEC) == 0, "pipe");
    pid_t pid = fork_client((const int[]){p[1], -1});
    if (pid == 0) {
        int w = unix_request(unix_path);
        _exit(write(p[1], &w, sizeof w) == sizeof w ? 0 : 1);
    }
    close(p[1]);
    int status = dispatch_until_exit(pid, 10000, "the unix request");
    int w = -1;
    CHECK(WIFEXITED(status) && read(p[0], &w, sizeof w) == sizeof w && w > 0, "the unix request was not answered");
    close(p[0]);
primary_listens:
    /* A listener the primary adds at run time: every worker's. */
    int extra = OK(cluster_listen_tcp("127.0.0.1", 0));
    CHECK(extra != index && extra != uindex, "the primary's listener got index %d", extra);
    int extra_port = OK(cluster_local_port((uint32_t)extra));
    if (!strcmp(policy_name, "reuseport")) {
        /* The workers bind their own sockets once the primary's notice reaches them: until
         * then the port refuses connections. */
        long long end = now_ms() + 5000;
        while (probe(extra_port, 1, ids) != 1)
            if (now_ms() > end) FAIL("no REUSEPORT worker accepts on the primary's new listener within 5 s");
    }
    answered = probe(extra_port, 12, ids);
    CHECK(answered == 12, "%d of 12 requests to the primary's own listener answered", answered);
    stop_cluster();
    CHECK(access(unix_path, F_OK) != 0, "the unix socket file is left behind");
}

static void case_inuse(void) {
    /* A socket of ours holds a port (listening, no SO_REUSEADDR: nobody else may bind it). */
    int holder = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    CHECK(holder >= 0 && bind(holder, (struct sockaddr *)&a, sizeof a) == 0 && listen(holder, 8) == 0 &&
              getsockname(holder, (struct sockaddr *)&a, &len) == 0,
          "holding a port: %s", strerror(errno));
    char env[64], want[64];
    snprintf(env, sizeof env, "WL_BUSY=%d", ntohs(a.sin_port));
    snprintf(want, sizeof want, "127.0.0.1:%d", ntohs(a.sin_port));
    start_cluster(1, env);
    long long end = now_ms() + 15000;
    while (inuse_rc == 1) {
        if (now_ms() > end) FAIL("the worker did not report its listen");
        cluster_dispatch(20);
    }
    printf("worker_listen inuse: rc %d: %s\n", inuse_rc, inuse_msg);
    CHECK(inuse_rc == CLUSTER_E_SYS, "listen on a held port returned %d, expected CLUSTER_E_SYS", inuse_rc);
    CHECK(strstr(inuse_msg, want) && strstr(inuse_msg, "in use"), "the sentence '%s' does not name %s in use", inuse_msg,
          want);
    CHECK(listenings == 0, "%d LISTENING events for a failed listen", listenings);
    CHECK(OK(cluster_worker_kill(forked[0], 0)) == 0 && exits == 0, "the worker lives on");
    stop_cluster();
    close(holder);
}

/* Turns the loop until worker `id` reported its unlisten. */
static void wait_unlistened(uint32_t id) {
    long long end = now_ms() + 10000;
    while (!unlistened_of[id]) {
        if (now_ms() > end) FAIL("worker %u did not report its unlisten", id);
        cluster_dispatch(20);
    }
    CHECK(unlistened_of[id] == 1, "worker %u: cluster_unlisten returned %d", id, unlistened_of[id]);
}

/* Turns the loop for `ms` (the load keeps running). */
static void turn_for(int ms, const struct load *l) {
    long long end = now_ms() + ms;
    while (now_ms() < end) {
        cluster_dispatch(20);
        if (l) check_load_running(l);
    }
}

static void case_unlisten(void) {
    start_cluster(2, NULL);
    wait_listening(2, 15000);
    uint32_t a = forked[0], b = forked[1];
    int port = port_of[a];
    struct load l = start_load(port);
    turn_for(500, &l);
    OK(cluster_send(a, (const uint8_t *)"unlisten", 8));
    wait_unlistened(a);
    turn_for(800, &l);
    long ok, failed;
    stop_load(&l, &ok, &failed);
    printf("worker_listen unlisten: %ld answered, %ld failed while worker %u left the port\n", ok, failed, a);
    CHECK(failed == 0 && ok > 50, "%ld requests failed (%ld answered) around the unlisten", failed, ok);
    uint32_t ids[20];
    CHECK(probe(port, 20, ids) == 20, "requests after the unlisten");
    CHECK(count_of(ids, 20, b) == 20, "worker %u answered %d of 20 after worker %u unlistened", b,
          count_of(ids, 20, b), a);
    /* The last one leaves: the primary closes the port. */
    OK(cluster_send(b, (const uint8_t *)"unlisten", 8));
    wait_unlistened(b);
    long long end = now_ms() + 5000;
    for (;;) {
        cluster_dispatch(20);
        int fd = tcp_connect("127.0.0.1", port);
        if (fd < 0) break;
        close(fd);
        if (now_ms() > end) FAIL("port %d still accepts connections after every worker unlistened", port);
    }
    CHECK(cluster_local_port((uint32_t)index_of[a]) == CLUSTER_E_INVAL, "the closed listener still has a port");
    stop_cluster();
}

static void case_respawn(void) {
    start_cluster(1, NULL);
    wait_listening(1, 15000);
    uint32_t first = forked[0];
    int port = port_of[first], index = index_of[first];
    CHECK(kill(pid_of[first], SIGKILL) == 0, "kill: %s", strerror(errno));
    /* Once its EXIT is handled, no worker lives. (A connection handed to the worker in the
     * instant it dies, received but not acknowledged, is lost with it: worker_death.c covers
     * what the primary recovers there; this case is about the port.) */
    long long end = now_ms() + 10000;
    while (exits == 0) {
        if (now_ms() > end) FAIL("no EXIT for the killed worker %u", first);
        cluster_dispatch(20);
    }
    CHECK(exited[0] == first, "worker %u exited, not %u", exited[0], first);
    /* A client connects while no worker lives: the backlog holds it for the replacement. */
    int w = http_worker_in_child("127.0.0.1", port, 20000, "the request sent while the worker was dead");
    CHECK(w > 0 && (uint32_t)w != first, "the request during the respawn was answered by %d", w);
    wait_listening(2, 15000);
    CHECK(listened_of[w] > 0 && index_of[w] == index && port_of[w] == port,
          "the replacement %d listens on listener %d port %d, the first one had %d %d", w, index_of[w], port_of[w], index,
          port);
    printf("worker_listen respawn: worker %u killed, worker %d answered on the same port %d\n", first, w, port);
    stop_cluster();
}

static void case_reload(void) {
    start_cluster(3, NULL);
    wait_listening(3, 15000);
    int port = port_of[forked[0]];
    struct load l = start_load(port);
    turn_for(300, &l);
    OK(cluster_reload());
    long long end = now_ms() + 30000;
    while (reloaded == -2) {
        if (now_ms() > end) FAIL("no RELOADED within 30 s");
        cluster_dispatch(20);
        check_load_running(&l);
    }
    CHECK(reloaded == 0, "the reload ended with %d", reloaded);
    wait_listening(6, 15000);
    turn_for(300, &l);
    long ok, failed;
    stop_load(&l, &ok, &failed);
    printf("worker_listen reload %s: %ld answered, %ld failed\n", mode_name, ok, failed);
    CHECK(failed == 0 && ok > 50, "%ld requests failed (%ld answered) during the reload", failed, ok);
    for (int i = 3; i < 6; i++)
        CHECK(port_of[forked[i]] == port, "replacement %u listens on port %d, not %d", forked[i], port_of[forked[i]], port);
    stop_cluster();
}

static void case_env(void) {
    start_cluster(1, NULL);
    const char *env[] = {"GREETING=hello", "OTHER=1"};
    uint32_t id = (uint32_t)OK(cluster_fork_env(env, 2));
    wait_listening(2, 15000);
    CHECK(!strcmp(env_of[id], "hello"), "the worker forked with GREETING=hello saw '%s'", env_of[id]);
    CHECK(!strcmp(env_of[forked[0]], "(none)"), "worker %u saw GREETING='%s'", forked[0], env_of[forked[0]]);
    CHECK(kill(pid_of[id], SIGKILL) == 0, "kill: %s", strerror(errno));
    wait_listening(3, 20000);
    uint32_t respawned = forked[2];
    CHECK(!strcmp(env_of[respawned], "hello"), "the respawn of worker %u saw GREETING='%s'", id, env_of[respawned]);
    stop_cluster();
}

int main(int argc, char **argv) {
    CHECK(argc >= 3, "usage: worker_listen <case> <fork|exec> [rr|shared|reuseport]");
    which = argv[1];
    mode_name = argv[2];
    if (argc > 3) policy_name = argv[3];
    snprintf(unix_path, sizeof unix_path, "/tmp/rcluster-wl-%d.sock", cluster_is_worker() ? (int)getppid() : (int)getpid());
    if (cluster_is_worker()) return worker_main(NULL); /* EXEC mode */
    test_deadline(100);
    if (!strcmp(which, "share")) case_share();
    else if (!strcmp(which, "inuse")) case_inuse();
    else if (!strcmp(which, "unlisten")) case_unlisten();
    else if (!strcmp(which, "respawn")) case_respawn();
    else if (!strcmp(which, "reload")) case_reload();
    else if (!strcmp(which, "env")) case_env();
    else FAIL("unknown case %s", which);
    return 0;
}
