/* Balance client: TOTAL connections to 127.0.0.1:PORT from THREADS threads at once, one request
 * each; the server answers with its worker in the body ("w<id>"). Prints the per-worker counts
 * and max/min.   balance_client PORT [total] [threads]
 * Prints: balance MAX MIN RATIO COUNT... */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAXW 10000
static atomic_long counts[MAXW];
static atomic_long left, failed;
static int port;
static const char REQ[] = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";

static void *run(void *arg) {
    (void)arg;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    while (atomic_fetch_sub(&left, 1) > 0) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        char buf[512];
        size_t got = 0;
        if (connect(s, (struct sockaddr *)&a, sizeof a) == 0 && write(s, REQ, sizeof REQ - 1) > 0) {
            ssize_t r;
            while (got < sizeof buf - 1 && (r = read(s, buf + got, sizeof buf - 1 - got)) > 0) got += (size_t)r;
        }
        close(s);
        buf[got] = 0;
        char *body = strstr(buf, "\r\n\r\nw");
        if (body) atomic_fetch_add(&counts[atoi(body + 5) % MAXW], 1);
        else atomic_fetch_add(&failed, 1);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    port = atoi(argv[1]);
    long total = argc > 2 ? atol(argv[2]) : 10000;
    int threads = argc > 3 ? atoi(argv[3]) : 16;
    atomic_store(&left, total);
    pthread_t t[256];
    for (int i = 0; i < threads && i < 256; i++) pthread_create(&t[i], NULL, run, NULL);
    for (int i = 0; i < threads && i < 256; i++) pthread_join(t[i], NULL);
    long mx = 0, mn = -1;
    char list[4096] = "";
    size_t off = 0;
    for (int i = 0; i < MAXW; i++) {
        long c = atomic_load(&counts[i]);
        if (!c) continue;
        if (c > mx) mx = c;
        if (mn < 0 || c < mn) mn = c;
        off += (size_t)snprintf(list + off, sizeof list - off, " %ld", c);
        if (off >= sizeof list) break;
    }
    printf("balance %ld %ld %.3f%s%s\n", mx, mn, mn > 0 ? (double)mx / (double)mn : 0.0, list,
           atomic_load(&failed) ? " (some failed)" : "");
    return 0;
}
