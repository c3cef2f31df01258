/* Several listeners at once, and their errors. One case per run, chosen by argv[1]:
 *   listeners unix     a Unix listener (mode 0600), 127.0.0.1:0 and ::1:0 (when available) in
 *                      one FORK-mode cluster: each answers with its own listener index and
 *                      family; the socket file has the mode asked for and is removed at the end.
 *   listeners stale    a socket file left by a dead server is replaced: the cluster starts and serves.
 *   listeners live     a socket file a live server listens on: cluster_primary_start fails with
 *                      CLUSTER_E_SYS naming the path, starts no worker, and the live server is untouched.
 *   listeners errors   a missing directory (CLUSTER_E_SYS naming the path), a 200-byte path and
 *                      cluster_config_set_unix_mode on a TCP listener (CLUSTER_E_INVAL).
 *   listeners systemd  socket activation (LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES, fd 3) in a
 *                      child process: the passed socket is listener 0 and is served; with
 *                      LISTEN_PID naming another process nothing is taken. */
#include "harness.h"
#include <arpa/inet.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/un.h>

#define WORKERS 2

/* ---- worker: "worker N listener L family F" ---- */

static void on_worker(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind != CLUSTER_EVENT_CONNECTION) return;
    int family = -1;
    if (ev->peer && ev->peer_len >= sizeof(sa_family_t)) family = ev->peer->sa_family;
    char req[256];
    ssize_t r = read(ev->fd, req, sizeof req); /* the client sends one short line */
    (void)r;
    char resp[128];
    int n = snprintf(resp, sizeof resp, "worker %u listener %u family %d\n", cluster_worker_id(), ev->listener, family);
    ssize_t w = write(ev->fd, resp, (size_t)n);
    (void)w;
    close(ev->fd);
}

static int worker_main(void *ud) {
    OK(cluster_worker_start(on_worker, ud));
    return cluster_run() == 0 ? 0 : 3;
}

/* ---- primary ---- */

static volatile int ready, exits;
static void on_primary(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind == CLUSTER_EVENT_READY) ready++;
    if (ev->kind == CLUSTER_EVENT_EXIT) exits++;
}

static cluster_config *new_config(void) {
    cluster_config *cfg = cluster_config_new();
    CHECK(cfg != NULL, "cluster_config_new");
    OK(cluster_config_set_workers(cfg, WORKERS));
    OK(cluster_config_set_worker_main(cfg, worker_main, NULL));
    OK(cluster_config_set_signals(cfg, false));
    return cfg;
}

static void wait_ready(void) {
    long long end = now_ms() + 20000;
    while (ready < WORKERS) {
        if (now_ms() > end) FAIL("only %d of %d workers READY after 20 s", ready, WORKERS);
        cluster_dispatch(50);
    }
}

/* Keeps the loop turning until our child `pid` exits; fails unless it exits 0. */
static void dispatch_until_child(pid_t pid, int timeout_ms, const char *what) {
    int status = -1;
    long long end = now_ms() + timeout_ms;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid) break;
        if (r < 0 && errno != EINTR) FAIL("waitpid %s: %s", what, strerror(errno));
        if (now_ms() > end) {
            kill(pid, SIGKILL);
            FAIL("%s did not finish within %d ms", what, timeout_ms);
        }
        cluster_dispatch(50);
    }
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s failed (status 0x%x)", what, status);
}

/* Graceful stop; every worker exits. */
static void stop_cluster(void) {
    OK(cluster_shutdown(10000));
    CHECK(cluster_run() == 0, "cluster_run after cluster_shutdown returns 0");
    CHECK(exits == WORKERS, "%d of %d workers exited", exits, WORKERS);
}

/* A forked client dies with the test and cannot outlive its deadline. */
static void client_setup(void) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    test_deadline(60);
}

/* True when no process of ours is left (a failed start must not leave workers behind). */
static int no_children(void) {
    int status;
    return waitpid(-1, &status, WNOHANG) < 0 && errno == ECHILD;
}

/* ---- client side ---- */

static struct sockaddr_un unix_addr(const char *path) {
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    size_t len = strlen(path);
    CHECK(len < sizeof sun.sun_path, "path %s is too long for sockaddr_un", path);
    memcpy(sun.sun_path, path, len + 1);
    return sun;
}

static int unix_connect(const char *path) {
    struct sockaddr_un sun = unix_addr(path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&sun, sizeof sun) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        fd = -1;
    }
    return fd;
}

/* One request on a connected fd; checks the listener index and the family; returns the worker id. */
static int request_on(int fd, const char *what, unsigned listener, int family) {
    CHECK(fd >= 0, "connect %s: %s", what, strerror(errno));
    CHECK(write(fd, "hi\n", 3) == 3, "write %s: %s", what, strerror(errno));
    char buf[256];
    ssize_t n = read_all(fd, buf, sizeof buf);
    close(fd);
    CHECK(n > 0, "no answer on %s", what);
    unsigned w, l;
    int fam;
    CHECK(sscanf(buf, "worker %u listener %u family %d", &w, &l, &fam) == 3, "answer on %s: '%s'", what, buf);
    CHECK(l == listener, "%s: answered as listener %u, expected %u", what, l, listener);
    CHECK(fam == family, "%s: peer family %d, expected %d", what, fam, family);
    CHECK(w >= 1 && w <= WORKERS, "%s: worker id %u", what, w);
    return (int)w;
}

static int have_ipv6(void) {
    int v6 = socket(AF_INET6, SOCK_STREAM, 0);
    struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    int ok = v6 >= 0 && bind(v6, (struct sockaddr *)&a6, sizeof a6) == 0;
    if (v6 >= 0) close(v6);
    return ok;
}

/* A failed run leaves no temp dir behind (only the test process cleans up, not its children). */
static char tmp_dir[64], tmp_path[128];
static pid_t tmp_owner;
static void remove_tmp(void) {
    if (getpid() != tmp_owner) return;
    unlink(tmp_path);
    rmdir(tmp_dir);
}

static void make_dir(char *dir, char *path, size_t cap) {
    CHECK(mkdtemp(dir) != NULL, "mkdtemp %s: %s", dir, strerror(errno));
    snprintf(path, cap, "%s/s.sock", dir);
    snprintf(tmp_dir, sizeof tmp_dir, "%s", dir);
    snprintf(tmp_path, sizeof tmp_path, "%s", path);
    tmp_owner = getpid();
    atexit(remove_tmp);
}

/* ---- cases ---- */

static int case_unix(void) {
    char dir[] = "/tmp/rcluster-listeners-XXXXXX", path[128];
    make_dir(dir, path, sizeof path);
    int v6 = have_ipv6();
    cluster_config *cfg = new_config();
    int iu = OK(cluster_config_listen_unix(cfg, path));
    CHECK(iu == 0, "the unix listener is index 0 (got %d)", iu);
    OK(cluster_config_set_unix_mode(cfg, (uint32_t)iu, 0600));
    CHECK(OK(cluster_config_listen_tcp(cfg, "127.0.0.1", 0)) == 1, "the IPv4 listener is index 1");
    if (v6) CHECK(OK(cluster_config_listen_tcp(cfg, "::1", 0)) == 2, "the IPv6 listener is index 2");
    /* With umask 0 a plain bind makes the file 0777: 0600 can only come from the mode asked for. */
    mode_t old_umask = umask(0);
    OK(cluster_primary_start(cfg, on_primary, NULL));
    umask(old_umask);
    cluster_config_free(cfg);
    int port4 = OK(cluster_local_port(1));
    CHECK(port4 > 0, "the IPv4 listener has a real port");
    int port6 = v6 ? OK(cluster_local_port(2)) : 0;
    CHECK(!v6 || port6 > 0, "the IPv6 listener has a real port");

    struct stat st;
    CHECK(stat(path, &st) == 0, "stat %s: %s", path, strerror(errno));
    CHECK(S_ISSOCK(st.st_mode), "%s is a socket (mode 0%o)", path, (unsigned)st.st_mode);
    CHECK((st.st_mode & 07777) == 0600, "%s has mode 0%o, expected 0600", path, (unsigned)(st.st_mode & 07777));
    wait_ready();

    pid_t client = fork();
    CHECK(client >= 0, "fork client");
    if (client == 0) {
        client_setup();
        int seen[WORKERS + 1] = {0};
        for (int i = 0; i < 6; i++) {
            seen[request_on(unix_connect(path), path, 0, AF_UNIX)]++;
            seen[request_on(tcp_connect("127.0.0.1", port4), "127.0.0.1", 1, AF_INET)]++;
            if (v6) seen[request_on(tcp_connect("::1", port6), "::1", 2, AF_INET6)]++;
        }
        for (int w = 1; w <= WORKERS; w++) CHECK(seen[w] > 0, "round-robin: worker %d served none", w);
        _exit(0);
    }
    dispatch_until_child(client, 30000, "the client");

    stop_cluster();
    CHECK(stat(path, &st) != 0 && errno == ENOENT, "the socket file %s is removed after the stop", path);
    CHECK(tcp_connect("127.0.0.1", port4) < 0, "nothing listens on 127.0.0.1:%d after the stop", port4);
    CHECK(rmdir(dir) == 0, "rmdir %s (left empty): %s", dir, strerror(errno));
    printf("listeners unix: ok (ipv6 %s)\n", v6 ? "tested" : "unavailable");
    return 0;
}

static int case_stale(void) {
    char dir[] = "/tmp/rcluster-listeners-XXXXXX", path[128];
    make_dir(dir, path, sizeof path);
    /* A dead server's leftover: bound, then closed without unlinking. */
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sun = unix_addr(path);
    CHECK(s >= 0 && bind(s, (struct sockaddr *)&sun, sizeof sun) == 0, "bind %s: %s", path, strerror(errno));
    CHECK(listen(s, 4) == 0, "listen: %s", strerror(errno));
    close(s);
    struct stat st;
    CHECK(stat(path, &st) == 0 && S_ISSOCK(st.st_mode), "the stale socket file %s exists", path);
    CHECK(unix_connect(path) < 0 && errno == ECONNREFUSED, "nobody listens on the stale file");

    cluster_config *cfg = new_config();
    CHECK(OK(cluster_config_listen_unix(cfg, path)) == 0, "the unix listener is index 0");
    OK(cluster_primary_start(cfg, on_primary, NULL));
    cluster_config_free(cfg);
    wait_ready();

    pid_t client = fork();
    CHECK(client >= 0, "fork client");
    if (client == 0) {
        client_setup();
        for (int i = 0; i < 4; i++) request_on(unix_connect(path), path, 0, AF_UNIX);
        _exit(0);
    }
    dispatch_until_child(client, 30000, "the client");

    stop_cluster();
    CHECK(stat(path, &st) != 0 && errno == ENOENT, "the socket file %s is removed after the stop", path);
    CHECK(rmdir(dir) == 0, "rmdir %s: %s", dir, strerror(errno));
    printf("listeners stale: ok\n");
    return 0;
}

static int case_live(void) {
    char dir[] = "/tmp/rcluster-listeners-XXXXXX", path[128];
    make_dir(dir, path, sizeof path);
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sun = unix_addr(path);
    CHECK(s >= 0 && bind(s, (struct sockaddr *)&sun, sizeof sun) == 0, "bind %s: %s", path, strerror(errno));
    CHECK(listen(s, 8) == 0, "listen: %s", strerror(errno));
    struct stat before, after;
    CHECK(stat(path, &before) == 0, "stat %s", path);

    cluster_config *cfg = new_config();
    CHECK(OK(cluster_config_listen_unix(cfg, path)) == 0, "the unix listener is index 0");
    EXPECT_ERR(cluster_primary_start(cfg, on_primary, NULL), CLUSTER_E_SYS);
    const char *err = cluster_last_error();
    CHECK(strstr(err, path) != NULL, "the error names the path %s: '%s'", path, err);
    printf("listeners live: cluster_primary_start refused: %s\n", err);
    cluster_config_free(cfg);
    CHECK(no_children(), "a failed start left a child process");

    /* The live server is untouched: same file, still accepting. */
    CHECK(stat(path, &after) == 0, "the live server's socket file %s still exists", path);
    CHECK(after.st_ino == before.st_ino && after.st_dev == before.st_dev, "the live server's socket file was replaced");
    int c = unix_connect(path);
    CHECK(c >= 0, "connect to the live server: %s", strerror(errno));
    struct pollfd p = {.fd = s, .events = POLLIN};
    CHECK(poll(&p, 1, 5000) == 1, "the live server sees the connection");
    int a = accept(s, NULL, NULL);
    CHECK(a >= 0, "the live server accepts: %s", strerror(errno));
    close(a);
    close(c);
    close(s);
    CHECK(unlink(path) == 0 && rmdir(dir) == 0, "cleanup %s: %s", dir, strerror(errno));
    printf("listeners live: ok\n");
    return 0;
}

/* cluster_last_error() keeps the previous failure's sentence: before each expected failure we
 * leave a known one, and require the call under test to replace it. */
static char marker[256];
static void set_marker(cluster_config *cfg) {
    CHECK(cluster_config_set_exec(cfg, "", NULL) == CLUSTER_E_INVAL, "an empty exec path is refused");
    snprintf(marker, sizeof marker, "%s", cluster_last_error());
}
#define EXPECT_FRESH(cfg, expr, code)                                                              \
    do {                                                                                           \
        set_marker(cfg);                                                                           \
        EXPECT_ERR(expr, code);                                                                    \
        CHECK(strcmp(cluster_last_error(), marker) != 0, "%s left no sentence of its own", #expr); \
    } while (0)

static int case_errors(void) {
    cluster_config *cfg = new_config();

    /* A path that cannot fit in sockaddr_un. */
    char longpath[201];
    memset(longpath, 'a', 200);
    memcpy(longpath, "/tmp/", 5);
    longpath[200] = '\0';
    EXPECT_FRESH(cfg, cluster_config_listen_unix(cfg, longpath), CLUSTER_E_INVAL);
    printf("listeners errors: 200-byte path: %s\n", cluster_last_error());
    EXPECT_FRESH(cfg, cluster_config_listen_unix(cfg, NULL), CLUSTER_E_INVAL);

    /* A mode on a listener that is not a Unix one, or on none. */
    int t = OK(cluster_config_listen_tcp(cfg, "127.0.0.1", 0));
    CHECK(t == 0, "the refused unix listeners took no index (TCP listener got %d)", t);
    EXPECT_FRESH(cfg, cluster_config_set_unix_mode(cfg, (uint32_t)t, 0600), CLUSTER_E_INVAL);
    printf("listeners errors: mode on TCP listener: %s\n", cluster_last_error());
    EXPECT_FRESH(cfg, cluster_config_set_unix_mode(cfg, 7, 0600), CLUSTER_E_INVAL);

    /* A directory that does not exist: the config takes it, the start fails naming it. */
    char missing[128];
    snprintf(missing, sizeof missing, "/tmp/rcluster-no-such-dir-%d/sub/s.sock", (int)getpid());
    int u = OK(cluster_config_listen_unix(cfg, missing));
    CHECK(u == 1, "the unix listener is index 1 (got %d)", u);
    OK(cluster_config_set_unix_mode(cfg, (uint32_t)u, 0600)); /* fine on a unix listener */
    EXPECT_FRESH(cfg, cluster_primary_start(cfg, on_primary, NULL), CLUSTER_E_SYS);
    const char *err = cluster_last_error();
    CHECK(strstr(err, missing) != NULL, "the error names the path %s: '%s'", missing, err);
    printf("listeners errors: missing directory: %s\n", err);
    cluster_config_free(cfg);
    CHECK(no_children(), "a failed start left a child process");
    printf("listeners errors: ok\n");
    return 0;
}

/* Runs in a child process of its own: the environment and fd 3 are private to it. */
static int systemd_primary(void) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    /* The socket "systemd" passes: listening on 127.0.0.1:0, as fd 3. */
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    CHECK(s >= 0 && bind(s, (struct sockaddr *)&a, sizeof a) == 0 && listen(s, 64) == 0, "listen: %s", strerror(errno));
    socklen_t alen = sizeof a;
    CHECK(getsockname(s, (struct sockaddr *)&a, &alen) == 0, "getsockname");
    int port = ntohs(a.sin_port);
    if (s != 3) {
        CHECK(dup2(s, 3) == 3, "dup2: %s", strerror(errno));
        close(s);
    }
    char pid[32];
    setenv("LISTEN_FDS", "1", 1);
    setenv("LISTEN_FDNAMES", "web", 1);

    /* LISTEN_PID names another process: the sockets are not ours. */
    snprintf(pid, sizeof pid, "%d", (int)getppid());
    setenv("LISTEN_PID", pid, 1);
    cluster_config *other = cluster_config_new();
    CHECK(other != NULL, "cluster_config_new");
    int32_t n = cluster_config_listen_systemd(other);
    CHECK(n == 0, "with LISTEN_PID=%s (not us) cluster_config_listen_systemd returned %d, expected 0", pid, n);
    cluster_config_free(other);

    snprintf(pid, sizeof pid, "%d", (int)getpid());
    setenv("LISTEN_PID", pid, 1);
    cluster_config *cfg = new_config();
    n = cluster_config_listen_systemd(cfg);
    CHECK(n == 1, "cluster_config_listen_systemd returned %d, expected 1", n);
    OK(cluster_primary_start(cfg, on_primary, NULL));
    cluster_config_free(cfg);
    CHECK(OK(cluster_local_port(0)) == port, "listener 0 is the passed socket on port %d (got %d)", port,
          cluster_local_port(0));
    int fdfl = fcntl(3, F_GETFD);
    CHECK(fdfl >= 0 && (fdfl & FD_CLOEXEC), "the passed socket is CLOEXEC in the primary (flags %d)", fdfl);
    wait_ready();

    pid_t client = fork();
    CHECK(client >= 0, "fork client");
    if (client == 0) {
        client_setup();
        int seen[WORKERS + 1] = {0};
        for (int i = 0; i < 6; i++) seen[request_on(tcp_connect("127.0.0.1", port), "the passed socket", 0, AF_INET)]++;
        for (int w = 1; w <= WORKERS; w++) CHECK(seen[w] > 0, "worker %d served none of 6", w);
        _exit(0);
    }
    dispatch_until_child(client, 30000, "the client");

    stop_cluster();
    CHECK(tcp_connect("127.0.0.1", port) < 0, "nothing listens on the passed socket's port %d after the stop", port);
    return 0;
}

static int case_systemd(void) {
    fflush(stdout);
    pid_t p = fork();
    CHECK(p >= 0, "fork");
    if (p == 0) _exit(systemd_primary());
    int status = wait_child(p, 60000);
    if (status == -1) {
        kill(p, SIGKILL);
        FAIL("the socket-activated primary did not finish within 60 s");
    }
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the socket-activated primary failed (status 0x%x)", status);
    printf("listeners systemd: ok\n");
    return 0;
}

int main(int argc, char **argv) {
    test_deadline(90);
    const char *c = argc > 1 ? argv[1] : "";
    if (!strcmp(c, "unix")) return case_unix();
    if (!strcmp(c, "stale")) return case_stale();
    if (!strcmp(c, "live")) return case_live();
    if (!strcmp(c, "errors")) return case_errors();
    if (!strcmp(c, "systemd")) return case_systemd();
    fprintf(stderr, "usage: %s unix|stale|live|errors|systemd\n", argv[0]);
    return 2;
}
