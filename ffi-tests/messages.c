/* Messages both ways, worker-to-worker relay with the sender stamped by the primary, an
 * undeliverable relay, broadcasts both ways, worker info counters, and a graceful shutdown
 * that leaves no process behind. `messages fork` or `messages exec` (the exec run starts a
 * thread first, so it also checks that FORK mode is refused in a threaded process). */
#include "harness.h"
#include <pthread.h>

#define WORKERS 3

/* ---- worker side ---- */

static void reply(const char *fmt, int a, int b) {
    char msg[128];
    int n = snprintf(msg, sizeof msg, fmt, a, b);
    OK(cluster_send(0, (const uint8_t *)msg, (size_t)n));
}

static void on_worker(void *ud, const cluster_event *ev) {
    (void)ud;
    char text[256] = {0};
    if (ev->len) memcpy(text, ev->data, ev->len < sizeof text - 1 ? ev->len : sizeof text - 1);
    int me = (int)cluster_worker_id();
    if (ev->kind == CLUSTER_EVENT_MESSAGE && ev->worker_id == 0) {
        int target;
        if (strcmp(text, "ping") == 0) {
            reply("pong %d", me, 0);
        } else if (sscanf(text, "relay %d", &target) == 1) {
            char hello[64];
            int n = snprintf(hello, sizeof hello, "hello from %d", me);
            OK(cluster_send((uint32_t)target, (const uint8_t *)hello, (size_t)n));
        } else if (strcmp(text, "bcast") == 0) {
            reply("got bcast %d", me, 0);
        } else if (strcmp(text, "broadcast-from-worker") == 0) {
            char b[64];
            int n = snprintf(b, sizeof b, "bcast from %d", me);
            CHECK(cluster_broadcast((const uint8_t *)b, (size_t)n) == 0, "worker broadcast returns 0");
        }
    } else if (ev->kind == CLUSTER_EVENT_MESSAGE) {
        /* From another worker: the primary stamped the true sender. */
        int claimed = -1;
        if (sscanf(text, "hello from %d", &claimed) == 1 || sscanf(text, "bcast from %d", &claimed) == 1)
            CHECK(claimed == (int)ev->worker_id, "sender %u stamped, payload claims %d", ev->worker_id, claimed);
        reply("relayed %d -> %d", (int)ev->worker_id, me);
    } else if (ev->kind == CLUSTER_EVENT_ERROR) {
        reply("undeliverable %d by %d", (int)ev->worker_id, me);
    }
}

static int worker_main(void *ud) {
    OK(cluster_worker_start(on_worker, ud));
    return cluster_run() == 0 ? 0 : 3;
}

/* ---- primary side ---- */

static volatile int ready, pongs, relayed_1_to_2, undeliverable, got_bcast, relayed_from_2, exits, clean_exits;
static pid_t pids[WORKERS + 1];

static void on_primary(void *ud, const cluster_event *ev) {
    (void)ud;
    char text[256] = {0};
    if (ev->len) memcpy(text, ev->data, ev->len < sizeof text - 1 ? ev->len : sizeof text - 1);
    int a, b;
    switch (ev->kind) {
    case CLUSTER_EVENT_FORK:
        CHECK(ev->worker_id >= 1 && ev->worker_id <= WORKERS && ev->pid > 0, "fork event %u pid %d", ev->worker_id, ev->pid);
        pids[ev->worker_id] = ev->pid;
        break;
    case CLUSTER_EVENT_READY:
        ready++;
        OK(cluster_send(ev->worker_id, (const uint8_t *)"ping", 4));
        break;
    case CLUSTER_EVENT_MESSAGE:
        if (sscanf(text, "pong %d", &a) == 1) {
            CHECK(a == (int)ev->worker_id, "pong from %d arrived as worker %u", a, ev->worker_id);
            pongs++;
        } else if (sscanf(text, "relayed %d -> %d", &a, &b) == 2) {
            CHECK(b == (int)ev->worker_id, "relay report from the wrong worker");
            if (a == 1 && b == 2) relayed_1_to_2++;
            else if (a == 2) relayed_from_2++;
            else FAIL("unexpected relay %d -> %d", a, b);
        } else if (sscanf(text, "undeliverable %d by %d", &a, &b) == 2) {
            CHECK(a == 99 && b == 3, "undeliverable %d by %d", a, b);
            undeliverable++;
        } else if (sscanf(text, "got bcast %d", &a) == 1) {
            got_bcast++;
        } else {
            FAIL("unexpected message '%s' from %u", text, ev->worker_id);
        }
        break;
    case CLUSTER_EVENT_EXIT:
        exits++;
        clean_exits += exit_is_clean(ev);
        break;
    default:
        break;
    }
}

/* cluster_send is thread-safe: this thread pings worker 1 while the main thread runs the loop. */
#define THREAD_PINGS 500
static volatile int thread_sent;
static void *sender_thread(void *arg) {
    (void)arg;
    for (int i = 0; i < THREAD_PINGS; i++) {
        int32_t rc;
        long long end = now_ms() + 10000;
        while ((rc = cluster_send(1, (const uint8_t *)"ping", 4)) == CLUSTER_E_AGAIN) {
            CHECK(now_ms() < end, "the queue to worker 1 never drained");
            usleep(1000); /* the loop thread drains it; DRAIN goes to the loop thread's callback */
        }
        CHECK(rc == 0, "cluster_send from a thread returned %d", rc);
        thread_sent++;
    }
    return NULL;
}

static pthread_mutex_t hold = PTHREAD_MUTEX_INITIALIZER;
static void *idle_thread(void *arg) {
    (void)arg;
    pthread_mutex_lock(&hold); /* blocks until main unlocks at the end */
    pthread_mutex_unlock(&hold);
    return NULL;
}

int main(int argc, char **argv) {
    if (cluster_is_worker()) return worker_main(NULL); /* EXEC mode lands here */
    CHECK(argc == 2 && (!strcmp(argv[1], "fork") || !strcmp(argv[1], "exec")), "usage: messages fork|exec");
    int exec_mode = !strcmp(argv[1], "exec");
    test_deadline(50);
    CHECK(cluster_is_primary() && cluster_worker_id() == 0, "a plain process is the primary");

    cluster_config *cfg = cluster_config_new();
    CHECK(cfg != NULL, "config");
    OK(cluster_config_set_workers(cfg, WORKERS));
    OK(cluster_config_set_worker_main(cfg, worker_main, NULL));
    OK(cluster_config_set_signals(cfg, false));
    pthread_t t;
    if (exec_mode) {
        pthread_mutex_lock(&hold);
        CHECK(pthread_create(&t, NULL, idle_thread, NULL) == 0, "pthread_create");
        /* FORK mode is refused with a clear sentence while another thread lives. */
        EXPECT_ERR(cluster_primary_start(cfg, on_primary, NULL), CLUSTER_E_THREADS);
        CHECK(strstr(cluster_last_error(), "EXEC") != NULL, "the sentence suggests EXEC mode: %s", cluster_last_error());
        OK(cluster_config_set_mode(cfg, CLUSTER_MODE_EXEC));
    }
    OK(cluster_primary_start(cfg, on_primary, NULL));
    cluster_config_free(cfg);

    { long long end = now_ms() + 20000; while (pongs < WORKERS) { CHECK(now_ms() < end, "pongs"); cluster_dispatch(50); } }
    CHECK(ready == WORKERS, "all ready");

    uint32_t ids[8];
    CHECK(OK(cluster_workers(ids, 8)) == WORKERS, "worker count");
    for (int i = 0; i < WORKERS; i++) CHECK(ids[i] == (uint32_t)i + 1, "ids ascend from 1");
    CHECK(OK(cluster_workers(NULL, 0)) == WORKERS, "count with no buffer");

    /* worker 1 -> worker 2, relayed */
    OK(cluster_send(1, (const uint8_t *)"relay 2", 7));
    dispatch_until(&relayed_1_to_2, 10000, "relay 1 -> 2");
    /* worker 3 -> worker 99: the sender gets an ERROR event */
    OK(cluster_send(3, (const uint8_t *)"relay 99", 8));
    dispatch_until(&undeliverable, 10000, "the undeliverable report");
    /* primary broadcast */
    CHECK(OK(cluster_broadcast((const uint8_t *)"bcast", 5)) == WORKERS, "broadcast reaches every worker");
    { long long end = now_ms() + 10000; while (got_bcast < WORKERS) { CHECK(now_ms() < end, "bcast replies"); cluster_dispatch(50); } }
    /* worker 2 broadcasts to the others through the primary */
    OK(cluster_send(2, (const uint8_t *)"broadcast-from-worker", 21));
    { long long end = now_ms() + 10000; while (relayed_from_2 < WORKERS - 1) { CHECK(now_ms() < end, "worker broadcast"); cluster_dispatch(50); } }

    struct cluster_worker_info info;
    OK(cluster_worker_info(2, &info));
    CHECK(info.id == 2 && info.pid == pids[2], "info names worker 2 (pid %d vs %d)", info.pid, pids[2]);
    CHECK(info.state == CLUSTER_WORKER_READY, "state %u", info.state);
    CHECK(info.messages_in >= 3, "messages_in %llu", (unsigned long long)info.messages_in);
    CHECK(info.messages_out >= 4, "messages_out %llu", (unsigned long long)info.messages_out);
    CHECK(info.started_at_ms > 1600000000000ULL, "started_at_ms is wall-clock ms");

    if (exec_mode) {
        pthread_t sender;
        int before = pongs;
        CHECK(pthread_create(&sender, NULL, sender_thread, NULL) == 0, "pthread_create");
        long long end = now_ms() + 20000;
        while (pongs < before + THREAD_PINGS) {
            CHECK(now_ms() < end, "pongs for the thread's pings: %d of %d", pongs - before, THREAD_PINGS);
            cluster_dispatch(50);
        }
        pthread_join(sender, NULL);
        CHECK(thread_sent == THREAD_PINGS, "every send from the thread was accepted");
    }

    OK(cluster_shutdown(10000));
    CHECK(cluster_run() == 0, "run returns 0 after a graceful stop");
    CHECK(exits == WORKERS && clean_exits == WORKERS, "%d exits, %d clean", exits, clean_exits);
    for (int i = 1; i <= WORKERS; i++) CHECK(pid_gone(pids[i]), "worker %d (pid %d) is gone", i, pids[i]);
    EXPECT_ERR(cluster_dispatch(0), CLUSTER_E_CLOSED);
    EXPECT_ERR(cluster_send(1, (const uint8_t *)"x", 1), CLUSTER_E_CLOSED);
    if (exec_mode) {
        pthread_mutex_unlock(&hold);
        pthread_join(t, NULL);
    }
    printf("messages %s: ok\n", argv[1]);
    return 0;
}
