/* Child processes and threads on the loop, against their peers (bench/full.sh, [children]):
 *
 *   child_c spawn N     N spawn-and-wait of /bin/true in a row (cluster_spawn, default pipes,
 *                       the next started from the previous one's CHILD_EXIT): children/s
 *   child_c posix N     the same with posix_spawn(3) + waitpid(2), no loop: children/s
 *   child_c threads N   N message round trips between the loop and one thread
 *                       (cluster_thread_send -> cluster_thread_recv -> cluster_thread_post ->
 *                       THREAD_MESSAGE): round trips/s
 * Prints one line: "<mode> <rate>". */
#define _GNU_SOURCE
#include <rcluster.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static long target, done;
static uint32_t thread_id;
static cluster_spawn_options opts;

static void die(const char *what, int rc) {
    fprintf(stderr, "child_c: %s: %d (%s)\n", what, rc, cluster_last_error());
    exit(1);
}

static void on_event(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind == CLUSTER_EVENT_CHILD_EXIT) {
        if (ev->exit_code != 0) die("/bin/true failed", ev->exit_code);
        if (++done < target) {
            int rc = cluster_spawn(&opts);
            if (rc < 0) die("cluster_spawn", rc);
        }
    } else if (ev->kind == CLUSTER_EVENT_THREAD_MESSAGE) {
        if (++done < target) {
            int rc = cluster_thread_send(thread_id, ev->data, ev->len);
            if (rc < 0) die("cluster_thread_send", rc);
        } else {
            cluster_thread_send(thread_id, (const uint8_t *)"stop", 4);
        }
    }
}

static int echo(void *data) {
    (void)data;
    for (;;) {
        uint8_t *m;
        size_t len;
        if (cluster_thread_recv(&m, &len, -1) < 0) return 1;
        int stop = len == 4 && memcmp(m, "stop", 4) == 0;
        if (!stop) cluster_thread_post(m, len);
        free(m);
        if (stop) return 0;
    }
}

static void run_until_done(void) {
    while (done < target) {
        int rc = cluster_dispatch(1000);
        if (rc < 0) die("cluster_dispatch", rc);
    }
}

int main(int argc, char **argv) {
    if (cluster_is_worker()) { /* the primary's one idle worker */
        cluster_worker_start(on_event, NULL);
        return cluster_run() == 0 ? 0 : 3;
    }
    if (argc != 3) {
        fprintf(stderr, "usage: child_c spawn|posix|threads N\n");
        return 2;
    }
    target = atol(argv[2]);
    const char *mode = argv[1];
    double t0;
    if (strcmp(mode, "posix") == 0) {
        char *args[] = {"/bin/true", NULL};
        t0 = now_s();
        for (long i = 0; i < target; i++) {
            pid_t pid;
            if (posix_spawn(&pid, "/bin/true", NULL, NULL, args, environ) != 0) die("posix_spawn", -1);
            int st;
            if (waitpid(pid, &st, 0) != pid || st != 0) die("waitpid", st);
        }
        printf("posix %.0f\n", target / (now_s() - t0));
        return 0;
    }
    struct cluster_config *cfg = cluster_config_new();
    cluster_config_set_mode(cfg, CLUSTER_MODE_EXEC);
    cluster_config_set_workers(cfg, 1);
    int rc = cluster_primary_start(cfg, on_event, NULL);
    cluster_config_free(cfg);
    if (rc < 0) die("cluster_primary_start", rc);
    if (strcmp(mode, "spawn") == 0) {
        opts.file = "/bin/true";
        t0 = now_s();
        rc = cluster_spawn(&opts);
        if (rc < 0) die("cluster_spawn", rc);
        run_until_done();
        printf("spawn %.0f\n", target / (now_s() - t0));
    } else if (strcmp(mode, "threads") == 0) {
        rc = cluster_thread_start(echo, NULL);
        if (rc < 0) die("cluster_thread_start", rc);
        thread_id = (uint32_t)rc;
        uint64_t payload = 42;
        t0 = now_s();
        cluster_thread_send(thread_id, (const uint8_t *)&payload, sizeof payload);
        run_until_done();
        printf("threads %.0f\n", target / (now_s() - t0));
    } else {
        die("unknown mode", 2);
    }
    cluster_shutdown(0);
    while (cluster_dispatch(100) >= 0) {
    }
    return 0;
}
