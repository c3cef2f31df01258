/* Child processes on the loop (cluster_spawn, cluster_exec, cluster_exec_file).
 *
 *   children output    8 MiB on stdout and 8 MiB on stderr at once: all of it, no deadlock,
 *                      CHILD_EXIT after the last byte
 *   children stdin     4 MiB streamed through cat (written from callbacks as it echoes), the
 *                      same bytes back; writes after close_stdin are refused
 *   children quoting   exec_file passes arguments as they are (no shell, no injection);
 *                      exec runs a command line through /bin/sh; spawn with shell too
 *   children timeout   a child past its timeout is killed with its kill_signal: CHILD_ERROR,
 *                      then CHILD_EXIT with the signal
 *   children maxbuffer an exec whose output passes max_buffer: CHILD_ERROR, killed, output
 *                      kept up to the limit
 *   children signal    exit by a signal: sent with cluster_child_kill, and raised by itself
 *   children missing   a missing program: the error names it (path, PATH lookup, exec_file);
 *                      through a shell, exit code 127; bad options are CLUSTER_E_INVAL
 *   children many      1,000 short children in a row: no fd growth, no zombie left
 *   children orphan    a primary SIGKILLed takes its children along (PR_SET_PDEATHSIG); a
 *                      detached one survives it
 *   children worker    a worker (EXEC mode) runs a child on its own loop
 *   children stop      the runtime's end kills and reaps its children (not the detached)
 *
 * The primary runs one idle worker besides (a primary has at least one). */
#include "harness.h"
#include <fcntl.h>
#include <sys/stat.h>

#define MAXC 1100

struct buf {
    char *p;
    size_t len, cap;
};

static void buf_add(struct buf *b, const uint8_t *data, size_t len) {
    if (len == 0) return;
    if (b->len + len > b->cap) {
        b->cap = (b->len + len) * 2;
        b->p = realloc(b->p, b->cap);
        CHECK(b->p, "realloc");
    }
    memcpy(b->p + b->len, data, len);
    b->len += len;
}

static struct child {
    struct buf out, err, exec_out, exec_err, error;
    int exited, exit_code, signal, killed, errors, drains;
    pid_t pid;
} kids[MAXC];

static volatile int exits;
static void (*on_out_hook)(uint32_t id, size_t len);

static void on_event(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind == CLUSTER_EVENT_CHILD_STDIN_DRAIN) {
        CHECK(ev->worker_id >= 1 && ev->worker_id < MAXC, "child id %u in range", ev->worker_id);
        kids[ev->worker_id].drains++;
        return;
    }
    if (ev->kind < CLUSTER_EVENT_CHILD_STDOUT || ev->kind > CLUSTER_EVENT_CHILD_ERROR) return;
    CHECK(ev->worker_id >= 1 && ev->worker_id < MAXC, "child id %u in range", ev->worker_id);
    struct child *c = &kids[ev->worker_id];
    CHECK(!c->exited, "an event of kind %u for child %u after its CHILD_EXIT", ev->kind, ev->worker_id);
    c->pid = ev->pid;
    switch (ev->kind) {
    case CLUSTER_EVENT_CHILD_STDOUT:
        CHECK(ev->len > 0 && ev->len <= 65536, "stdout chunk of %zu bytes", ev->len);
        buf_add(&c->out, ev->data, ev->len);
        if (on_out_hook) on_out_hook(ev->worker_id, ev->len);
        break;
    case CLUSTER_EVENT_CHILD_STDERR:
        buf_add(&c->err, ev->data, ev->len);
        break;
    case CLUSTER_EVENT_CHILD_ERROR:
        c->errors++;
        buf_add(&c->error, ev->data, ev->len);
        break;
    case CLUSTER_EVENT_CHILD_EXIT:
        c->exited = 1;
        c->exit_code = ev->exit_code;
        c->signal = ev->signal;
        c->killed = ev->exited_after_disconnect;
        CHECK(ev->listener <= ev->len, "stdout length %u within %zu", ev->listener, ev->len);
        buf_add(&c->exec_out, ev->data, ev->listener);
        buf_add(&c->exec_err, ev->data + ev->listener, ev->len - ev->listener);
        exits++;
        break;
    }
}

static void wait_exit(uint32_t id, int timeout_ms) {
    long long end = now_ms() + timeout_ms;
    while (!kids[id].exited) {
        if (now_ms() > end) FAIL("child %u did not exit within %d ms", id, timeout_ms);
        int32_t rc = cluster_dispatch(50);
        if (rc < 0) FAIL("cluster_dispatch returned %d", rc);
    }
}

static void start_primary(void) {
    struct cluster_config *cfg = cluster_config_new();
    OK(cluster_config_set_mode(cfg, CLUSTER_MODE_EXEC));
    OK(cluster_config_set_workers(cfg, 1)); /* an idle one (see main) */
    OK(cluster_primary_start(cfg, on_event, NULL));
    cluster_config_free(cfg);
}

static const char *text(struct buf *b) {
    buf_add(b, (const uint8_t *)"", 1);
    b->len--;
    return b->p;
}

/* ---- output ---- */

static void test_output(void) {
    cluster_spawn_options o = {0};
    o.file = "head -c 8388608 /dev/zero | tr '\\0' o & head -c 8388608 /dev/zero | tr '\\0' e >&2; wait";
    o.shell = true;
    uint32_t id = (uint32_t)OK(cluster_spawn(&o));
    wait_exit(id, 60000);
    struct child *c = &kids[id];
    CHECK(c->exit_code == 0 && c->signal == 0, "exit %d signal %d", c->exit_code, c->signal);
    CHECK(c->out.len == 8388608, "stdout: %zu bytes", c->out.len);
    CHECK(c->err.len == 8388608, "stderr: %zu bytes", c->err.len);
    for (size_t i = 0; i < c->out.len; i++) CHECK(c->out.p[i] == 'o', "stdout byte %zu", i);
    for (size_t i = 0; i < c->err.len; i++) CHECK(c->err.p[i] == 'e', "stderr byte %zu", i);
    CHECK(c->pid > 0, "pid reported");
}

/* ---- stdin ---- */

#define STDIN_TOTAL (4 << 20)
static size_t stdin_sent;
static uint32_t stdin_id;

static void fill(uint8_t *chunk, size_t off, size_t n) {
    for (size_t i = 0; i < n; i++) chunk[i] = (uint8_t)((off + i) * 7 + 3);
}

/* Streams: the next 64 KiB go out each time cat has echoed something back, so the input is
 * written while the output is read (neither side holds it all). */
static void send_more(uint32_t id, size_t len) {
    (void)len;
    if (id != stdin_id || stdin_sent >= STDIN_TOTAL) return;
    if (stdin_sent - kids[id].out.len > (1 << 20)) return; /* far enough ahead */
    uint8_t chunk[65536];
    fill(chunk, stdin_sent, sizeof chunk);
    OK(cluster_child_write(id, chunk, sizeof chunk));
    stdin_sent += sizeof chunk;
    if (stdin_sent == STDIN_TOTAL) OK(cluster_child_close_stdin(id));
}

static void test_stdin(void) {
    cluster_spawn_options o = {0};
    o.file = "cat";
    stdin_id = (uint32_t)OK(cluster_spawn(&o));
    on_out_hook = send_more;
    for (int i = 0; i < 4; i++) {
        uint8_t chunk[65536];
        fill(chunk, stdin_sent, sizeof chunk);
        OK(cluster_child_write(stdin_id, chunk, sizeof chunk));
        stdin_sent += sizeof chunk;
    }
    wait_exit(stdin_id, 60000);
    on_out_hook = NULL;
    struct child *c = &kids[stdin_id];
    CHECK(c->exit_code == 0, "cat exit %d signal %d", c->exit_code, c->signal);
    CHECK(c->out.len == STDIN_TOTAL, "echoed %zu of %d bytes", c->out.len, STDIN_TOTAL);
    uint8_t want[4096];
    for (size_t off = 0; off < c->out.len; off += sizeof want) {
        fill(want, off, sizeof want);
        CHECK(memcmp(c->out.p + off, want, sizeof want) == 0, "echoed bytes at %zu", off);
    }
    CHECK(c->drains == 0, "no write was refused, no drain");
    /* A queue past 64 MiB refuses (AGAIN), and says when it has been written out: wc -c counts
     * every byte accepted. */
    /* It reads nothing until told through a FIFO, so the queue is sure to be full. */
    char fifo[64], line[160];
    snprintf(fifo, sizeof fifo, "/tmp/rct-children-%d.fifo", (int)getpid());
    unlink(fifo);
    CHECK(mkfifo(fifo, 0600) == 0, "mkfifo");
    snprintf(line, sizeof line, "read go < %s; exec wc -c", fifo);
    o.file = line;
    o.shell = true;
    uint32_t wc = (uint32_t)OK(cluster_spawn(&o));
    o.shell = false;
    size_t big = 60u << 20, more = 8u << 20;
    uint8_t *block = calloc(1, big);
    CHECK(block, "calloc");
    OK(cluster_child_write(wc, block, big));
    EXPECT_ERR(cluster_child_write(wc, block, more), CLUSTER_E_AGAIN);
    int go = open(fifo, O_WRONLY); /* waits for the child to open it */
    CHECK(go >= 0 && write(go, "go\n", 3) == 3, "tell the child to read");
    close(go);
    unlink(fifo);
    long long end = now_ms() + 60000;
    while (kids[wc].drains == 0) {
        CHECK(now_ms() < end, "CHILD_STDIN_DRAIN within 60 s");
        OK(cluster_dispatch(50));
    }
    OK(cluster_child_write(wc, block, more));
    free(block);
    OK(cluster_child_close_stdin(wc));
    wait_exit(wc, 60000);
    CHECK(kids[wc].drains == 1, "%d drains", kids[wc].drains);
    CHECK(strtoull(text(&kids[wc].out), NULL, 10) == big + more, "wc counted [%s]", text(&kids[wc].out));
    /* Gone: unknown id. A child whose stdin was closed: CLOSED. */
    EXPECT_ERR(cluster_child_write(stdin_id, (const uint8_t *)"x", 1), CLUSTER_E_INVAL);
    o.file = "sleep";
    const char *args[] = {"30", NULL};
    o.args = args;
    uint32_t id = (uint32_t)OK(cluster_spawn(&o));
    OK(cluster_child_close_stdin(id));
    EXPECT_ERR(cluster_child_write(id, (const uint8_t *)"x", 1), CLUSTER_E_CLOSED);
    OK(cluster_child_kill(id, SIGKILL));
    wait_exit(id, 10000);
    /* stdin not a pipe */
    o.stdio[0].mode = CLUSTER_STDIO_IGNORE;
    o.args = NULL;
    o.file = "true";
    id = (uint32_t)OK(cluster_spawn(&o));
    EXPECT_ERR(cluster_child_write(id, (const uint8_t *)"x", 1), CLUSTER_E_CLOSED);
    wait_exit(id, 10000);
}

/* ---- quoting ---- */

static void test_quoting(void) {
    const char *args[] = {"%s|\n", "a b; echo INJECTED", "$(echo X)", "'q' \"d\"", "`id`", "", NULL};
    uint32_t id = (uint32_t)OK(cluster_exec_file("printf", args, NULL));
    wait_exit(id, 10000);
    const char *want = "a b; echo INJECTED|\n$(echo X)|\n'q' \"d\"|\n`id`|\n|\n";
    CHECK(strcmp(text(&kids[id].exec_out), want) == 0, "exec_file printed [%s]", text(&kids[id].exec_out));
    CHECK(kids[id].exit_code == 0 && kids[id].exec_err.len == 0, "exit %d", kids[id].exit_code);
    CHECK(kids[id].out.len == 0, "an exec's output comes in its CHILD_EXIT only");

    id = (uint32_t)OK(cluster_exec("echo 'a  b' $((1+2)); echo err >&2", NULL));
    wait_exit(id, 10000);
    CHECK(strcmp(text(&kids[id].exec_out), "a  b 3\n") == 0, "exec printed [%s]", text(&kids[id].exec_out));
    CHECK(strcmp(text(&kids[id].exec_err), "err\n") == 0, "exec stderr [%s]", text(&kids[id].exec_err));

    /* spawn without a shell: a ';' is an argument; with one, args join the command line. */
    cluster_spawn_options o = {0};
    o.file = "echo";
    const char *sargs[] = {"x;", "echo", "INJECTED", NULL};
    o.args = sargs;
    id = (uint32_t)OK(cluster_spawn(&o));
    wait_exit(id, 10000);
    CHECK(strcmp(text(&kids[id].out), "x; echo INJECTED\n") == 0, "spawn printed [%s]", text(&kids[id].out));
    o.shell = true;
    const char *shargs[] = {"$((2*3))", NULL};
    o.args = shargs;
    id = (uint32_t)OK(cluster_spawn(&o));
    wait_exit(id, 10000);
    CHECK(strcmp(text(&kids[id].out), "6\n") == 0, "spawn shell printed [%s]", text(&kids[id].out));

    /* env (replace, add) and cwd */
    cluster_spawn_options e = {0};
    const char *env[] = {"RCT_A=1 2", "PATH=/usr/bin:/bin", NULL};
    e.env = env;
    e.env_mode = CLUSTER_ENV_REPLACE;
    e.cwd = "/";
    id = (uint32_t)OK(cluster_exec("echo \"$RCT_A:$HOME:$(pwd)\"", &e));
    wait_exit(id, 10000);
    CHECK(strcmp(text(&kids[id].exec_out), "1 2::/\n") == 0, "env/cwd [%s]", text(&kids[id].exec_out));
    setenv("RCT_INHERITED", "yes", 1);
    e.env_mode = CLUSTER_ENV_INHERIT;
    e.cwd = NULL;
    id = (uint32_t)OK(cluster_exec("echo \"$RCT_A:$RCT_INHERITED\"", &e));
    wait_exit(id, 10000);
    CHECK(strcmp(text(&kids[id].exec_out), "1 2:yes\n") == 0, "env inherit [%s]", text(&kids[id].exec_out));
}

/* ---- timeout ---- */

static void test_timeout(void) {
    cluster_spawn_options o = {0};
    o.file = "sleep";
    const char *args[] = {"30", NULL};
    o.args = args;
    o.timeout_ms = 200;
    long long t0 = now_ms();
    uint32_t id = (uint32_t)OK(cluster_spawn(&o));
    wait_exit(id, 10000);
    long long took = now_ms() - t0;
    struct child *c = &kids[id];
    CHECK(c->signal == SIGTERM && c->exit_code == -1 && c->killed, "signal %d code %d killed %d", c->signal,
          c->exit_code, c->killed);
    CHECK(c->errors == 1 && strstr(text(&c->error), "timed out after 200 ms"), "error [%s]", text(&c->error));
    CHECK(took >= 200 && took < 10000, "took %lld ms", took);
    /* its own kill signal, and a child done in time is not killed */
    o.kill_signal = SIGKILL;
    id = (uint32_t)OK(cluster_spawn(&o));
    wait_exit(id, 10000);
    CHECK(kids[id].signal == SIGKILL, "signal %d", kids[id].signal);
    o.file = "true";
    o.args = NULL;
    o.timeout_ms = 5000;
    id = (uint32_t)OK(cluster_spawn(&o));
    wait_exit(id, 10000);
    CHECK(kids[id].exit_code == 0 && !kids[id].killed && kids[id].errors == 0, "true in time");
}

/* ---- maxbuffer ---- */

static void test_maxbuffer(void) {
    cluster_spawn_options o = {0};
    o.max_buffer = 100000;
    const char *args[] = {"-c", "1000000000", "/dev/zero", NULL};
    uint32_t id = (uint32_t)OK(cluster_exec_file("head", args, &o));
    wait_exit(id, 20000);
    struct child *c = &kids[id];
    CHECK(c->errors == 1 && strstr(text(&c->error), "stdout maxBuffer length exceeded"), "error [%s]",
          text(&c->error));
    CHECK(c->exec_out.len == 100000, "kept %zu bytes", c->exec_out.len);
    CHECK(c->killed && (c->signal == SIGTERM || c->signal == SIGPIPE), "signal %d", c->signal);
    /* just under the limit: all of it, no error */
    const char *args2[] = {"-c", "99999", "/dev/zero", NULL};
    id = (uint32_t)OK(cluster_exec_file("head", args2, &o));
    wait_exit(id, 20000);
    CHECK(kids[id].exec_out.len == 99999 && kids[id].errors == 0 && kids[id].exit_code == 0, "under the limit");
}

/* ---- signal ---- */

static void test_signal(void) {
    cluster_spawn_options o = {0};
    o.file = "sleep";
    const char *args[] = {"30", NULL};
    o.args = args;
    uint32_t id = (uint32_t)OK(cluster_spawn(&o));
    OK(cluster_child_kill(id, 0));
    OK(cluster_child_kill(id, SIGUSR1));
    wait_exit(id, 10000);
    CHECK(kids[id].signal == SIGUSR1 && kids[id].exit_code == -1 && kids[id].killed, "signal %d", kids[id].signal);
    EXPECT_ERR(cluster_child_kill(id, SIGTERM), CLUSTER_E_INVAL);
    EXPECT_ERR(cluster_child_kill(id, 99), CLUSTER_E_INVAL);
    id = (uint32_t)OK(cluster_exec("kill -SEGV $$", NULL));
    wait_exit(id, 10000);
    CHECK(kids[id].signal == SIGSEGV && !kids[id].killed, "signal %d", kids[id].signal);
    id = (uint32_t)OK(cluster_exec("exit 42", NULL));
    wait_exit(id, 10000);
    CHECK(kids[id].exit_code == 42 && kids[id].signal == 0, "code %d", kids[id].exit_code);
}

/* ---- missing ---- */

static void test_missing(void) {
    cluster_spawn_options o = {0};
    o.file = "/nonexistent/rct-prog";
    EXPECT_ERR(cluster_spawn(&o), CLUSTER_E_SYS);
    CHECK(strstr(cluster_last_error(), "/nonexistent/rct-prog") && strstr(cluster_last_error(), "No such file"),
          "sentence [%s]", cluster_last_error());
    o.file = "rct-no-such-program";
    EXPECT_ERR(cluster_spawn(&o), CLUSTER_E_SYS);
    CHECK(strstr(cluster_last_error(), "rct-no-such-program"), "sentence [%s]", cluster_last_error());
    EXPECT_ERR(cluster_exec_file("rct-no-such-program", NULL, NULL), CLUSTER_E_SYS);
    CHECK(strstr(cluster_last_error(), "rct-no-such-program"), "sentence [%s]", cluster_last_error());
    o.file = "/etc/passwd"; /* not executable */
    EXPECT_ERR(cluster_spawn(&o), CLUSTER_E_SYS);
    CHECK(strstr(cluster_last_error(), "/etc/passwd"), "sentence [%s]", cluster_last_error());
    o.file = "true";
    o.cwd = "/nonexistent-dir";
    EXPECT_ERR(cluster_spawn(&o), CLUSTER_E_SYS);
    CHECK(strstr(cluster_last_error(), "chdir"), "sentence [%s]", cluster_last_error());
    uint32_t id = (uint32_t)OK(cluster_exec("rct-no-such-program", NULL));
    wait_exit(id, 10000);
    CHECK(kids[id].exit_code == 127 && strstr(text(&kids[id].exec_err), "rct-no-such-program"), "code %d [%s]",
          kids[id].exit_code, text(&kids[id].exec_err));
    /* bad options */
    EXPECT_ERR(cluster_spawn(NULL), CLUSTER_E_INVAL);
    cluster_spawn_options b = {0};
    EXPECT_ERR(cluster_spawn(&b), CLUSTER_E_INVAL);
    b.file = "true";
    b.stdio[1].mode = 9;
    EXPECT_ERR(cluster_spawn(&b), CLUSTER_E_INVAL);
    b.stdio[1].mode = CLUSTER_STDIO_FD;
    b.stdio[1].fd = -5;
    EXPECT_ERR(cluster_spawn(&b), CLUSTER_E_INVAL);
    b.stdio[1].mode = CLUSTER_STDIO_PIPE;
    b.env_mode = 7;
    EXPECT_ERR(cluster_spawn(&b), CLUSTER_E_INVAL);
    b.env_mode = 0;
    const char *badenv[] = {"NOEQUALS", NULL};
    b.env = badenv;
    EXPECT_ERR(cluster_spawn(&b), CLUSTER_E_INVAL);
    b.env = NULL;
    b.ipc = true;
    EXPECT_ERR(cluster_spawn(&b), CLUSTER_E_INVAL);
    EXPECT_ERR(cluster_child_kill(77777, SIGTERM), CLUSTER_E_INVAL);
    EXPECT_ERR(cluster_child_close_stdin(77777), CLUSTER_E_INVAL);
}

/* ---- many ---- */

/* The children of this process whose command is `comm` (any when NULL) and, when `state` is
 * not 0, in that state: their number, the first `max` pids into `pids`. */
static int find_children(const char *comm, char state, pid_t *pids, int max) {
    DIR *d = opendir("/proc");
    CHECK(d, "opendir /proc");
    struct dirent *e;
    int n = 0;
    char path[300], buf[512], name[64];
    snprintf(name, sizeof name, "(%s)", comm ? comm : "");
    while ((e = readdir(d))) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        size_t r = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[r] = '\0';
        char *rp = strrchr(buf, ')');
        char st;
        int ppid;
        if (!rp || sscanf(rp + 2, "%c %d", &st, &ppid) != 2 || ppid != getpid()) continue;
        if ((comm && !strstr(buf, name)) || (state && st != state)) continue;
        if (n < max) pids[n] = atoi(e->d_name);
        n++;
    }
    closedir(d);
    return n;
}

static int count_zombies(void) { return find_children(NULL, 'Z', NULL, 0); }

static void test_many(void) {
    cluster_spawn_options o = {0};
    o.file = "/bin/true";
    int fds_before = 0;
    long long t0 = now_ms();
    for (int i = 0; i < 1000; i++) {
        uint32_t id = (uint32_t)OK(cluster_spawn(&o));
        CHECK(id < MAXC, "id %u", id);
        wait_exit(id, 10000);
        CHECK(kids[id].exit_code == 0 && kids[id].signal == 0, "child %u: code %d", id, kids[id].exit_code);
        if (i == 9) fds_before = count_fds(getpid());
    }
    int fds_after = count_fds(getpid());
    CHECK(fds_after == fds_before, "fds: %d after 10 children, %d after 1000", fds_before, fds_after);
    CHECK(count_zombies() == 0, "%d zombies", count_zombies());
    fprintf(stderr, "1000 children in %lld ms\n", now_ms() - t0);
}

/* ---- orphan ---- */

static void test_orphan(void) {
    /* This process adopts what its helper leaves (a subreaper), so the helper's children can be
     * waited for here once the helper is killed. */
    CHECK(prctl(PR_SET_CHILD_SUBREAPER, 1) == 0, "PR_SET_CHILD_SUBREAPER");
    int p[2];
    CHECK(pipe(p) == 0, "pipe");
    pid_t helper = fork();
    CHECK(helper >= 0, "fork");
    if (helper == 0) {
        close(p[0]);
        start_primary();
        cluster_spawn_options o = {0};
        o.file = "sleep";
        const char *args[] = {"60", NULL};
        o.args = args;
        o.stdio[1].mode = CLUSTER_STDIO_IGNORE;
        uint32_t a = (uint32_t)OK(cluster_spawn(&o));
        o.detached = true;
        uint32_t b = (uint32_t)OK(cluster_spawn(&o));
        /* Their pids: the children of this process named sleep (the other is the worker). */
        (void)a;
        (void)b;
        pid_t pids[2] = {0, 0};
        int n = find_children("sleep", 0, pids, 2);
        CHECK(n == 2, "found %d children", n);
        CHECK(write(p[1], pids, sizeof pids) == sizeof pids, "write");
        for (;;) pause();
    }
    close(p[1]);
    pid_t pids[2];
    CHECK(read(p[0], pids, sizeof pids) == sizeof pids, "read the children's pids");
    /* Which is which: the detached one leads its own session. */
    pid_t detached = getsid(pids[0]) == pids[0] ? pids[0] : pids[1];
    pid_t attached = detached == pids[0] ? pids[1] : pids[0];
    CHECK(getsid(detached) == detached && getsid(attached) != attached, "one detached, one not: %d sid %d, %d sid %d", pids[0], getsid(pids[0]), pids[1], getsid(pids[1]));
    /* One of the two dies now (its parent-death signal); the detached one lives on. */
    CHECK(kill(helper, SIGKILL) == 0, "kill the helper");
    CHECK(waitpid(helper, NULL, 0) == helper, "reap the helper");
    long long end = now_ms() + 10000;
    int st = 0;
    for (;;) {
        pid_t r = waitpid(attached, &st, WNOHANG);
        if (r == attached) break;
        CHECK(now_ms() < end, "the child of the killed primary is still alive after 10 s");
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "it died of SIGKILL (status %d)", st);
    CHECK(kill(detached, 0) == 0, "the detached child outlived its primary");
    kill(detached, SIGKILL);
    CHECK(waitpid(detached, NULL, 0) == detached, "reap the detached child");
}

/* ---- worker ---- */

static volatile int worker_said;

static void on_worker_event(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind == CLUSTER_EVENT_CHILD_EXIT) {
        CHECK(ev->exit_code == 0, "the worker's child exited %d", ev->exit_code);
        OK(cluster_send(0, ev->data, ev->listener));
        OK(cluster_shutdown(0));
    }
}

static void on_primary_for_worker(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind == CLUSTER_EVENT_MESSAGE) {
        CHECK(ev->len == 10 && memcmp(ev->data, "in worker\n", 10) == 0, "message [%.*s]", (int)ev->len,
              (const char *)ev->data);
        worker_said = 1;
    }
}

static void test_worker(void) {
    setenv("RCT_WORKER_CHILD", "1", 1);
    struct cluster_config *cfg = cluster_config_new();
    OK(cluster_config_set_mode(cfg, CLUSTER_MODE_EXEC));
    OK(cluster_config_set_workers(cfg, 1));
    OK(cluster_primary_start(cfg, on_primary_for_worker, NULL));
    cluster_config_free(cfg);
    dispatch_until(&worker_said, 30000, "the worker's child's output");
    OK(cluster_shutdown(2000));
    while (cluster_dispatch(100) >= 0) {
    }
}

/* ---- stop ---- */

static void test_stop(void) {
    cluster_spawn_options o = {0};
    o.file = "echo $$; exec sleep 30";
    o.shell = true;
    uint32_t a = (uint32_t)OK(cluster_spawn(&o));
    o.detached = true;
    uint32_t b = (uint32_t)OK(cluster_spawn(&o));
    long long end = now_ms() + 10000;
    while (!memchr(kids[a].out.p ? kids[a].out.p : "", '\n', kids[a].out.len) ||
           !memchr(kids[b].out.p ? kids[b].out.p : "", '\n', kids[b].out.len)) {
        CHECK(now_ms() < end, "the children's pids within 10 s");
        OK(cluster_dispatch(50));
    }
    pid_t pa = (pid_t)atoi(text(&kids[a].out)), pb = (pid_t)atoi(text(&kids[b].out));
    CHECK(pa > 0 && pb > 0 && kill(pa, 0) == 0 && kill(pb, 0) == 0, "both run");
    OK(cluster_shutdown(0));
    while (cluster_dispatch(100) >= 0) {
    }
    /* Killed and reaped by the runtime's end: the pid is gone, not a zombie. */
    CHECK(kill(pa, 0) == -1 && errno == ESRCH, "the child outlived the runtime");
    CHECK(kill(pb, 0) == 0, "the detached child was left running");
    kill(pb, SIGKILL);
    CHECK(waitpid(pb, NULL, 0) == pb, "reap the detached child");
}

int main(int argc, char **argv) {
    test_deadline(110);
    if (cluster_is_worker()) {
        OK(cluster_worker_start(on_worker_event, NULL));
        if (getenv("RCT_WORKER_CHILD")) {
            const char *env[] = {"RCT_ROLE=worker", NULL};
            OK(cluster_exec("echo in $RCT_ROLE", &(cluster_spawn_options){.env = env}));
        }
        cluster_run();
        return 0;
    }
    CHECK(argc == 2, "usage: children output|stdin|quoting|timeout|maxbuffer|signal|missing|many|orphan|worker");
    const char *what = argv[1];
    signal(SIGPIPE, SIG_IGN);
    if (strcmp(what, "orphan") == 0) {
        test_orphan();
        return 0;
    }
    if (strcmp(what, "worker") == 0) {
        test_worker();
        return 0;
    }
    /* Before the runtime starts: refused. */
    cluster_spawn_options o = {0};
    o.file = "true";
    EXPECT_ERR(cluster_spawn(&o), CLUSTER_E_STATE);
    start_primary();
    if (strcmp(what, "output") == 0) test_output();
    else if (strcmp(what, "stdin") == 0) test_stdin();
    else if (strcmp(what, "quoting") == 0) test_quoting();
    else if (strcmp(what, "timeout") == 0) test_timeout();
    else if (strcmp(what, "maxbuffer") == 0) test_maxbuffer();
    else if (strcmp(what, "signal") == 0) test_signal();
    else if (strcmp(what, "missing") == 0) test_missing();
    else if (strcmp(what, "many") == 0) test_many();
    else if (strcmp(what, "stop") == 0) {
        test_stop();
        return 0;
    }
    else FAIL("unknown test %s", what);
    CHECK(count_zombies() == 0, "zombies left");
    OK(cluster_shutdown(0));
    while (cluster_dispatch(100) >= 0) {
    }
    return 0;
}
