/* The rcluster contestant: N FORK workers behind the primary (policy from argv), each answering
 * one small HTTP response per connection. bench/run.sh drives it with wrk.
 *   rcluster_server PORT WORKERS [rr|least|shared|reuseport] */
#define _GNU_SOURCE
#include <rcluster.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char RESPONSE[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
static int least;

static void on_worker(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind != CLUSTER_EVENT_CONNECTION) return;
    char buf[4096];
    ssize_t n = read(ev->fd, buf, sizeof buf); /* wrk's request fits one read */
    if (n > 0 && write(ev->fd, RESPONSE, sizeof RESPONSE - 1) < 0) perror("write");
    close(ev->fd);
    if (least) cluster_conn_done();
}

static int worker_main(void *ud) {
    if (cluster_worker_start(on_worker, ud) < 0) return 1;
    return cluster_run() == 0 ? 0 : 1;
}

static void on_primary(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind == CLUSTER_EVENT_READY) printf("ready %u\n", ev->worker_id), fflush(stdout);
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    const char *policy = argc > 3 ? argv[3] : "rr";
    cluster_policy p = CLUSTER_POLICY_ROUND_ROBIN;
    if (!strcmp(policy, "least")) p = CLUSTER_POLICY_LEAST_CONNECTIONS, least = 1;
    if (!strcmp(policy, "shared")) p = CLUSTER_POLICY_SHARED;
    if (!strcmp(policy, "reuseport")) p = CLUSTER_POLICY_REUSEPORT;
    cluster_config *cfg = cluster_config_new();
    cluster_config_set_workers(cfg, (uint32_t)atoi(argv[2]));
    cluster_config_set_worker_main(cfg, worker_main, NULL);
    cluster_config_set_policy(cfg, p);
    if (cluster_config_listen_tcp(cfg, "127.0.0.1", (uint16_t)atoi(argv[1])) < 0 ||
        cluster_primary_start(cfg, on_primary, NULL) < 0) {
        fprintf(stderr, "rcluster_server: %s\n", cluster_last_error());
        return 1;
    }
    cluster_config_free(cfg);
    return cluster_run() == 0 ? 0 : 1;
}
