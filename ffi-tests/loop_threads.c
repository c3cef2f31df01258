/* Threads that report to the loop (cluster_thread_start, cluster_thread_post, ...).
 *
 *   loop_threads million  4 threads post 1,000,000 messages: all arrive, each thread's in
 *                         order, its THREAD_EXIT (with its return value) after its last one
 *   loop_threads echo     messages both ways: the loop sends, the thread receives (with a
 *                         timeout) and posts back, 10,000 round trips; recv times out
 *   loop_threads pool     a pool of 2 runs 6 functions; thread_self; the calls of a thread are
 *                         refused (CLUSTER_E_ROLE) on the loop thread; bad arguments
 *   loop_threads fork     a FORK-mode primary with a thread running refuses to start workers
 *   loop_threads worker   a worker's thread posts to the worker's loop, which passes it on
 *
 * The primary runs one idle worker (a primary has at least one). */
#include "harness.h"

#define NT 4
#define PER_THREAD 250000

static volatile int exits;
static long long received[NT + 8];
static int exit_code[64];
static uint32_t thread_ids[64];
static int exited_after_last[NT + 8];

static int index_of(uint32_t id) {
    for (int i = 0; i < 64; i++)
        if (thread_ids[i] == id) return i;
    return -1;
}

static int poster(void *data) {
    int index = (int)(intptr_t)data;
    uint32_t msg[2];
    for (uint32_t seq = 0; seq < PER_THREAD; seq++) {
        msg[0] = (uint32_t)index;
        msg[1] = seq;
        OK(cluster_thread_post((const uint8_t *)msg, sizeof msg));
    }
    return 1000 + index;
}

static int echoer(void *data) {
    (void)data;
    int n = 0;
    for (;;) {
        uint8_t *m = NULL;
        size_t len = 0;
        int32_t rc = cluster_thread_recv(&m, &len, 10000);
        if (rc == CLUSTER_E_TIMEOUT) return -2;
        OK(rc);
        if (len == 4 && memcmp(m, "stop", 4) == 0) {
            free(m);
            return n;
        }
        OK(cluster_thread_post(m, len));
        free(m);
        n++;
    }
}

static int times_out(void *data) {
    (void)data;
    uint8_t *m = NULL;
    size_t len = 0;
    long long t0 = now_ms();
    int32_t rc = cluster_thread_recv(&m, &len, 100);
    long long took = now_ms() - t0;
    return rc == CLUSTER_E_TIMEOUT && took >= 100 && took < 5000 ? 1 : 0;
}

static int identify(void *data) {
    return (int)(intptr_t)data * 100 + cluster_thread_self();
}

static int blocker(void *data) {
    (void)data;
    uint8_t *m = NULL;
    size_t len = 0;
    int32_t rc = cluster_thread_recv(&m, &len, -1);
    free(m);
    return rc;
}

static int echo_rounds;
static uint32_t echo_id;

static void on_event(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind == CLUSTER_EVENT_THREAD_MESSAGE) {
        int i = index_of(ev->worker_id);
        CHECK(i >= 0, "a message of unknown thread %u", ev->worker_id);
        if (ev->worker_id == echo_id) {
            CHECK(ev->len == sizeof(int) && memcmp(ev->data, &echo_rounds, sizeof(int)) == 0, "echo %d", echo_rounds);
            echo_rounds++;
            if (echo_rounds < 10000)
                OK(cluster_thread_send(echo_id, (const uint8_t *)&echo_rounds, sizeof echo_rounds));
            else
                OK(cluster_thread_send(echo_id, (const uint8_t *)"stop", 4));
            return;
        }
        CHECK(ev->len == 8, "message of %zu bytes", ev->len);
        uint32_t msg[2];
        memcpy(msg, ev->data, 8);
        CHECK((int)msg[0] == i, "thread %u says it is %u", ev->worker_id, msg[0]);
        CHECK(msg[1] == received[i], "thread %d: message %u after %lld", i, msg[1], received[i]);
        CHECK(!exited_after_last[i], "a message after THREAD_EXIT");
        received[i]++;
    } else if (ev->kind == CLUSTER_EVENT_THREAD_EXIT) {
        int i = index_of(ev->worker_id);
        CHECK(i >= 0, "the exit of unknown thread %u", ev->worker_id);
        exit_code[i] = ev->exit_code;
        exited_after_last[i] = 1;
        CHECK(ev->len == 0, "a C function's exit carries no sentence");
        exits++;
    }
}

static void start_primary(uint32_t mode) {
    struct cluster_config *cfg = cluster_config_new();
    OK(cluster_config_set_mode(cfg, mode));
    OK(cluster_config_set_workers(cfg, 1));
    OK(cluster_primary_start(cfg, on_event, NULL));
    cluster_config_free(cfg);
}

static void wait_exits(int n, int timeout_ms) {
    long long end = now_ms() + timeout_ms;
    while (exits < n) {
        if (now_ms() > end) FAIL("%d of %d thread exits within %d ms", exits, n, timeout_ms);
        int32_t rc = cluster_dispatch(50);
        if (rc < 0) FAIL("cluster_dispatch returned %d", rc);
    }
}

static void test_million(void) {
    long long t0 = now_ms();
    for (int i = 0; i < NT; i++) thread_ids[i] = (uint32_t)OK(cluster_thread_start(poster, (void *)(intptr_t)i));
    wait_exits(NT, 100000);
    for (int i = 0; i < NT; i++) {
        CHECK(received[i] == PER_THREAD, "thread %d: %lld messages", i, received[i]);
        CHECK(exit_code[i] == 1000 + i, "thread %d returned %d", i, exit_code[i]);
    }
    fprintf(stderr, "1,000,000 messages from %d threads in %lld ms\n", NT, now_ms() - t0);
}

static void test_echo(void) {
    echo_id = (uint32_t)OK(cluster_thread_start(echoer, NULL));
    thread_ids[0] = echo_id;
    thread_ids[1] = (uint32_t)OK(cluster_thread_start(times_out, NULL));
    long long t0 = now_ms();
    OK(cluster_thread_send(echo_id, (const uint8_t *)&echo_rounds, sizeof echo_rounds));
    wait_exits(2, 60000);
    CHECK(echo_rounds == 10000 && exit_code[0] == 10000, "rounds %d, the thread counted %d", echo_rounds,
          exit_code[0]);
    CHECK(exit_code[1] == 1, "recv with a 100 ms timeout");
    fprintf(stderr, "10,000 round trips in %lld ms\n", now_ms() - t0);
    /* Its THREAD_EXIT came: the id is gone. */
    EXPECT_ERR(cluster_thread_send(echo_id, (const uint8_t *)"x", 1), CLUSTER_E_INVAL);
}

static void test_pool(void) {
    OK(cluster_threads_set_pool(2));
    for (int i = 0; i < 6; i++) thread_ids[i] = (uint32_t)OK(cluster_thread_start(identify, (void *)(intptr_t)(i + 1)));
    wait_exits(6, 30000);
    for (int i = 0; i < 6; i++)
        CHECK(exit_code[i] == (i + 1) * 100 + (int)thread_ids[i], "job %d returned %d", i, exit_code[i]);
    /* On the loop thread, the calls of a thread are refused. */
    EXPECT_ERR(cluster_thread_post((const uint8_t *)"x", 1), CLUSTER_E_ROLE);
    EXPECT_ERR(cluster_thread_self(), CLUSTER_E_ROLE);
    uint8_t *m;
    size_t len;
    EXPECT_ERR(cluster_thread_recv(&m, &len, 0), CLUSTER_E_ROLE);
    EXPECT_ERR(cluster_thread_recv(NULL, &len, 0), CLUSTER_E_INVAL);
    EXPECT_ERR(cluster_thread_start(NULL, NULL), CLUSTER_E_INVAL);
    EXPECT_ERR(cluster_threads_set_pool(5000), CLUSTER_E_INVAL);
    EXPECT_ERR(cluster_thread_send(9999, (const uint8_t *)"x", 1), CLUSTER_E_INVAL);
    OK(cluster_threads_set_pool(0));
}

static void test_fork(void) {
    thread_ids[0] = (uint32_t)OK(cluster_thread_start(blocker, NULL));
    EXPECT_ERR(cluster_fork(), CLUSTER_E_THREADS);
    OK(cluster_thread_send(thread_ids[0], (const uint8_t *)"go", 2));
    wait_exits(1, 30000);
    CHECK(exit_code[0] == 0, "the blocked thread's recv returned %d", exit_code[0]);
}

static int greeter(void *data) {
    (void)data;
    OK(cluster_thread_post((const uint8_t *)"from a thread", 13));
    return 5;
}

/* In a worker (loop_threads worker): the thread's message and exit go to the primary. */
static void on_worker_event(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind == CLUSTER_EVENT_THREAD_MESSAGE) {
        OK(cluster_send(0, ev->data, ev->len));
    } else if (ev->kind == CLUSTER_EVENT_THREAD_EXIT) {
        char exit_text[32];
        int n = snprintf(exit_text, sizeof exit_text, "exit %d", ev->exit_code);
        OK(cluster_send(0, (const uint8_t *)exit_text, (size_t)n));
    }
}

static int worker_main(void *ud) {
    (void)ud;
    int threads = getenv("RCT_WORKER_THREAD") != NULL;
    OK(cluster_worker_start(threads ? on_worker_event : on_event, NULL));
    if (threads) OK(cluster_thread_start(greeter, NULL));
    return cluster_run() == 0 ? 0 : 3;
}

static volatile int worker_heard;

static void on_primary_for_worker(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind != CLUSTER_EVENT_MESSAGE) return;
    if (worker_heard == 0) {
        CHECK(ev->len == 13 && memcmp(ev->data, "from a thread", 13) == 0, "first [%.*s]", (int)ev->len,
              (const char *)ev->data);
        worker_heard = 1;
    } else {
        CHECK(ev->len == 6 && memcmp(ev->data, "exit 5", 6) == 0, "then [%.*s]", (int)ev->len,
              (const char *)ev->data);
        worker_heard = 2;
    }
}

static void test_worker(void) {
    setenv("RCT_WORKER_THREAD", "1", 1);
    struct cluster_config *cfg = cluster_config_new();
    OK(cluster_config_set_mode(cfg, CLUSTER_MODE_EXEC));
    OK(cluster_config_set_workers(cfg, 1));
    OK(cluster_primary_start(cfg, on_primary_for_worker, NULL));
    cluster_config_free(cfg);
    long long end = now_ms() + 30000;
    while (worker_heard < 2) {
        CHECK(now_ms() < end, "the worker's thread's message and exit within 30 s");
        cluster_dispatch(50);
    }
}

int main(int argc, char **argv) {
    test_deadline(110);
    if (cluster_is_worker()) return worker_main(NULL);
    CHECK(argc == 2, "usage: loop_threads million|echo|pool|fork|worker");
    EXPECT_ERR(cluster_thread_start(poster, NULL), CLUSTER_E_STATE);
    if (strcmp(argv[1], "worker") == 0) {
        test_worker();
    } else if (strcmp(argv[1], "fork") == 0) {
        struct cluster_config *cfg = cluster_config_new();
        OK(cluster_config_set_mode(cfg, CLUSTER_MODE_FORK));
        OK(cluster_config_set_workers(cfg, 1));
        OK(cluster_config_set_worker_main(cfg, worker_main, NULL));
        OK(cluster_primary_start(cfg, on_event, NULL));
        cluster_config_free(cfg);
        test_fork();
    } else {
        start_primary(CLUSTER_MODE_EXEC);
        if (strcmp(argv[1], "million") == 0) test_million();
        else if (strcmp(argv[1], "echo") == 0) test_echo();
        else if (strcmp(argv[1], "pool") == 0) test_pool();
        else FAIL("unknown test %s", argv[1]);
    }
    OK(cluster_shutdown(0));
    while (cluster_dispatch(100) >= 0) {
    }
    return 0;
}
