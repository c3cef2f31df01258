/* The "no primary at all" baseline: N forked processes, each with its own SO_REUSEPORT
 * listening socket and a blocking accept loop, answering the same response as
 * rcluster_server.c. The ceiling a handoff design is measured against.
 *   reuseport_server PORT WORKERS */
#define _GNU_SOURCE
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static const char RESPONSE[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";

static void serve(int port) {
    int one = 1, s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(s, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 4096)) {
        perror("bind/listen");
        _exit(1);
    }
    for (;;) {
        int c = accept4(s, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0) continue;
        char buf[4096];
        if (read(c, buf, sizeof buf) > 0 && write(c, RESPONSE, sizeof RESPONSE - 1) < 0) perror("write");
        close(c);
    }
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    int port = atoi(argv[1]), n = atoi(argv[2]);
    for (int i = 0; i < n; i++) {
        if (fork() == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            serve(port);
        }
    }
    printf("ready\n");
    fflush(stdout);
    while (wait(NULL) > 0) {
    }
    return 0;
}
