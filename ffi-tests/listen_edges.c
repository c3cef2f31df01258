/* Workers that listen, at the edges (review findings on cluster_listen_*), one case per run:
 * listen_edges <case> [rr|shared]
 *   port0      the config listens on 127.0.0.1:0; a worker asking for 127.0.0.1:0 gets a listener
 *              and port of its own, not the config's (a config's "any port" is another server).
 *   merge      worker 1 listens on 127.0.0.1:0, worker 2 does not; the primary then listens on
 *              that very address: it gets the same listener, which becomes every worker's. Both
 *              workers learn it: worker 1 can no longer unlisten it (INVAL), worker 2 knows its
 *              port (SHARED: it got the socket), and both answer on it.
 *   starve     worker 1 listens on a port of its own and is stopped with 64 connections in
 *              flight, then killed: they come back to the primary and wait for its
 *              replacement (a 5 s backoff). Meanwhile the config's listener, every worker's,
 *              is still served by worker 2: connections waiting for one listener's workers
 *              do not take the room of the others'.
 *   backlog    a unix path where a server listens that never accepts, its backlog full: a
 *              worker asking for that path gets CLUSTER_E_SYS naming it ("another server"),
 *              and the primary's loop never blocks probing it.
 *   wake       a message that reaches a worker while it waits in cluster_listen_* is delivered
 *              by its next cluster_run, with no heartbeat or other traffic to wake the loop.
 *   churn      a worker listens on a new address and unlistens it, 300 times, while another worker
 *              is starting (never READY): each listener closes at its unlisten, so none of the
 *              300 is refused and the primary holds no more fds at the end than at the start.
 *   sticky     STICKY: workers 1 and 2 listen on one address, worker 3 does not (it has room,
 *              so the cluster has capacity). The clients' address hashes to worker 2, which
 *              sleeps 4 s in its first connection: connections wait for it in the primary, and
 *              the primary's loop must not spin meanwhile (a listener polled while its workers
 *              have no room beyond what already waits would wake it every turn for nothing).
 *   lowfd      the primary runs with a soft RLIMIT_NOFILE of 96; one worker asks for 80 unix
 *              paths: the primary binds some, then refuses the rest ("short of fds"), keeping
 *              fds for its own work: cluster_fork() still starts a worker that becomes READY.
 *   paths      a relative unix path is the worker's (resolved in its working directory, not
 *              the primary's); the config's unix socket asked for through a symlinked
 *              directory is that listener (LISTENING once for the worker, and no connection
 *              from a probe of our own socket reaches anyone).
 * The primary's loop runs in this process; clients run in forked children or here. */
#include "harness.h"
#include "load.h"

#include <poll.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/un.h>

#define MAX_IDS 16
#define CHURN 300

static const char *which, *policy_name = "rr";
static char unix_path[108];

/* ---------------------------------------------------------------- worker side ------ */

static int tcp_index = -1;

static void report(const char *line) { OK(cluster_send(0, (const uint8_t *)line, strlen(line))); }

static void on_worker(void *ud, const cluster_event *ev) {
    (void)ud;
    char line[160];
    static int slept;
    if (ev->kind == CLUSTER_EVENT_CONNECTION && !strcmp(which, "sticky") && cluster_worker_id() == 2 && !slept++) {
        struct timespec ts = {.tv_sec = 4, .tv_nsec = 0};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
        }
        close(ev->fd);
    } else if (ev->kind == CLUSTER_EVENT_CONNECTION) {
        http_answer(ev->fd);
    } else if (ev->kind == CLUSTER_EVENT_MESSAGE && ev->len == 4 && !memcmp(ev->data, "ping", 4)) {
        report("pong");
    } else if (ev->kind == CLUSTER_EVENT_MESSAGE && ev->len > 5 && !memcmp(ev->data, "port ", 5)) {
        /* "port I": this worker's view of listener I, and whether it can unlisten it. */
        char text[32] = {0};
        memcpy(text, ev->data, ev->len < sizeof text - 1 ? ev->len : sizeof text - 1);
        uint32_t index = (uint32_t)atoi(text + 5);
        int port = cluster_local_port(index);
        int un = tcp_index == (int)index ? cluster_unlisten(index) : 1;
        snprintf(line, sizeof line, "port %d unlisten %d", port, un);
        report(line);
    }
}

static int worker_main(void *ud) {
    (void)ud;
    char line[160];
    OK(cluster_worker_start(on_worker, NULL));
    uint32_t me = cluster_worker_id();
    if (!strcmp(which, "port0")) {
        tcp_index = OK(cluster_listen_tcp("127.0.0.1", 0));
        snprintf(line, sizeof line, "listened %d %d", tcp_index, OK(cluster_local_port((uint32_t)tcp_index)));
        report(line);
    } else if (!strcmp(which, "merge") || !strcmp(which, "starve") || !strcmp(which, "sticky")) {
        if (!strcmp(which, "sticky") && me == 3) {
            report("idle");
            return cluster_run() == 0 ? 0 : 3;
        }
        if (me != 2 || !strcmp(which, "sticky")) { /* worker 1, and its replacement (sticky: 1 and 2) */
            tcp_index = OK(cluster_listen_tcp("127.0.0.1", 0));
            snprintf(line, sizeof line, "listened %d %d", tcp_index, OK(cluster_local_port((uint32_t)tcp_index)));
            report(line);
        } else {
            report("idle");
        }
    } else if (!strcmp(which, "backlog")) {
        int rc = cluster_listen_unix(unix_path);
        snprintf(line, sizeof line, "backlog %d %.120s", rc, cluster_last_error());
        report(line);
    } else if (!strcmp(which, "wake")) {
        /* The primary answers the first with a "ping" right behind the answer: it arrives
         * while this worker waits for the second answer. */
        OK(cluster_listen_tcp("127.0.0.1", 0));
        OK(cluster_listen_unix(unix_path));
        report("listened 0 0");
        /* A host that runs its own loop and dispatches only when cluster_fd() is readable
         * (as the Node and Python bindings do). */
        for (;;) {
            struct pollfd pfd = {.fd = cluster_fd(), .events = POLLIN};
            int n = poll(&pfd, 1, 30000);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) return 4;
            if (cluster_dispatch(0) < 0) return 0;
        }
    } else if (!strcmp(which, "lowfd")) {
        int ok = 0, refused = 0, other = 0;
        char why[120] = "";
        for (int i = 0; i < 80; i++) {
            char path[108];
            snprintf(path, sizeof path, "%.90s.%d", unix_path, i);
            int rc = cluster_listen_unix(path);
            if (rc >= 0) ok++;
            else if (strstr(cluster_last_error(), "short of fds")) refused++, snprintf(why, sizeof why, "%s", cluster_last_error());
            else other++, snprintf(why, sizeof why, "%s", cluster_last_error());
        }
        snprintf(line, sizeof line, "lowfd %d %d %d %.100s", ok, refused, other, why);
        report(line);
    } else if (!strcmp(which, "paths")) {
        char dir[108];
        snprintf(dir, sizeof dir, "%.90s.w", unix_path);
        CHECK(chdir(dir) == 0, "chdir %s: %s", dir, strerror(errno));
        int rel = OK(cluster_listen_unix("rel.sock"));
        char linked[108];
        snprintf(linked, sizeof linked, "%.90s.l/p.sock", unix_path);
        int cfg = OK(cluster_listen_unix(linked));
        snprintf(line, sizeof line, "paths %d %d", rel, cfg);
        report(line);
    } else if (!strcmp(which, "churn")) {
        if (me != 1) return cluster_run() == 0 ? 0 : 3; /* never READY: "on its way" */
        int refused = 0, first_error = 0;
        char why[120] = "";
        for (int i = 0; i < CHURN; i++) {
            /* Another address each time: 127.0.0.1, 127.0.0.2, ... (all loopback). */
            char host[32];
            snprintf(host, sizeof host, "127.0.%d.%d", i / 250, i % 250 + 1);
            int index = cluster_listen_tcp(host, 0);
            if (index < 0) {
                if (!refused++) first_error = index, snprintf(why, sizeof why, "%s", cluster_last_error());
                continue;
            }
            OK(cluster_unlisten((uint32_t)index));
        }
        snprintf(line, sizeof line, "churned %d %d %.100s", refused, first_error, why);
        report(line);
    }
    return cluster_run() == 0 ? 0 : 3;
}

/* ---------------------------------------------------------------- primary side ----- */

static int listenings, forks, exits, pongs, idles;
static uint32_t forked[MAX_IDS];
static pid_t pid_of[MAX_IDS];
static int index_of[MAX_IDS], port_of[MAX_IDS], asked_port[MAX_IDS], asked_unlisten[MAX_IDS];
static int churn_refused = -1, churn_error, backlog_rc = 1;
static char churn_why[128], backlog_msg[256];
static int ping_on_listening; /* "wake": answer the first LISTENING with a ping */
static int lowfd_ok = -1, lowfd_refused, lowfd_other, paths_rel = -100, paths_cfg = -100, ready_count;
static char lowfd_why[200], listening_text[MAX_IDS][128];

static void on_primary(void *ud, const cluster_event *ev) {
    (void)ud;
    uint32_t id = ev->worker_id;
    CHECK(id < MAX_IDS, "worker id %u", id);
    char text[512] = {0};
    if (ev->data && ev->len) memcpy(text, ev->data, ev->len < sizeof text - 1 ? ev->len : sizeof text - 1);
    int a, b;
    switch (ev->kind) {
    case CLUSTER_EVENT_FORK:
        forked[forks++ % MAX_IDS] = id;
        pid_of[id] = ev->pid;
        break;
    case CLUSTER_EVENT_LISTENING:
        if (listenings++ == 0 && ping_on_listening) OK(cluster_send(id, (const uint8_t *)"ping", 4));
        snprintf(listening_text[listenings % MAX_IDS], sizeof listening_text[0], "%.120s", text);
        break;
    case CLUSTER_EVENT_READY:
        ready_count++;
        break;
    case CLUSTER_EVENT_EXIT:
        exits++;
        break;
    case CLUSTER_EVENT_MESSAGE:
        if (sscanf(text, "listened %d %d", &a, &b) == 2) {
            index_of[id] = a, port_of[id] = b == 0 ? -1 : b;
        } else if (sscanf(text, "port %d unlisten %d", &a, &b) == 2) {
            asked_port[id] = a, asked_unlisten[id] = b;
        } else if (sscanf(text, "churned %d %d", &a, &b) == 2) {
            churn_refused = a, churn_error = b;
            const char *why = strchr(strchr(strchr(text, ' ') + 1, ' ') + 1, ' ');
            snprintf(churn_why, sizeof churn_why, "%s", why ? why + 1 : "");
        } else if (sscanf(text, "backlog %d", &a) == 1) {
            backlog_rc = a;
            snprintf(backlog_msg, sizeof backlog_msg, "%s", strchr(strchr(text, ' ') + 1, ' ') + 1);
        } else if (sscanf(text, "lowfd %d %d %d", &a, &b, &lowfd_other) == 3) {
            lowfd_ok = a, lowfd_refused = b;
            snprintf(lowfd_why, sizeof lowfd_why, "%.190s", text);
        } else if (sscanf(text, "paths %d %d", &a, &b) == 2) {
            paths_rel = a, paths_cfg = b;
        } else if (!strcmp(text, "pong")) {
            pongs++;
        } else if (!strcmp(text, "idle")) {
            idles++;
        } else {
            FAIL("unexpected message '%s' from worker %u", text, id);
        }
        break;
    case CLUSTER_EVENT_ERROR:
        fprintf(stderr, "ERROR event about worker %u: %s\n", id, text);
        break;
    default:
        break;
    }
}

/* A FORK-mode cluster of `n` workers; `port0`: with a config listener on 127.0.0.1:0;
 * `backoff_ms`: every death waits that long for its replacement. */
static void start_cluster(uint32_t n, bool port0, bool manual_ready, uint32_t backoff_ms, bool heartbeat) {
    cluster_config *cfg = cluster_config_new();
    CHECK(cfg != NULL, "cluster_config_new");
    OK(cluster_config_set_workers(cfg, n));
    OK(cluster_config_set_signals(cfg, false));
    OK(cluster_config_set_worker_main(cfg, worker_main, NULL));
    cluster_policy policy = CLUSTER_POLICY_ROUND_ROBIN;
    if (!strcmp(policy_name, "shared")) policy = CLUSTER_POLICY_SHARED;
    if (!strcmp(policy_name, "sticky")) policy = CLUSTER_POLICY_STICKY;
    OK(cluster_config_set_policy(cfg, policy));
    if (port0) CHECK(OK(cluster_config_listen_tcp(cfg, "127.0.0.1", 0)) == 0, "the config's listener is index 0");
    if (manual_ready) OK(cluster_config_set_manual_ready(cfg, true));
    if (backoff_ms) {
        /* Every death is young, and waits the whole backoff. */
        OK(cluster_config_set_min_uptime(cfg, 600000));
        OK(cluster_config_set_backoff(cfg, backoff_ms, backoff_ms, 600000));
    }
    if (!heartbeat) OK(cluster_config_set_heartbeat(cfg, 0, 0)); /* nothing else wakes a worker */
    OK(cluster_primary_start(cfg, on_primary, NULL));
    cluster_config_free(cfg);
}

static void dispatch_while(volatile int *value, int unwanted, int timeout_ms, const char *what) {
    long long end = now_ms() + timeout_ms;
    while (*value == unwanted) {
        if (now_ms() > end) FAIL("timed out after %d ms waiting for %s", timeout_ms, what);
        cluster_dispatch(20);
    }
}

static void stop_cluster(void) {
    OK(cluster_shutdown(5000));
    long long end = now_ms() + 15000;
    int32_t rc;
    while ((rc = cluster_dispatch(50)) >= 0)
        if (now_ms() > end) FAIL("the cluster did not stop within 15 s");
    CHECK(rc == CLUSTER_E_CLOSED, "cluster_dispatch returned %d at the end", rc);
}

static void case_port0(void) {
    start_cluster(1, true, false, 0, true);
    int config_port = OK(cluster_local_port(0));
    dispatch_while(&port_of[1], 0, 15000, "worker 1's listen");
    printf("listen_edges port0: config port %d (listener 0), worker's port %d (listener %d)\n", config_port, port_of[1],
           index_of[1]);
    CHECK(index_of[1] != 0 && port_of[1] != config_port, "the worker asking for port 0 was given the config's listener");
    CHECK(listenings == 1, "%d LISTENING events", listenings);
    uint32_t ids[4];
    CHECK(probe(port_of[1], 4, ids) == 4 && probe(config_port, 4, ids) == 4, "requests on both ports answered");
    stop_cluster();
}

static void case_merge(void) {
    start_cluster(2, false, false, 0, true);
    dispatch_while(&port_of[1], 0, 15000, "worker 1's listen");
    dispatch_while(&idles, 0, 15000, "worker 2's start");
    int index = index_of[1], port = port_of[1];
    /* The primary listens on the very address worker 1 bound. */
    CHECK(OK(cluster_listen_tcp("127.0.0.1", (uint16_t)port)) == index, "the primary got another listener");
    char ask[32];
    int n = snprintf(ask, sizeof ask, "port %d", index);
    for (uint32_t id = 1; id <= 2; id++) OK(cluster_send(id, (const uint8_t *)ask, (size_t)n));
    dispatch_while(&asked_port[1], 0, 10000, "worker 1's answer");
    dispatch_while(&asked_port[2], 0, 10000, "worker 2's answer");
    printf("listen_edges merge %s: port %d; worker 1 sees %d (unlisten %d), worker 2 sees %d\n", policy_name, port,
           asked_port[1], asked_unlisten[1], asked_port[2]);
    CHECK(asked_unlisten[1] == CLUSTER_E_INVAL, "worker 1 could unlisten a listener that is every worker's (%d)",
          asked_unlisten[1]);
    CHECK(asked_port[1] == port && asked_port[2] == port, "the workers see ports %d and %d, not %d", asked_port[1],
          asked_port[2], port);
    uint32_t ids[20];
    CHECK(probe(port, 20, ids) == 20, "requests on the merged listener");
    if (!strcmp(policy_name, "rr")) {
        int one = 0;
        for (int i = 0; i < 20; i++) one += ids[i] == 1;
        CHECK(one == 10, "round-robin over both workers: worker 1 answered %d of 20", one);
    }
    stop_cluster();
}

static void case_starve(void) {
    start_cluster(2, true, false, 5000, true);
    int config_port = OK(cluster_local_port(0));
    dispatch_while(&port_of[1], 0, 15000, "worker 1's listen");
    dispatch_while(&idles, 0, 15000, "worker 2's start");
    int port = port_of[1];
    /* Worker 1 stops; 64 connections (its whole window) are handed to it and wait unread in
     * its channel. */
    CHECK(kill(pid_of[1], SIGSTOP) == 0, "SIGSTOP: %s", strerror(errno));
    int held[64];
    for (int i = 0; i < 64; i++) {
        held[i] = tcp_connect("127.0.0.1", port);
        CHECK(held[i] >= 0, "connection %d to worker 1's port", i);
    }
    long long end = now_ms() + 10000;
    while (worker_stat(1, "in_flight") < 64) {
        if (now_ms() > end) FAIL("only %ld connections in flight to the stopped worker", worker_stat(1, "in_flight"));
        cluster_dispatch(20);
    }
    /* It dies: they come back, and wait for its replacement, 5 s away. */
    CHECK(kill(pid_of[1], SIGKILL) == 0, "SIGKILL: %s", strerror(errno));
    dispatch_while(&exits, 0, 10000, "worker 1's EXIT");
    int forks_then = forks;
    /* The config's listener is worker 2's too: answered now, not after the respawn. */
    int w = http_worker_in_child("127.0.0.1", config_port, 20000, "the request on the config's listener");
    printf("listen_edges starve: answered by worker %d with %d fork(s) since worker 1 died\n", w, forks - forks_then);
    CHECK(w == 2, "the request on the config's listener was answered by %d", w);
    CHECK(forks == forks_then, "the request waited for worker 1's replacement (starved by its 64 connections)");
    /* The replacement listens again and takes the 64 that waited. */
    end = now_ms() + 20000;
    while (listenings < 2) {
        if (now_ms() > end) FAIL("the replacement did not listen again");
        cluster_dispatch(20);
    }
    char buf[256];
    for (int i = 0; i < 64; i++) {
        CHECK(write(held[i], "GET / HTTP/1.0\r\n\r\n", 18) == 18, "write %d", i);
        end = now_ms() + 10000;
        ssize_t got = 0;
        int fl = fcntl(held[i], F_GETFL);
        fcntl(held[i], F_SETFL, fl | O_NONBLOCK);
        while (got <= 0) {
            got = read(held[i], buf, sizeof buf);
            if (got == 0) FAIL("connection %d closed unanswered", i);
            if (now_ms() > end) FAIL("connection %d not answered", i);
            if (got < 0) cluster_dispatch(10);
        }
        close(held[i]);
    }
    stop_cluster();
}

static void case_backlog(void) {
    /* A server that never accepts, its backlog full. */
    int srv = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", unix_path);
    unlink(unix_path);
    CHECK(srv >= 0 && bind(srv, (struct sockaddr *)&a, sizeof a) == 0 && listen(srv, 0) == 0, "server: %s",
          strerror(errno));
    int clients[8], n = 0;
    for (; n < 8; n++) {
        clients[n] = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (connect(clients[n], (struct sockaddr *)&a, sizeof a) != 0) {
            CHECK(errno == EAGAIN, "connect: %s", strerror(errno));
            close(clients[n]);
            break;
        }
    }
    CHECK(n < 8, "the backlog never filled");
    start_cluster(1, false, false, 0, true);
    dispatch_while(&backlog_rc, 1, 15000, "the worker's listen");
    printf("listen_edges backlog: rc %d: %s\n", backlog_rc, backlog_msg);
    CHECK(backlog_rc == CLUSTER_E_SYS, "listen on a live server's path returned %d", backlog_rc);
    CHECK(strstr(backlog_msg, unix_path) && strstr(backlog_msg, "another server"), "the sentence '%s'", backlog_msg);
    CHECK(access(unix_path, F_OK) == 0, "the live server's socket file was removed");
    stop_cluster();
    for (int i = 0; i < n; i++) close(clients[i]);
    close(srv);
    unlink(unix_path);
}

static void case_wake(void) {
    ping_on_listening = 1;
    start_cluster(1, false, false, 0, false);
    dispatch_while(&port_of[1], 0, 15000, "the worker's listens");
    dispatch_while(&pongs, 0, 10000, "the pong to a ping that arrived during cluster_listen_unix");
    printf("listen_edges wake: the ping that arrived during a listen was answered\n");
    stop_cluster();
}

static void case_churn(void) {
    /* Manual READY, never given: both workers stay "on their way", for whom a listener that
     * loses its last worker by an exit would be kept open. */
    start_cluster(2, false, true, 0, true);
    int fds_before = count_fds(getpid());
    dispatch_while(&churn_refused, -1, 60000, "worker 1's churn");
    int fds_after = count_fds(getpid());
    printf("listen_edges churn: %d of %d listens refused (%d: %s); primary fds %d -> %d\n", churn_refused, CHURN,
           churn_error, churn_why, fds_before, fds_after);
    CHECK(churn_refused == 0, "%d listens refused, the first with %d: %s", churn_refused, churn_error, churn_why);
    CHECK(fds_after <= fds_before + 2, "the primary holds %d fds after the churn, %d before", fds_after, fds_before);
    stop_cluster();
}

static void case_sticky(void) {
    policy_name = "sticky";
    start_cluster(3, true, false, 0, true);
    dispatch_while(&port_of[1], 0, 15000, "worker 1's listen");
    dispatch_while(&port_of[2], 0, 15000, "worker 2's listen");
    dispatch_while(&idles, 0, 15000, "worker 3's start");
    int port = port_of[1];
    CHECK(port_of[2] == port, "workers 1 and 2 share port %d (%d)", port, port_of[2]);
    /* 127.0.0.1 hashes to slot 1 of 3 (worker 2): it takes the first and sleeps on it; the
     * rest wait for it. */
    static int held[200];
    for (int i = 0; i < 200; i++) {
        held[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        CHECK(connect(held[i], (struct sockaddr *)&a, sizeof a) == 0 || errno == EINPROGRESS, "connect %d", i);
    }
    /* Three seconds of worker 2 asleep: count the loop's turns (each waits up to 100 ms). */
    long turns = 0;
    long long t0 = now_ms();
    while (now_ms() - t0 < 3000) {
        cluster_dispatch(100);
        turns++;
    }
    printf("listen_edges sticky: %ld loop turns in 3 s while the sticky worker slept\n", turns);
    CHECK(turns < 600, "the primary's loop spun: %ld turns in 3 s", turns);
    for (int i = 0; i < 200; i++) close(held[i]);
    stop_cluster();
}

static void case_lowfd(void) {
    struct rlimit saved, low;
    CHECK(getrlimit(RLIMIT_NOFILE, &saved) == 0, "getrlimit");
    low = saved;
    low.rlim_cur = 96;
    CHECK(setrlimit(RLIMIT_NOFILE, &low) == 0, "setrlimit: %s", strerror(errno));
    start_cluster(1, false, false, 0, true);
    dispatch_while(&lowfd_ok, -1, 30000, "the worker's 80 listens");
    printf("listen_edges lowfd: %d bound, %d refused as short of fds, %d other (%s); primary fds %d of 96\n", lowfd_ok,
           lowfd_refused, lowfd_other, lowfd_why, count_fds(getpid()));
    CHECK(lowfd_ok > 0 && lowfd_refused > 0 && lowfd_other == 0, "%s", lowfd_why);
    /* The primary can still start a worker. */
    int before = ready_count;
    OK(cluster_fork());
    dispatch_while(&ready_count, before, 15000, "the forked worker's READY");
    stop_cluster();
    for (int i = 0; i < 80; i++) {
        char path[108];
        snprintf(path, sizeof path, "%.90s.%d", unix_path, i);
        unlink(path);
    }
    /* The sanitizers open their report files at exit. */
    CHECK(setrlimit(RLIMIT_NOFILE, &saved) == 0, "restoring the limit: %s", strerror(errno));
}

static void case_paths(void) {
    /* The primary works in directory .p, the worker in .w; .d holds the config's socket and
     * .l is a symlink to .d. */
    char p[108], w[108], d[108], l[108], cfgsock[108], in_w[120], in_p[120];
    snprintf(p, sizeof p, "%.90s.p", unix_path);
    snprintf(w, sizeof w, "%.90s.w", unix_path);
    snprintf(d, sizeof d, "%.90s.d", unix_path);
    snprintf(l, sizeof l, "%.90s.l", unix_path);
    snprintf(cfgsock, sizeof cfgsock, "%.100s/p.sock", d);
    snprintf(in_w, sizeof in_w, "%.100s/rel.sock", w);
    snprintf(in_p, sizeof in_p, "%.100s/rel.sock", p);
    CHECK(mkdir(p, 0700) == 0 && mkdir(w, 0700) == 0 && mkdir(d, 0700) == 0 && symlink(d, l) == 0, "dirs: %s",
          strerror(errno));
    char cwd[512];
    CHECK(getcwd(cwd, sizeof cwd) && chdir(p) == 0, "chdir");
    cluster_config *cfg = cluster_config_new();
    OK(cluster_config_set_workers(cfg, 1));
    OK(cluster_config_set_signals(cfg, false));
    OK(cluster_config_set_worker_main(cfg, worker_main, NULL));
    CHECK(OK(cluster_config_listen_unix(cfg, cfgsock)) == 0, "the config's listener is index 0");
    OK(cluster_primary_start(cfg, on_primary, NULL));
    cluster_config_free(cfg);
    dispatch_while(&paths_cfg, -100, 15000, "the worker's listens");
    for (int i = 0; i < 10; i++) cluster_dispatch(10);
    printf("listen_edges paths: rel.sock -> listener %d, %s -> listener %d; LISTENING %d\n", paths_rel, cfgsock,
           paths_cfg, listenings);
    CHECK(access(in_w, F_OK) == 0, "%s was not created", in_w);
    CHECK(access(in_p, F_OK) != 0, "%s was created in the primary's directory", in_p);
    CHECK(paths_cfg == 0, "the config's socket through a symlink gave listener %d", paths_cfg);
    CHECK(listenings == 2, "%d LISTENING events, expected 2 (rel.sock, and the config's socket once)", listenings);
    CHECK(total_stat("connections") == 0, "%ld connection(s) were handed out (a probe of our own socket?)",
          total_stat("connections"));
    stop_cluster();
    CHECK(chdir(cwd) == 0, "chdir back");
    unlink(in_w), unlink(l), rmdir(p), rmdir(w), rmdir(d);
}

int main(int argc, char **argv) {
    CHECK(argc >= 2, "usage: listen_edges <case> [rr|shared]");
    which = argv[1];
    if (argc > 2) policy_name = argv[2];
    snprintf(unix_path, sizeof unix_path, "/tmp/rcluster-le-%d.sock", (int)getpid());
    test_deadline(100);
    if (!strcmp(which, "port0")) case_port0();
    else if (!strcmp(which, "merge")) case_merge();
    else if (!strcmp(which, "starve")) case_starve();
    else if (!strcmp(which, "backlog")) case_backlog();
    else if (!strcmp(which, "wake")) case_wake();
    else if (!strcmp(which, "churn")) case_churn();
    else if (!strcmp(which, "sticky")) case_sticky();
    else if (!strcmp(which, "lowfd")) case_lowfd();
    else if (!strcmp(which, "paths")) case_paths();
    else FAIL("unknown case %s", which);
    return 0;
}
