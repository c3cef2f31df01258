/* Startup and memory: time from main() until N workers are READY, in FORK mode (the worker
 * main runs in the forked child) or EXEC mode (each worker execs this same C program), then,
 * after the workers sat idle for 300 ms, the primary's and one worker's VmRSS.
 *   startup_c fork|exec [workers]
 * Prints: startup MODE MS PRIMARY_RSS_KB WORKER_RSS_KB */
#define _GNU_SOURCE
#include <rcluster.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double t0;
static unsigned n, ready;
static int exec_mode;
static int last_pid;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long rss_kb(int pid) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    long kb = -1;
    if (!f) return -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6)) kb = atol(line + 6);
    fclose(f);
    return kb;
}

static void on_worker(void *ud, const cluster_event *ev) {
    (void)ud;
    (void)ev;
}

static int worker_main(void *ud) {
    if (cluster_worker_start(on_worker, ud) < 0) return 1;
    return cluster_run() == 0 ? 0 : 1;
}

static void on_primary(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind != CLUSTER_EVENT_READY) return;
    last_pid = ev->pid;
    if (++ready < n) return;
    double ms = (now() - t0) * 1e3;
    usleep(300000);
    printf("startup %s %.2f %ld %ld\n", exec_mode ? "exec" : "fork", ms, rss_kb(getpid()), rss_kb(last_pid));
    fflush(stdout);
    cluster_shutdown(0);
}

int main(int argc, char **argv) {
    t0 = now();
    if (cluster_is_worker()) return worker_main(NULL); /* EXEC mode: this program, as a worker */
    exec_mode = argc > 1 && !strcmp(argv[1], "exec");
    n = argc > 2 ? (unsigned)atoi(argv[2]) : 8;
    cluster_config *cfg = cluster_config_new();
    cluster_config_set_workers(cfg, n);
    cluster_config_set_mode(cfg, exec_mode ? CLUSTER_MODE_EXEC : CLUSTER_MODE_FORK);
    cluster_config_set_worker_main(cfg, worker_main, NULL);
    if (cluster_primary_start(cfg, on_primary, NULL) < 0) {
        fprintf(stderr, "startup_c: %s\n", cluster_last_error());
        return 1;
    }
    cluster_config_free(cfg);
    return cluster_run() == 0 ? 0 : 1;
}
