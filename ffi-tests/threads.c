/* Threads and signal handlers in the primary.
 *
 *   threads spawn scale|fork|reload  workers started by a call from a short-lived thread
 *                                    (EXEC mode) survive that thread's exit and serve
 *   threads sleeper                  EXEC-mode starts are not held up by a host thread's fork
 *                                    that holds every inherited fd (a child that sleeps 10 s)
 *   threads dispatch-twice           a second thread's cluster_dispatch, while the loop thread
 *                                    is inside its own, is refused with CLUSTER_E_STATE
 *   threads log-reentry              the log callback calling cluster_set_log_callback or
 *                                    cluster_log_init gets CLUSTER_E_STATE, not a deadlock
 *   threads signal-shutdown          cluster_shutdown from a SIGUSR1 handler, delivered while
 *                                    the runtime is busy (inside its log callback), stops the
 *                                    cluster gracefully */
#include "harness.h"
#include <pthread.h>

#define MAXW 16

/* ---- worker side (EXEC mode re-runs this program, FORK mode calls worker_main) ---- */

static void on_worker(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind == CLUSTER_EVENT_MESSAGE && ev->len == 4 && memcmp(ev->data, "ping", 4) == 0)
        OK(cluster_send(0, (const uint8_t *)"pong", 4));
}

static int worker_main(void *ud) {
    OK(cluster_worker_start(on_worker, ud));
    return cluster_run() == 0 ? 0 : 3;
}

/* ---- primary side ---- */

static volatile int ready_count, exits, bad_exits, pongs;
static volatile int ready_id[MAXW + 1], exited_id[MAXW + 1], pong_id[MAXW + 1];
static void (*on_ready_hook)(uint32_t id);

static void on_primary(void *ud, const cluster_event *ev) {
    (void)ud;
    uint32_t id = ev->worker_id;
    switch (ev->kind) {
    case CLUSTER_EVENT_READY:
        CHECK(id <= MAXW, "worker id %u in range", id);
        ready_id[id] = 1;
        ready_count++;
        if (on_ready_hook) on_ready_hook(id);
        break;
    case CLUSTER_EVENT_MESSAGE:
        if (ev->len == 4 && memcmp(ev->data, "pong", 4) == 0 && id <= MAXW) {
            pong_id[id] = 1;
            pongs++;
        }
        break;
    case CLUSTER_EVENT_EXIT:
        exits++;
        if (id <= MAXW) exited_id[id] = 1;
        if (!ev->exited_after_disconnect || ev->signal != 0) {
            fprintf(stderr, "worker %u exited: code %d signal %d after_disconnect %d\n", id, ev->exit_code,
                    ev->signal, (int)ev->exited_after_disconnect);
            bad_exits++;
        }
        break;
    default:
        break;
    }
}

static void start_primary(cluster_mode mode, uint32_t workers) {
    cluster_config *cfg = cluster_config_new();
    CHECK(cfg != NULL, "cluster_config_new");
    OK(cluster_config_set_workers(cfg, workers));
    OK(cluster_config_set_mode(cfg, mode));
    OK(cluster_config_set_worker_main(cfg, worker_main, NULL));
    OK(cluster_config_set_signals(cfg, false));
    OK(cluster_primary_start(cfg, on_primary, NULL));
    cluster_config_free(cfg);
}

/* Every live worker answers a ping, and its process is there. */
static void all_serve(void) {
    uint32_t ids[MAXW];
    int n = OK(cluster_workers(ids, MAXW));
    CHECK(n > 0, "workers left");
    memset((void *)pong_id, 0, sizeof pong_id);
    pongs = 0;
    for (int i = 0; i < n; i++) {
        struct cluster_worker_info info;
        OK(cluster_worker_info(ids[i], &info));
        CHECK(kill(info.pid, 0) == 0, "worker %u (pid %d) is alive", ids[i], info.pid);
        OK(cluster_send(ids[i], (const uint8_t *)"ping", 4));
    }
    long long end = now_ms() + 10000;
    while (pongs < n) {
        CHECK(now_ms() < end, "%d of %d workers answered", pongs, n);
        OK(cluster_dispatch(50));
    }
}

static void stop_cleanly(void) {
    OK(cluster_shutdown(5000));
    CHECK(cluster_run() == 0, "cluster_run ends with 0");
    CHECK(bad_exits == 0, "every worker stopped as asked");
}

/* -- spawn: cluster_scale / cluster_fork / cluster_reload from a short-lived thread -- */

static pthread_mutex_t gate = PTHREAD_MUTEX_INITIALIZER;
static volatile int forked_ids[2];
static const char *spawn_how;

static void *spawner(void *arg) {
    (void)arg;
    if (!strcmp(spawn_how, "scale")) {
        OK(cluster_scale(3));
    } else if (!strcmp(spawn_how, "fork")) {
        forked_ids[0] = OK(cluster_fork());
        forked_ids[1] = OK(cluster_fork());
        CHECK(forked_ids[0] > 1 && forked_ids[1] > forked_ids[0], "cluster_fork returns new ids");
    } else {
        OK(cluster_reload());
    }
    /* The thread lives on until the new workers are READY, then exits. */
    pthread_mutex_lock(&gate);
    pthread_mutex_unlock(&gate);
    return NULL;
}

static void spawn_from_thread(const char *how) {
    spawn_how = how;
    start_primary(CLUSTER_MODE_EXEC, 1);
    dispatch_until(&ready_count, 20000, "worker 1 READY");
    pthread_mutex_lock(&gate);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, spawner, NULL) == 0, "pthread_create");
    long long end = now_ms() + 20000;
    for (;;) {
        int done;
        if (!strcmp(how, "scale")) done = ready_id[2] && ready_id[3];
        else if (!strcmp(how, "fork")) done = forked_ids[1] && ready_id[forked_ids[0]] && ready_id[forked_ids[1]];
        else done = ready_id[2] && exited_id[1]; /* the reload replaced worker 1 by worker 2 */
        if (done) break;
        CHECK(now_ms() < end, "the workers started from the thread became READY");
        OK(cluster_dispatch(50));
    }
    pthread_mutex_unlock(&gate);
    CHECK(pthread_join(t, NULL) == 0, "pthread_join");
    /* PR_SET_PDEATHSIG fires when the thread that forked exits: give it time to show. */
    int exits_before = exits;
    end = now_ms() + 1500;
    while (now_ms() < end) OK(cluster_dispatch(50));
    CHECK(exits == exits_before, "no worker died after the thread exited (%d exits)", exits - exits_before);
    CHECK(bad_exits == 0, "no worker was killed");
    all_serve();
    stop_cleanly();
}

/* -- sleeper: a host thread forks children that keep every inherited fd for 10 s -- */

#define SLEEPERS 1000
#define SPAWNS 12
static pid_t sleepers[SLEEPERS];
static volatile int nsleepers, stop_forking;

static void *forker(void *arg) {
    (void)arg;
    while (!stop_forking && nsleepers < SLEEPERS) {
        pid_t pid = fork();
        CHECK(pid >= 0, "fork");
        if (pid == 0) {
            sleep(10); /* holds whatever fds the process had at the fork, CLOEXEC or not */
            _exit(0);
        }
        sleepers[nsleepers] = pid;
        nsleepers = nsleepers + 1;
    }
    return NULL;
}

static void sleeper(void) {
    pthread_t t;
    CHECK(pthread_create(&t, NULL, forker, NULL) == 0, "pthread_create");
    while (nsleepers < 5) usleep(1000);
    long long start = now_ms();
    start_primary(CLUSTER_MODE_EXEC, 4);
    OK(cluster_scale(SPAWNS));
    while (ready_count < SPAWNS) {
        CHECK(now_ms() - start < 5000, "%d workers READY within 5 s (%d are) while a thread forks sleepers (%d so far)",
              SPAWNS, ready_count, nsleepers);
        OK(cluster_dispatch(50));
    }
    fprintf(stderr, "%d workers READY in %lld ms, %d sleepers forked meanwhile\n", SPAWNS, now_ms() - start,
            nsleepers);
    stop_forking = 1;
    CHECK(pthread_join(t, NULL) == 0, "pthread_join");
    for (int i = 0; i < nsleepers; i++) kill(sleepers[i], SIGKILL);
    for (int i = 0; i < nsleepers; i++) CHECK(wait_child(sleepers[i], 5000) >= 0, "sleeper %d reaped", sleepers[i]);
    all_serve();
    stop_cleanly();
}

/* -- dispatch-twice: a second thread dispatches while the loop thread is inside dispatch -- */

static volatile int second_rc = 1;
static char second_error[256];

static void *second_dispatcher(void *arg) {
    (void)arg;
    second_rc = cluster_dispatch(0);
    snprintf(second_error, sizeof second_error, "%s", cluster_last_error());
    return NULL;
}

static void dispatch_from_other_thread(uint32_t id) {
    if (id != 1) return;
    /* We are inside the loop thread's cluster_dispatch (this is its callback). */
    pthread_t t;
    CHECK(pthread_create(&t, NULL, second_dispatcher, NULL) == 0, "pthread_create");
    CHECK(pthread_join(t, NULL) == 0, "pthread_join");
}

static void dispatch_twice(void) {
    on_ready_hook = dispatch_from_other_thread;
    start_primary(CLUSTER_MODE_EXEC, 2);
    dispatch_until(&ready_id[1], 20000, "worker 1 READY");
    CHECK(second_rc == CLUSTER_E_STATE, "the second thread's cluster_dispatch returned %d, not CLUSTER_E_STATE",
          (int)second_rc);
    CHECK(second_error[0] != '\0', "with a sentence");
    fprintf(stderr, "refused: %s\n", second_error);
    /* Nothing was lost: worker 2's READY still arrives, and both serve. */
    long long end = now_ms() + 20000;
    while (ready_count < 2) {
        CHECK(now_ms() < end, "worker 2 READY");
        OK(cluster_dispatch(50));
    }
    all_serve();
    stop_cleanly();
}

/* -- log-reentry -- */

static volatile int reentry_tried;
static int32_t set_rc = 1, init_rc = 1;
static char reentry_error[256];

static void log_cb(void *ud, int32_t level, const char *target, const char *message) {
    (void)ud;
    (void)level;
    (void)target;
    (void)message;
    if (reentry_tried) return;
    reentry_tried = 1;
    set_rc = cluster_set_log_callback(log_cb, NULL);
    snprintf(reentry_error, sizeof reentry_error, "%s", cluster_last_error());
    init_rc = cluster_log_init();
}

static void log_reentry(void) {
    OK(cluster_set_log_callback(log_cb, NULL));
    start_primary(CLUSTER_MODE_FORK, 1); /* logs "primary ... started" */
    CHECK(reentry_tried, "the log callback ran");
    CHECK(set_rc == CLUSTER_E_STATE, "cluster_set_log_callback from the log callback returned %d", set_rc);
    CHECK(init_rc == CLUSTER_E_STATE, "cluster_log_init from the log callback returned %d", init_rc);
    CHECK(reentry_error[0] != '\0', "with a sentence");
    fprintf(stderr, "refused: %s\n", reentry_error);
    /* Outside the callback, it works (and the callback keeps logging). */
    OK(cluster_set_log_callback(log_cb, NULL));
    dispatch_until(&ready_count, 20000, "READY");
    stop_cleanly();
    OK(cluster_set_log_callback(NULL, NULL));
}

/* -- signal-shutdown -- */

static volatile sig_atomic_t handler_rc = 1, handled, armed, raised;

static void on_usr1(int sig) {
    (void)sig;
    handler_rc = cluster_shutdown(5000);
    handled++;
}

static void raising_log_cb(void *ud, int32_t level, const char *target, const char *message) {
    (void)ud;
    (void)level;
    (void)target;
    (void)message;
    /* The runtime is mid-call (it logs while it works): the signal lands there. */
    if (armed && !raised) {
        raised = 1;
        raise(SIGUSR1);
    }
}

static void signal_shutdown(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigemptyset(&sa.sa_mask);
    CHECK(sigaction(SIGUSR1, &sa, NULL) == 0, "sigaction");
    OK(cluster_set_log_callback(raising_log_cb, NULL));
    start_primary(CLUSTER_MODE_FORK, 2);
    long long end = now_ms() + 20000;
    while (ready_count < 2) {
        CHECK(now_ms() < end, "2 workers READY");
        OK(cluster_dispatch(50));
    }
    armed = 1;
    OK(cluster_scale(2)); /* logs "scaling to 2 worker(s)" with the runtime held */
    CHECK(raised && handled == 1, "the handler ran");
    CHECK(handler_rc == 0, "cluster_shutdown in the signal handler returned %d", (int)handler_rc);
    OK(cluster_set_log_callback(NULL, NULL));
    /* A plain signal, from outside any call, is fine too (the cluster is already stopping). */
    raise(SIGUSR1);
    CHECK(handler_rc == 0, "a second cluster_shutdown returned %d", (int)handler_rc);
    CHECK(cluster_run() == 0, "cluster_run ends with 0 after the handler's shutdown");
    CHECK(exits == 2 && bad_exits == 0, "both workers stopped as asked (%d exits, %d bad)", exits, bad_exits);
}

int main(int argc, char **argv) {
    if (cluster_is_worker()) return worker_main(NULL); /* EXEC mode lands here */
    test_deadline(90);
    CHECK(argc >= 2, "usage: threads spawn scale|fork|reload | sleeper | dispatch-twice | log-reentry | signal-shutdown");
    if (!strcmp(argv[1], "spawn") && argc == 3) spawn_from_thread(argv[2]);
    else if (!strcmp(argv[1], "sleeper")) sleeper();
    else if (!strcmp(argv[1], "dispatch-twice")) dispatch_twice();
    else if (!strcmp(argv[1], "log-reentry")) log_reentry();
    else if (!strcmp(argv[1], "signal-shutdown")) signal_shutdown();
    else FAIL("unknown mode %s", argv[1]);
    printf("threads %s: ok\n", argv[1]);
    return 0;
}
