/* Bounded send queues. The worker does not read its channel until the primary opens a gate
 * (a pipe made before the fork): the primary's sends to it fill the socket, then the queue
 * (64 KiB / 64 messages), and cluster_send returns CLUSTER_E_AGAIN, again on a second try.
 * Once the gate opens, the queue empties and a DRAIN event names the worker; every accepted
 * message arrives, in order, none missing. Then the other way: the worker floods the primary,
 * which does not turn its loop, until AGAIN; once the primary reads again, the worker gets its
 * DRAIN and the primary has every accepted message in order. Graceful shutdown at the end. */
#include "harness.h"
#include <fcntl.h>
#include <stdarg.h>

#define MSG_LEN 1000
#define MAX_SENDS 1000000
#define QUEUE_BYTES (64 * 1024)
#define QUEUE_MSGS 64

static int gate[2];   /* primary -> worker: one byte opens the worker's loop */
static int report[2]; /* worker -> primary: how many messages the worker's flood got accepted */

/* A flood message: "<tag> <seq>" NUL-padded to 16 bytes, then bytes derived from seq. */
static void make_msg(uint8_t *buf, const char *tag, uint32_t seq) {
    memset(buf, 0, 16);
    snprintf((char *)buf, 16, "%s %u", tag, seq);
    for (size_t i = 16; i < MSG_LEN; i++) buf[i] = (uint8_t)((seq * 7 + i) & 0xff);
}

/* The sequence number of a well-formed flood message with `tag`, or -1. */
static long parse_msg(const uint8_t *data, size_t len, const char *tag) {
    if (len != MSG_LEN || memchr(data, '\0', 16) == NULL) return -1;
    char t[8];
    unsigned seq;
    if (sscanf((const char *)data, "%7s %u", t, &seq) != 2 || strcmp(t, tag) != 0) return -1;
    for (size_t i = 16; i < MSG_LEN; i++)
        if (data[i] != (uint8_t)((seq * 7 + i) & 0xff)) return -1;
    return (long)seq;
}

/* ---- worker side ---- */

static uint32_t w_received, w_bad;
static long w_first_bad = -1;
static uint32_t w_flood_sent;
static int w_flooding, w_drains;

static void reply(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void reply(const char *fmt, ...) {
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    OK(cluster_send(0, (const uint8_t *)msg, (size_t)n));
}

/* Sends to the primary until AGAIN (whose loop is not turning), then reports the count. */
static void worker_flood(void) {
    uint8_t msg[MSG_LEN];
    uint32_t i;
    int32_t rc = CLUSTER_OK;
    for (i = 0; i < MAX_SENDS; i++) {
        make_msg(msg, "wseq", i);
        rc = cluster_send(0, msg, MSG_LEN);
        if (rc == CLUSTER_E_AGAIN) break;
        OK(rc);
    }
    CHECK(rc == CLUSTER_E_AGAIN, "no CLUSTER_E_AGAIN in %u sends", i);
    CHECK(cluster_last_error()[0] != '\0', "AGAIN left no sentence");
    make_msg(msg, "wseq", i);
    EXPECT_ERR(cluster_send(0, msg, MSG_LEN), CLUSTER_E_AGAIN);
    w_flood_sent = i;
    w_flooding = 1;
    CHECK(write(report[1], &i, sizeof i) == (ssize_t)sizeof i, "write the report: %s", strerror(errno));
}

static void on_worker(void *ud, const cluster_event *ev) {
    (void)ud;
    if (ev->kind == CLUSTER_EVENT_DRAIN) {
        w_drains++;
        if (w_flooding) {
            w_flooding = 0;
            reply("wdrain %u from %u", w_flood_sent, ev->worker_id);
        }
        return;
    }
    if (ev->kind != CLUSTER_EVENT_MESSAGE) return;
    if (ev->worker_id != 0 || ev->fd != -1) {
        reply("unexpected sender %u fd %d", ev->worker_id, ev->fd);
        return;
    }
    if (ev->len == MSG_LEN) {
        long seq = parse_msg(ev->data, ev->len, "seq");
        if (seq != (long)w_received) {
            if (w_bad++ == 0) w_first_bad = (long)w_received;
        }
        w_received++;
    } else if (ev->len == 6 && memcmp(ev->data, "count?", 6) == 0) {
        reply("count %u bad %u first_bad %ld", w_received, w_bad, w_first_bad);
    } else if (ev->len == 5 && memcmp(ev->data, "flood", 5) == 0) {
        worker_flood();
    } else if (ev->len == 7 && memcmp(ev->data, "drains?", 7) == 0) {
        reply("drains %d", w_drains);
    } else {
        reply("unexpected %zu-byte message", ev->len);
    }
}

static int worker_main(void *ud) {
    close(gate[1]);
    close(report[0]);
    OK(cluster_worker_start(on_worker, ud));
    /* Do not read the channel until the primary says so. */
    char c;
    ssize_t r;
    do r = read(gate[0], &c, 1); while (r < 0 && errno == EINTR);
    CHECK(r == 1, "gate read returned %zd: %s", r, r < 0 ? strerror(errno) : "EOF");
    close(gate[0]);
    int rc = cluster_run();
    close(report[1]);
    return rc == 0 ? 0 : 3;
}

/* ---- primary side ---- */

static volatile int ready, exits, clean_exits, drained, got_count, got_wdrain, got_drains;
static pid_t worker_pid;
static uint32_t worker;
static int drains, other_drains;
static unsigned count_received, count_bad, wdrain_sent, wdrain_whose;
static long count_first_bad;
static uint32_t p_received, p_bad;
static long p_first_bad = -1;
static int worker_drains;

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
    case CLUSTER_EVENT_DRAIN:
        if (ev->worker_id == worker) {
            drains++;
            drained = 1;
        } else {
            other_drains++;
        }
        break;
    case CLUSTER_EVENT_MESSAGE:
        CHECK(ev->worker_id == worker && ev->fd == -1, "message from %u with fd %d", ev->worker_id, ev->fd);
        if (ev->len == MSG_LEN) {
            long seq = parse_msg(ev->data, ev->len, "wseq");
            if (seq != (long)p_received) {
                if (p_bad++ == 0) p_first_bad = (long)p_received;
            }
            p_received++;
            break;
        }
        if (ev->len) memcpy(text, ev->data, ev->len < sizeof text - 1 ? ev->len : sizeof text - 1);
        if (sscanf(text, "count %u bad %u first_bad %ld", &count_received, &count_bad, &count_first_bad) == 3) {
            got_count = 1;
        } else if (sscanf(text, "wdrain %u from %u", &wdrain_sent, &wdrain_whose) == 2) {
            got_wdrain = 1;
        } else if (sscanf(text, "drains %d", &worker_drains) == 1) {
            got_drains = 1;
        } else {
            FAIL("unexpected message '%s'", text);
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

int main(void) {
    if (cluster_is_worker()) return worker_main(NULL);
    test_deadline(60);
    /* Made before the fork so the worker inherits them (CLOEXEC: no exec happens). */
    CHECK(pipe2(gate, O_CLOEXEC) == 0 && pipe2(report, O_CLOEXEC) == 0, "pipe2: %s", strerror(errno));

    cluster_config *cfg = cluster_config_new();
    CHECK(cfg != NULL, "config");
    OK(cluster_config_set_workers(cfg, 1));
    OK(cluster_config_set_worker_main(cfg, worker_main, NULL));
    OK(cluster_config_set_signals(cfg, false));
    OK(cluster_config_set_send_queue(cfg, QUEUE_BYTES, QUEUE_MSGS));
    OK(cluster_primary_start(cfg, on_primary, NULL));
    cluster_config_free(cfg);
    close(gate[0]);
    close(report[1]);
    dispatch_until(&ready, 20000, "the worker's READY");
    CHECK(worker >= 1 && worker_pid > 0, "FORK event (worker %u pid %d)", worker, worker_pid);

    /* The worker is not reading: fill the socket, then the bounded queue. */
    uint8_t msg[MSG_LEN];
    uint32_t sent;
    int32_t rc = CLUSTER_OK;
    for (sent = 0; sent < MAX_SENDS; sent++) {
        make_msg(msg, "seq", sent);
        rc = cluster_send(worker, msg, MSG_LEN);
        if (rc == CLUSTER_E_AGAIN) break;
        OK(rc);
    }
    CHECK(rc == CLUSTER_E_AGAIN, "no CLUSTER_E_AGAIN in %u sends", sent);
    CHECK(cluster_last_error()[0] != '\0', "AGAIN left no sentence");
    /* At least a full queue was taken (the socket holds some more before it). */
    CHECK(sent >= QUEUE_MSGS, "AGAIN after only %u messages", sent);
    make_msg(msg, "seq", sent); /* the refused one, again */
    EXPECT_ERR(cluster_send(worker, msg, MSG_LEN), CLUSTER_E_AGAIN);
    /* Refusals are not counted as sent. */
    struct cluster_worker_info info;
    OK(cluster_worker_info(worker, &info));
    CHECK(info.messages_out == sent, "messages_out %llu, %u accepted", (unsigned long long)info.messages_out, sent);

    /* Open the gate: the worker reads, the queue empties, DRAIN names the worker. */
    CHECK(write(gate[1], "g", 1) == 1, "write the gate: %s", strerror(errno));
    close(gate[1]);
    dispatch_until(&drained, 20000, "DRAIN of the worker's queue");
    OK(cluster_send(worker, (const uint8_t *)"count?", 6));
    dispatch_until(&got_count, 20000, "the worker's count");
    CHECK(count_bad == 0, "%u messages out of sequence, the first at position %ld", count_bad, count_first_bad);
    CHECK(count_received == sent, "the worker received %u messages, %u accepted", count_received, sent);
    CHECK(drains == 1 && other_drains == 0, "%d DRAIN events for the worker, %d for others", drains, other_drains);

    /* The other way: the worker floods the primary, whose loop does not turn meanwhile. */
    OK(cluster_send(worker, (const uint8_t *)"flood", 5));
    uint32_t wsent = 0;
    {
        struct pollfd pfd = {.fd = report[0], .events = POLLIN};
        int pr;
        do pr = poll(&pfd, 1, 20000); while (pr < 0 && errno == EINTR);
        CHECK(pr == 1, "no flood report from the worker within 20 s (poll %d)", pr);
        CHECK(read(report[0], &wsent, sizeof wsent) == (ssize_t)sizeof wsent, "read the flood report");
    }
    CHECK(p_received == 0, "%u flood messages arrived before the loop turned", p_received);
    dispatch_until(&got_wdrain, 20000, "the worker's DRAIN report");
    CHECK(wdrain_sent == wsent, "the worker reports %u sent after DRAIN, %u before", wdrain_sent, wsent);
    CHECK(p_bad == 0, "%u worker messages out of sequence, the first at position %ld", p_bad, p_first_bad);
    CHECK(p_received == wsent, "the primary received %u of the worker's messages, %u accepted", p_received, wsent);
    OK(cluster_send(worker, (const uint8_t *)"drains?", 7));
    dispatch_until(&got_drains, 20000, "the worker's DRAIN count");
    CHECK(worker_drains == 1, "the worker got %d DRAIN events", worker_drains);
    close(report[0]);

    OK(cluster_shutdown(5000));
    CHECK(cluster_run() == 0, "run returns 0 after a graceful stop");
    CHECK(exits == 1 && clean_exits == 1, "%d exits, %d clean", exits, clean_exits);
    CHECK(pid_gone(worker_pid), "the worker (pid %d) is gone", worker_pid);
    /* The worker's queue has the configured bounds too ("each send queue"): both sockets of a
     * channel hold the same number of these frames, so the worker's flood is accepted about
     * as many times as the primary's (socket + 64 queued), not socket + the default 4096. */
    CHECK(wsent >= QUEUE_MSGS && wsent <= sent + QUEUE_MSGS,
          "the worker had %u messages accepted before AGAIN, the primary %u: the worker's send queue "
          "does not have the configured bound of %d messages", wsent, sent, QUEUE_MSGS);
    printf("backpressure: ok\n");
    return 0;
}
