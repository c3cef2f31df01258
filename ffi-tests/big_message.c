/* Large and edge-sized messages with a 20 MiB maximum: 16 MiB both ways, byte for byte;
 * 64 KiB + 1 (just over the inline limit: a sealed memfd), exactly 64 KiB, 1 byte and 0 bytes
 * (data NULL); over the maximum, CLUSTER_E_TOOBIG with a sentence in the primary and in the
 * worker, and the channel still works after. Ends with a graceful shutdown. */
#include "harness.h"

#define MAX_MESSAGE (20u << 20)
#define TOOBIG_LEN ((size_t)21 << 20)

static uint8_t pattern(size_t i) { return (uint8_t)((i * 31 + 7) & 0xff); }

/* Index of the first byte that breaks the pattern, or len when all match. */
static size_t first_mismatch(const uint8_t *d, size_t len) {
    for (size_t i = 0; i < len; i++)
        if (d[i] != pattern(i)) return i;
    return len;
}

static uint8_t *make_pattern(size_t len) {
    uint8_t *b = malloc(len ? len : 1);
    CHECK(b != NULL, "malloc %zu", len);
    for (size_t i = 0; i < len; i++) b[i] = pattern(i);
    return b;
}

/* ---- worker side ---- */

static void reply_text(const char *msg) { OK(cluster_send(0, (const uint8_t *)msg, strlen(msg))); }

static void on_worker(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind != CLUSTER_EVENT_MESSAGE) return;
    char msg[256];
    if (ev->worker_id != 0 || ev->fd != -1) {
        snprintf(msg, sizeof msg, "unexpected sender %u fd %d", ev->worker_id, ev->fd);
        reply_text(msg);
        return;
    }
    if (ev->len == 6 && memcmp(ev->data, "toobig", 6) == 0) {
        uint8_t *big = make_pattern(TOOBIG_LEN);
        int32_t rc = cluster_send(0, big, TOOBIG_LEN);
        int sentence = cluster_last_error()[0] != '\0';
        free(big);
        snprintf(msg, sizeof msg, "toobig %d sentence %d", (int)rc, sentence);
        reply_text(msg);
        return;
    }
    /* Anything else is a pattern: check it, report, and echo it back whole. */
    if (ev->len > 0 && ev->data == NULL) {
        snprintf(msg, sizeof msg, "verified %zu null-data", ev->len);
        reply_text(msg);
        return;
    }
    size_t bad = first_mismatch(ev->data, ev->len);
    snprintf(msg, sizeof msg, "verified %zu mismatch %zd", ev->len, bad == ev->len ? (ssize_t)-1 : (ssize_t)bad);
    reply_text(msg);
    OK(cluster_send(0, ev->data, ev->len));
}

static int worker_main(void *ud) {
    OK(cluster_worker_start(on_worker, ud));
    return cluster_run() == 0 ? 0 : 3;
}

/* ---- primary side ---- */

static volatile int ready, exits, clean_exits, got_verified, got_echo, got_toobig;
static pid_t worker_pid;
static uint32_t worker;
static int awaiting_echo;
static size_t verified_len, echo_len, echo_mismatch;
static long verified_mismatch;
static int toobig_rc, toobig_sentence;

static void on_primary(void *ud, const cluster_event *ev) {
    (void)ud;
    char text[256] = {0};
    switch (ev->kind) {
    case CLUSTER_EVENT_FORK:
        worker_pid = ev->pid;
        worker = ev->worker_id;
        break;
    case CLUSTER_EVENT_READY:
        ready++;
        break;
    case CLUSTER_EVENT_MESSAGE:
        CHECK(ev->worker_id == worker && ev->fd == -1, "message from %u with fd %d", ev->worker_id, ev->fd);
        if (awaiting_echo) {
            /* The echo follows the report on the same channel. */
            CHECK(ev->len == 0 || ev->data != NULL, "an echo of %zu bytes with data NULL", ev->len);
            echo_len = ev->len;
            echo_mismatch = first_mismatch(ev->data, ev->len);
            awaiting_echo = 0;
            got_echo = 1;
            break;
        }
        if (ev->len) memcpy(text, ev->data, ev->len < sizeof text - 1 ? ev->len : sizeof text - 1);
        if (sscanf(text, "verified %zu mismatch %ld", &verified_len, &verified_mismatch) == 2) {
            awaiting_echo = 1;
            got_verified = 1;
        } else if (sscanf(text, "toobig %d sentence %d", &toobig_rc, &toobig_sentence) == 2) {
            got_toobig = 1;
        } else {
            FAIL("unexpected message '%s' (%zu bytes)", text, ev->len);
        }
        break;
    case CLUSTER_EVENT_EXIT:
        exits++;
        clean_exits += exit_is_clean(ev);
        break;
    case CLUSTER_EVENT_ERROR:
        FAIL("ERROR event about worker %u: %.*s", ev->worker_id, (int)ev->len, (const char *)ev->data);
    default:
        break;
    }
}

/* Sends `len` pattern bytes (NULL data when len is 0), waits for the worker's report and its
 * echo, and checks both. */
static void round_trip(size_t len) {
    uint8_t *buf = len ? make_pattern(len) : NULL;
    got_verified = got_echo = 0;
    OK(cluster_send(worker, buf, len));
    free(buf); /* the library copied it */
    dispatch_until(&got_verified, 20000, "the worker's report");
    CHECK(verified_len == len, "the worker got %zu bytes, %zu sent", verified_len, len);
    CHECK(verified_mismatch == -1, "the worker saw byte %ld of %zu break the pattern", verified_mismatch, len);
    dispatch_until(&got_echo, 20000, "the echo");
    CHECK(echo_len == len, "the echo has %zu bytes, expected %zu", echo_len, len);
    CHECK(echo_mismatch == len, "byte %zu of the %zu-byte echo breaks the pattern", echo_mismatch, len);
}

int main(void) {
    if (cluster_is_worker()) return worker_main(NULL);
    test_deadline(60);

    cluster_config *cfg = cluster_config_new();
    CHECK(cfg != NULL, "config");
    OK(cluster_config_set_workers(cfg, 1));
    OK(cluster_config_set_worker_main(cfg, worker_main, NULL));
    OK(cluster_config_set_signals(cfg, false));
    OK(cluster_config_set_max_message(cfg, MAX_MESSAGE));
    OK(cluster_primary_start(cfg, on_primary, NULL));
    cluster_config_free(cfg);
    dispatch_until(&ready, 20000, "the worker's READY");
    CHECK(worker >= 1 && worker_pid > 0, "FORK event (worker %u pid %d)", worker, worker_pid);

    round_trip((size_t)16 << 20); /* 16 MiB both ways */
    round_trip(64 * 1024 + 1);    /* just over the inline limit */
    round_trip(64 * 1024);        /* the largest inline message */
    round_trip(1);
    round_trip(0);                /* empty, data NULL */
    round_trip(MAX_MESSAGE);      /* exactly the maximum is carried */

    /* Over the maximum: refused in the primary, with a sentence, and nothing is sent. */
    {
        uint8_t *big = make_pattern(TOOBIG_LEN);
        EXPECT_ERR(cluster_send(worker, big, TOOBIG_LEN), CLUSTER_E_TOOBIG);
        EXPECT_ERR(cluster_send(worker, big, MAX_MESSAGE + 1), CLUSTER_E_TOOBIG);
        free(big);
    }
    /* ... and in the worker. */
    OK(cluster_send(worker, (const uint8_t *)"toobig", 6));
    dispatch_until(&got_toobig, 20000, "the worker's TOOBIG report");
    CHECK(toobig_rc == CLUSTER_E_TOOBIG, "the worker's 21 MiB send returned %d, expected CLUSTER_E_TOOBIG", toobig_rc);
    CHECK(toobig_sentence, "the worker's TOOBIG left no sentence");

    /* The channel still carries messages after the refusals. */
    round_trip(100);

    OK(cluster_shutdown(5000));
    CHECK(cluster_run() == 0, "run returns 0 after a graceful stop");
    CHECK(exits == 1 && clean_exits == 1, "%d exits, %d clean", exits, clean_exits);
    CHECK(pid_gone(worker_pid), "the worker (pid %d) is gone", worker_pid);
    printf("big_message: ok\n");
    return 0;
}
