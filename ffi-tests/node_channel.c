/* Node's IPC channel (CLUSTER_CHANNEL_NODE_JSON), spoken by the primary to workers that are
 * not Node: this program re-executed (EXEC mode) finds NODE_CHANNEL_FD and NODE_UNIQUE_ID and
 * speaks the protocol by hand, as Node's cluster worker code does (docs/node-dropin.md).
 *
 * node_channel protocol
 *   A well-behaved worker: online, queryServer for 127.0.0.1:0 (round-robin: the answer
 *   carries the address), a user message with the port; the primary's client connects, the
 *   worker gets a newconn with the connection (non-blocking, as libuv needs), answers
 *   NODE_HANDLE_ACK and {accepted}, writes on it; a NODE_HANDLE without an fd gets a NACK; the
 *   primary's cluster_worker_disconnect arrives as {act: 'disconnect'} and the worker exits 0.
 *   The ONLINE event, the MESSAGE with the body as written, exit 0, and the primary's fd count
 *   back to where it started.
 * node_channel hostile
 *   Worker 1 floods fds (one byte each, no NODE_HANDLE message to take them), worker 2 writes
 *   2 MiB without a newline over a 1 MiB message limit, worker 3 writes lines that are not JSON
 *   and JSON that is not an object (forwarded as messages: the host decides). 1 and 2 are
 *   dropped (ERROR, SIGKILL), 3 is kept and exits 0 when disconnected; the primary's fd count
 *   is back to where it started.
 */
#include "harness.h"

#include <fcntl.h>
#include <sys/eventfd.h>

static const char *which;

/* ---------------------------------------------------------------- worker side ---- */

static int chan = -1;
static char inbuf[1 << 16];
static size_t inlen;
static int pending_fd = -1;

static void put(const char *line) {
    size_t n = strlen(line);
    CHECK(write(chan, line, n) == (ssize_t)n, "write to the channel");
}

/* The next line from the primary (NUL-terminated, without its newline); an fd that came with
 * the bytes goes to pending_fd. Fails after 10 s. */
static char *next_line(void) {
    static char line[8192];
    for (;;) {
        char *nl = memchr(inbuf, '\n', inlen);
        if (nl) {
            size_t n = (size_t)(nl - inbuf);
            CHECK(n < sizeof line, "a line of %zu bytes", n);
            memcpy(line, inbuf, n);
            line[n] = '\0';
            memmove(inbuf, nl + 1, inlen - n - 1);
            inlen -= n + 1;
            return line;
        }
        struct pollfd p = {.fd = chan, .events = POLLIN};
        CHECK(poll(&p, 1, 10000) == 1, "nothing from the primary for 10 s");
        char cbuf[CMSG_SPACE(sizeof(int))];
        struct iovec iov = {.iov_base = inbuf + inlen, .iov_len = sizeof inbuf - inlen};
        struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf};
        ssize_t r = recvmsg(chan, &m, MSG_CMSG_CLOEXEC);
        if (r < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        CHECK(r > 0, "the channel closed (%zd)", r);
        struct cmsghdr *c = CMSG_FIRSTHDR(&m);
        if (c && c->cmsg_type == SCM_RIGHTS) memcpy(&pending_fd, CMSG_DATA(c), sizeof(int));
        inlen += (size_t)r;
    }
}

/* The next line containing `needle`. */
static char *line_with(const char *needle) {
    for (;;) {
        char *l = next_line();
        if (strstr(l, needle)) return l;
    }
}

static long field(const char *line, const char *name) {
    char key[64];
    snprintf(key, sizeof key, "\"%s\":", name);
    const char *p = strstr(line, key);
    CHECK(p, "no %s in %s", name, line);
    return strtol(p + strlen(key), NULL, 10);
}

static int worker_protocol(void) {
    put("{\"cmd\":\"NODE_CLUSTER\",\"act\":\"online\",\"seq\":0}\n");
    put("{\"cmd\":\"NODE_CLUSTER\",\"act\":\"queryServer\",\"index\":0,\"data\":null,\"address\":\"127.0.0.1\","
        "\"port\":0,\"addressType\":4,\"backlog\":0,\"seq\":1}\n");
    char *reply = line_with("\"ack\":1");
    CHECK(strstr(reply, "\"errno\":null") && strstr(reply, "\"sockname\""), "a round-robin answer: %s", reply);
    long port = field(strstr(reply, "\"sockname\""), "port");
    char msg[256];
    snprintf(msg, sizeof msg, "{\"port\":%ld,\"note\":\"caf\\u00e9\"}\n", port);
    put(msg);
    /* A NODE_HANDLE without an fd: NACK. */
    put("{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Socket\",\"msg\":\"no fd\"}\n");
    line_with("NODE_HANDLE_NACK");
    char *conn = line_with("\"newconn\"");
    CHECK(strstr(conn, "\"cmd\":\"NODE_HANDLE\"") && strstr(conn, "net.Native"), "newconn: %s", conn);
    CHECK(pending_fd >= 0, "the newconn came without its connection");
    int fd = pending_fd;
    pending_fd = -1;
    CHECK(fcntl(fd, F_GETFL) & O_NONBLOCK, "the connection is non-blocking");
    long seq = field(strstr(conn, "\"msg\""), "seq");
    put("{\"cmd\":\"NODE_HANDLE_ACK\"}\n");
    snprintf(msg, sizeof msg, "{\"cmd\":\"NODE_CLUSTER\",\"ack\":%ld,\"accepted\":true,\"seq\":2}\n", seq);
    put(msg);
    CHECK(write(fd, "hello from C\n", 13) == 13, "write the answer");
    close(fd);
    line_with("\"act\":\"disconnect\"");
    put("{\"cmd\":\"NODE_CLUSTER\",\"act\":\"close\",\"key\":\"127.0.0.1:0:4:undefined:0\",\"seq\":3}\n");
    return 0;
}

static int worker_hostile(int id) {
    put("{\"cmd\":\"NODE_CLUSTER\",\"act\":\"online\",\"seq\":0}\n");
    line_with("\"go\"");
    if (id == 1) {
        int ev = eventfd(0, EFD_CLOEXEC);
        for (int i = 0; i < 64; i++) {
            char cbuf[CMSG_SPACE(sizeof(int))] = {0};
            struct iovec iov = {.iov_base = " ", .iov_len = 1};
            struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf};
            struct cmsghdr *c = CMSG_FIRSTHDR(&m);
            c->cmsg_level = SOL_SOCKET;
            c->cmsg_type = SCM_RIGHTS;
            c->cmsg_len = CMSG_LEN(sizeof(int));
            memcpy(CMSG_DATA(c), &ev, sizeof(int));
            if (sendmsg(chan, &m, MSG_NOSIGNAL) < 0) break; /* dropped meanwhile */
        }
    } else if (id == 2) {
        static char junk[1 << 16];
        memset(junk, 'A', sizeof junk);
        for (int i = 0; i < 32; i++)
            if (write(chan, junk, sizeof junk) < 0) break;
    } else {
        put("}{ not json\n");
        put("\"a string\"\n");
        put("[1,2,3]\n");
        put("\n");
        line_with("\"act\":\"disconnect\"");
        return 0;
    }
    pause(); /* until the primary kills it */
    return 0;
}

/* ---------------------------------------------------------------- primary side ---- */

static int onlines, exits, errors, messages, port;
static int exit_code[8], exit_signal[8];
static char last_message[8][256];

static void on_primary(void *ud, const cluster_event *ev) {
    (void)ud;
    uint32_t id = ev->worker_id;
    CHECK(id < 8, "worker id %u", id);
    switch (ev->kind) {
    case CLUSTER_EVENT_ONLINE:
        onlines++;
        break;
    case CLUSTER_EVENT_MESSAGE: {
        messages++;
        size_t n = ev->len < sizeof last_message[id] - 1 ? ev->len : sizeof last_message[id] - 1;
        if (n) memcpy(last_message[id], ev->data, n);
        last_message[id][n] = '\0';
        const char *p = strstr(last_message[id], "\"port\":");
        if (p) port = atoi(p + 7);
        if (ev->fd >= 0) close(ev->fd);
        break;
    }
    case CLUSTER_EVENT_ERROR:
        errors++;
        break;
    case CLUSTER_EVENT_EXIT:
        exit_code[id] = ev->exit_code;
        exit_signal[id] = ev->signal;
        exits++;
        break;
    default:
        break;
    }
}

static int fd_count(void) {
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    CHECK(d, "opendir /proc/self/fd");
    while (readdir(d)) n++;
    closedir(d);
    return n;
}

int main(int argc, char **argv) {
    CHECK(argc >= 2, "usage: node_channel protocol|hostile");
    which = argv[1];
    const char *fdvar = getenv("NODE_CHANNEL_FD");
    if (fdvar) {
        chan = atoi(fdvar);
        CHECK(getenv("NODE_UNIQUE_ID"), "NODE_UNIQUE_ID is set");
        CHECK(!strcmp(getenv("NODE_CHANNEL_SERIALIZATION_MODE"), "json"), "json mode");
        CHECK(!getenv("RCLUSTER_WORKER_ID"), "no rcluster variables for a Node worker");
        int id = atoi(getenv("NODE_UNIQUE_ID"));
        return !strcmp(which, "protocol") ? worker_protocol() : worker_hostile(id);
    }
    test_deadline(60);
    int fds_before = fd_count();
    cluster_config *cfg = cluster_config_new();
    OK(cluster_config_set_mode(cfg, CLUSTER_MODE_EXEC));
    OK(cluster_config_set_channel(cfg, CLUSTER_CHANNEL_NODE_JSON));
    OK(cluster_config_set_restart(cfg, false));
    OK(cluster_config_set_signals(cfg, false));
    if (!strcmp(which, "hostile")) OK(cluster_config_set_max_message(cfg, 1 << 20));
    OK(cluster_primary_start(cfg, on_primary, NULL));
    cluster_config_free(cfg);
    if (!strcmp(which, "protocol")) {
        OK(cluster_fork());
        dispatch_until(&onlines, 10000, "ONLINE");
        volatile int have_port = 0;
        while (!have_port) {
            have_port = port != 0;
            if (!have_port) OK(cluster_dispatch(50));
        }
        CHECK(strstr(last_message[1], "caf\\u00e9"), "the body as the worker wrote it: %s", last_message[1]);
        int c = tcp_connect("127.0.0.1", port);
        CHECK(c >= 0, "connect to %d", port);
        char buf[64];
        long long end = now_ms() + 10000;
        ssize_t got = 0;
        fcntl(c, F_SETFL, O_NONBLOCK);
        while (got < 13 && now_ms() < end) {
            OK(cluster_dispatch(20));
            ssize_t r = read(c, buf + got, sizeof buf - 1 - (size_t)got);
            if (r > 0) got += r;
        }
        buf[got > 0 ? got : 0] = '\0';
        CHECK(!strcmp(buf, "hello from C\n"), "the worker answered: '%s'", buf);
        close(c);
        OK(cluster_worker_disconnect(1));
        dispatch_until(&exits, 10000, "EXIT");
        CHECK(exit_code[1] == 0 && exit_signal[1] == 0, "exit %d signal %d", exit_code[1], exit_signal[1]);
        CHECK(errors == 0, "%d ERROR events", errors);
    } else {
        for (int i = 0; i < 3; i++) OK(cluster_fork());
        while (onlines < 3) OK(cluster_dispatch(50));
        for (uint32_t id = 1; id <= 3; id++) OK(cluster_send(id, (const uint8_t *)"\"go\"", 4));
        while (exits < 2) OK(cluster_dispatch(50));
        CHECK(exit_signal[1] == SIGKILL && exit_signal[2] == SIGKILL, "dropped: %d %d", exit_signal[1], exit_signal[2]);
        CHECK(errors >= 2, "%d ERROR events", errors);
        CHECK(messages >= 3, "worker 3's lines were forwarded (%d messages)", messages);
        OK(cluster_worker_disconnect(3));
        while (exits < 3) OK(cluster_dispatch(50));
        CHECK(exit_code[3] == 0 && exit_signal[3] == 0, "worker 3 exit %d signal %d", exit_code[3], exit_signal[3]);
    }
    OK(cluster_shutdown(1000));
    OK(cluster_run());
    int fds_after = fd_count();
    CHECK(fds_after <= fds_before + 1, "fds: %d before, %d after", fds_before, fds_after); /* +1: the silent loop fd */
    printf("node_channel %s: ok\n", which);
    return 0;
}
