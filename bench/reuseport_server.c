/* The "no primary at all" baseline: N forked processes, each with its own SO_REUSEPORT
 * listening socket, answering the same response as rcluster_server.c. The ceiling a handoff
 * design is measured against.
 *   reuseport_server PORT WORKERS [close|keepalive|id]
 * close (default): a blocking accept loop, one response per connection.
 * keepalive: an epoll loop per process, many requests per connection until EOF.
 * id: like close, the body names the process index ("w<index>"), for the balance count. */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static const char RESPONSE[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
static const char RESPONSE_KA[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

static int listen_on(int port, int flags) {
    int one = 1, s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | flags, 0);
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(s, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 4096)) {
        perror("bind/listen");
        _exit(1);
    }
    return s;
}

static void serve(int port, int index, int idmode) {
    int s = listen_on(port, 0);
    char idresp[128];
    int idlen = snprintf(idresp, sizeof idresp, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nw%04d", index % 10000);
    for (;;) {
        int c = accept4(s, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0) continue;
        char buf[4096];
        if (read(c, buf, sizeof buf) > 0) {
            ssize_t w = idmode ? write(c, idresp, (size_t)idlen) : write(c, RESPONSE, sizeof RESPONSE - 1);
            if (w < 0) perror("write");
        }
        close(c);
    }
}

static void serve_ka(int port) {
    int s = listen_on(port, SOCK_NONBLOCK), ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event e = {.events = EPOLLIN, .data.fd = s};
    epoll_ctl(ep, EPOLL_CTL_ADD, s, &e);
    for (;;) {
        struct epoll_event evs[64];
        int n = epoll_wait(ep, evs, 64, -1);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == s) {
                int c;
                while ((c = accept4(s, NULL, NULL, SOCK_CLOEXEC)) >= 0) {
                    struct epoll_event ce = {.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce);
                }
                continue;
            }
            char buf[16384];
            ssize_t r = read(fd, buf, sizeof buf);
            if (r <= 0) {
                if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
                epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
                close(fd);
                continue;
            }
            int reqs = 0;
            for (ssize_t j = 0; j + 3 < r; j++)
                if (buf[j] == '\r' && buf[j + 1] == '\n' && buf[j + 2] == '\r' && buf[j + 3] == '\n') reqs++;
            if (reqs == 0) reqs = 1;
            char out[sizeof RESPONSE_KA * 16];
            size_t len = 0;
            for (int k = 0; k < reqs && k < 16; k++) memcpy(out + len, RESPONSE_KA, sizeof RESPONSE_KA - 1), len += sizeof RESPONSE_KA - 1;
            if (write(fd, out, len) < 0) {
                epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
                close(fd);
            }
        }
    }
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    int port = atoi(argv[1]), n = atoi(argv[2]);
    const char *mode = argc > 3 ? argv[3] : "close";
    for (int i = 0; i < n; i++) {
        if (fork() == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (!strcmp(mode, "keepalive")) serve_ka(port);
            serve(port, i, !strcmp(mode, "id"));
        }
    }
    printf("ready\n");
    fflush(stdout);
    while (wait(NULL) > 0) {
    }
    return 0;
}
