/* Connections handed to a worker that leaves before reading them are not lost. The primary
 * closes its own copy of a connection once it is in the worker's socket, so:
 *   refusal nack: the worker refuses them (it is leaving) and gives their fds back with its
 *                 NACK;
 *   refusal exit: the worker says it leaves and exits without reading them; the primary reads
 *                 them back from the worker's socket (it keeps the worker's end until nothing
 *                 it let go of is in flight there).
 * Either way another worker answers every one. Worker 1 is held inside a callback while the
 * clients connect (round-robin hands it half of them, which wait unread in its socket); then
 * it leaves (cluster_shutdown). */
#include "harness.h"

#define CONNS 20

static int gate[2]; /* worker 1 waits on it; the primary writes when it may go on */
static int exit_at_once; /* "exit": worker 1 exits right after saying it leaves */

static void on_worker(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind == CLUSTER_EVENT_CONNECTION) {
        answer_line(ev->fd);
    } else if (ev->kind == CLUSTER_EVENT_MESSAGE && ev->len == 5 && memcmp(ev->data, "stall", 5) == 0) {
        OK(cluster_send(0, (const uint8_t *)"stalling", 8));
        char c;
        ssize_t n;
        while ((n = read(gate[0], &c, 1)) < 0 && errno == EINTR) {
        }
        CHECK(n == 1, "the gate opened");
        OK(cluster_shutdown(0)); /* leaving: what is queued for it will be refused */
        if (exit_at_once) {
            /* cluster_shutdown only records the stop (it is async-signal-safe): the next call
             * that uses the runtime (cluster_fd here; the loop's next turn otherwise) sends the
             * leaving notice, which an exit right now would skip. */
            OK(cluster_fd());
            _exit(0);
        }
    }
}

static int worker_main(void *ud) {
    OK(cluster_worker_start(on_worker, ud));
    return cluster_run() == 0 ? 0 : 3;
}

static volatile int ready, stalling, exited1, exit1_clean;

static void on_primary(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind == CLUSTER_EVENT_READY) ready++;
    if (ev->kind == CLUSTER_EVENT_MESSAGE && ev->worker_id == 1) stalling = 1;
    if (ev->kind == CLUSTER_EVENT_EXIT && ev->worker_id == 1) {
        exited1 = 1;
        exit1_clean = exit_is_clean(ev) && ev->exited_after_disconnect;
    }
}

int main(int argc, char **argv) {
    test_deadline(60);
    if (argc != 2 || (strcmp(argv[1], "nack") && strcmp(argv[1], "exit"))) {
        fprintf(stderr, "usage: %s nack|exit\n", argv[0]);
        return 2;
    }
    exit_at_once = !strcmp(argv[1], "exit");
    setvbuf(stdout, NULL, _IONBF, 0);
    if (getenv("RCLUSTER_LOG")) cluster_log_init();
    CHECK(pipe(gate) == 0, "pipe: %s", strerror(errno));
    int port = start_rr_cluster(2, worker_main, on_primary);
    { long long end = now_ms() + 20000; while (ready < 2) { CHECK(now_ms() < end, "workers ready"); OK(cluster_dispatch(50)); } }
    OK(cluster_send(1, (const uint8_t *)"stall", 5));
    dispatch_until(&stalling, 10000, "worker 1 held in its callback");

    pid_t client = fork_client((const int[]){-1});
    if (client == 0) answered_clients(port, CONNS, CONNS, 50);

    /* Wait until worker 1 has been handed connections (they wait unread in its socket). */
    long long end = now_ms() + 20000;
    long queued;
    while ((queued = worker_stat(1, "in_flight")) < CONNS / 2) {
        CHECK(now_ms() < end, "worker 1 was handed %d connections (it has %ld)", CONNS / 2, queued);
        OK(cluster_dispatch(20));
    }
    CHECK(write(gate[1], "g", 1) == 1, "open the gate");

    int status = dispatch_until_exit(client, 30000, "the clients");
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "every one of the %d connections was answered (status %d)",
          CONNS, status);
    dispatch_until(&exited1, 10000, "worker 1 left");
    CHECK(exit1_clean, "worker 1 left cleanly, on purpose");
    CHECK(total_stat("dropped") == 0, "no connection was dropped (%ld)", total_stat("dropped"));
    /* Worker 2 acknowledged every connection before answering it, but its last ACKs may still
     * be unread when worker 1's exit is reported. */
    end = now_ms() + 10000;
    while (worker_stat(2, "connections") < CONNS) {
        CHECK(now_ms() < end, "worker 2 answered all %d (%ld)", CONNS, worker_stat(2, "connections"));
        OK(cluster_dispatch(20));
    }

    OK(cluster_shutdown(2000));
    end = now_ms() + 10000;
    while (cluster_dispatch(50) >= 0) CHECK(now_ms() < end, "the runtime finished");
    printf("refusal %s: %ld connections handed to a leaving worker came back and were answered\n", argv[1], queued);
    return 0;
}
