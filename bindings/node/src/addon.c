/* addon.c: the Node-API binding of rcluster (librcluster.so), in C.
 *
 * Thin on purpose: every behaviour lives in the library; this file only translates.
 *
 *  - The loop: the runtime's pollable fd (cluster_fd) is watched by a uv_poll_t on the JS
 *    thread's libuv loop. When it is readable, `pump` calls cluster_dispatch(0); the event
 *    callback only copies each event (payload, peer address, fd number) into `g.evs`, and once
 *    dispatch has returned the batch is handed to the JS handler as an array of plain objects.
 *    No thread, no busy polling.
 *  - The runtime notices it has finished only at the start of the *next* cluster_dispatch, and
 *    that moment makes nothing readable. So after any turn that did work (the fd was readable
 *    before it, or it delivered events) the pump turns once more; a turn on a silent fd that
 *    delivers nothing changes nothing, and the pump stops there. After MAX_TURNS busy turns it
 *    yields to libuv and continues from a zero timer.
 *  - CLUSTER_E_CLOSED from dispatch: the handles are closed (uv_close) and a synthetic CLOSED
 *    event tells JS. The handles are allocated per runtime, so JS may start a new runtime from
 *    inside that very callback while the old handles are still closing.
 *  - Whether the poll handle keeps the process alive (uv_ref/uv_unref) is decided by JS
 *    (setRef), which knows what is pending.
 *  - Errors: a failing call throws an Error whose `code` is the CLUSTER_E_* name, `errno` the
 *    number, and `message` cluster_last_error().
 *  - Logs: cluster_set_log_callback -> the JS logger set with setLogger. Records logged on the
 *    JS thread (nearly all: the library logs from its loop, i.e. from inside dispatch, maybe
 *    holding its lock) are queued and handed over right after the dispatch turn, in order with
 *    the events; records from any other thread go through a thread-safe function.
 *
 * Only the environment that claims it (the main thread's) may drive the runtime: it is
 * process-global, like node:cluster. Other environments (worker_threads) can ask for roles.
 */
#define _GNU_SOURCE
#define NAPI_VERSION 8

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <node_api.h>
#include <uv.h>

#include <rcluster.h>

/* Synthetic event kinds, beyond the library's CLUSTER_EVENT_* (which may grow: keep far). */
#define EV_CLOSED 1000 /* the runtime has finished (dispatch returned CLUSTER_E_CLOSED) */
#define EV_FAILED 1001 /* the loop itself failed (dispatch or uv_poll error): `data` says why */

/* Busy dispatch turns before yielding to the libuv loop. */
#define MAX_TURNS 64

/* Messages without an fd up to this size are packed: their payloads reach JS as views into
 * one Buffer per batch (no allocation per message on either side). Larger ones get their
 * own memory (an external Buffer: no second copy). */
#define SMALL_COPY 16384

/* The packed payloads' buffer is kept between batches up to this capacity. */
#define ARENA_KEEP (1u << 20)

/* ---------------------------------------------------------------------------------------- */
/* Events, as copied out of the callback                                                     */

typedef struct {
    uint32_t kind;
    uint32_t worker_id;
    int32_t pid;
    int32_t fd;
    int32_t exit_code;
    int32_t signal;
    bool exited_after_disconnect;
    uint32_t listener;
    uint8_t *data; /* malloc'd copy, or NULL (also when packed) */
    size_t len;
    bool packed; /* a plain message whose payload is at `off` in g.arena (see deliver) */
    size_t off;
    int family; /* 0: no peer; 4, 6: IP; 1: unix */
    int port;
    char addr[sizeof(((struct sockaddr_un *)0)->sun_path) + 2];
} ev_t;

/* One running runtime's libuv side. Freed once both handles are closed. */
typedef struct pump {
    uv_poll_t poll;
    uv_timer_t kick;
    int open_handles;
    bool closing;
    int fd;
} pump_t;

typedef struct {
    int32_t level;
    char *target;
    char *message;
} logrec_t;

static struct {
    napi_env env; /* the environment that owns the runtime */
    uv_loop_t *loop;
    napi_ref handler; /* JS function(events) */
    napi_async_context actx;
    pump_t *pump; /* the current runtime's pump, NULL when none */
    ev_t *evs;
    size_t n, cap;
    uint8_t *arena; /* the payloads of this batch's plain messages, back to back */
    size_t alen, acap;
    size_t lost; /* events dropped for lack of memory */
    napi_threadsafe_function log_tsfn; /* records from other threads */
    napi_ref logger;                    /* JS function(level, target, message), or NULL */
    pthread_t js_thread;                /* records from this thread wait in logq */
    logrec_t **logq;
    size_t nlog, caplog;
} g;

static void ev_free(ev_t *e) {
    free(e->data);
    e->data = NULL;
    if (e->fd >= 0) close(e->fd);
    e->fd = -1;
}

static void peer_of(ev_t *e, const struct sockaddr *sa, uint32_t len) {
    struct sockaddr_storage ss;
    if (!sa || len < sizeof(sa_family_t)) return;
    memset(&ss, 0, sizeof ss);
    memcpy(&ss, sa, len < sizeof ss ? len : sizeof ss); /* the bytes may be unaligned */
    if (ss.ss_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)&ss;
        if (inet_ntop(AF_INET, &in->sin_addr, e->addr, sizeof e->addr)) {
            e->family = 4;
            e->port = ntohs(in->sin_port);
        }
    } else if (ss.ss_family == AF_INET6 && len >= sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&ss;
        if (inet_ntop(AF_INET6, &in6->sin6_addr, e->addr, sizeof e->addr)) {
            e->family = 6;
            e->port = ntohs(in6->sin6_port);
        }
    } else if (ss.ss_family == AF_UNIX) {
        const struct sockaddr_un *un = (const struct sockaddr_un *)&ss;
        size_t off = offsetof(struct sockaddr_un, sun_path);
        size_t n = len > off ? len - off : 0;
        if (n > sizeof un->sun_path) n = sizeof un->sun_path;
        e->family = 1;
        if (n > 0 && un->sun_path[0] == '\0') { /* abstract: shown as @name */
            e->addr[0] = '@';
            memcpy(e->addr + 1, un->sun_path + 1, n - 1);
            e->addr[n] = '\0';
        } else {
            memcpy(e->addr, un->sun_path, n);
            e->addr[n] = '\0';
        }
    }
}

static ev_t *ev_push(void) {
    if (g.n == g.cap) {
        size_t cap = g.cap ? g.cap * 2 : 32;
        ev_t *p = realloc(g.evs, cap * sizeof *p);
        if (!p) return NULL;
        g.evs = p;
        g.cap = cap;
    }
    ev_t *e = &g.evs[g.n++];
    memset(e, 0, sizeof *e);
    e->fd = -1;
    return e;
}

/* The library's callback: runs inside cluster_dispatch, only copies. */
static void on_event(void *userdata, const cluster_event *ev) {
    (void)userdata;
    ev_t *e = ev_push();
    if (!e) {
        if (ev->fd >= 0) close(ev->fd);
        g.lost++;
        return;
    }
    e->kind = ev->kind;
    e->worker_id = ev->worker_id;
    e->pid = ev->pid;
    e->fd = ev->fd;
    e->exit_code = ev->exit_code;
    e->signal = ev->signal;
    e->exited_after_disconnect = ev->exited_after_disconnect;
    e->listener = ev->listener;
    if (ev->kind == CLUSTER_EVENT_MESSAGE && ev->fd < 0 && ev->len <= SMALL_COPY) {
        /* The hot path: no allocation per message; deliver() hands the arena over whole. */
        if (g.acap - g.alen < ev->len) {
            size_t cap = g.acap ? g.acap : 4096;
            while (cap - g.alen < ev->len) cap *= 2;
            uint8_t *p = realloc(g.arena, cap);
            if (!p) {
                g.n--;
                g.lost++;
                return;
            }
            g.arena = p;
            g.acap = cap;
        }
        if (ev->len) memcpy(g.arena + g.alen, ev->data, ev->len);
        e->packed = true;
        e->off = g.alen;
        e->len = ev->len;
        g.alen += ev->len;
    } else if (ev->data && ev->len > 0) {
        e->data = malloc(ev->len);
        if (!e->data) {
            ev_free(e);
            g.n--;
            g.lost++;
            return;
        }
        memcpy(e->data, ev->data, ev->len);
        e->len = ev->len;
    }
    peer_of(e, ev->peer, ev->peer_len);
}

static void push_synthetic(uint32_t kind, const char *why) {
    ev_t *e = ev_push();
    if (!e) {
        g.lost++;
        return;
    }
    e->kind = kind;
    if (why && *why) {
        size_t n = strlen(why);
        e->data = malloc(n);
        if (e->data) {
            memcpy(e->data, why, n);
            e->len = n;
        }
    }
}

static void discard_events(void) {
    for (size_t i = 0; i < g.n; i++) ev_free(&g.evs[i]);
    g.n = 0;
    g.alen = 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Small Node-API helpers                                                                    */

#define TRY(call)                                                                              \
    do {                                                                                       \
        if ((call) != napi_ok) goto fail;                                                      \
    } while (0)

static const char *code_name(int32_t rc) {
    switch (rc) {
    case CLUSTER_E_INVAL: return "CLUSTER_E_INVAL";
    case CLUSTER_E_ROLE: return "CLUSTER_E_ROLE";
    case CLUSTER_E_NOWORKER: return "CLUSTER_E_NOWORKER";
    case CLUSTER_E_AGAIN: return "CLUSTER_E_AGAIN";
    case CLUSTER_E_TOOBIG: return "CLUSTER_E_TOOBIG";
    case CLUSTER_E_CLOSED: return "CLUSTER_E_CLOSED";
    case CLUSTER_E_THREADS: return "CLUSTER_E_THREADS";
    case CLUSTER_E_STATE: return "CLUSTER_E_STATE";
    case CLUSTER_E_SYS: return "CLUSTER_E_SYS";
    case CLUSTER_E_PANIC: return "CLUSTER_E_PANIC";
    case CLUSTER_E_TIMEOUT: return "CLUSTER_E_TIMEOUT";
    default: return "CLUSTER_E_UNKNOWN";
    }
}

/* Throws an Error { code: 'CLUSTER_E_*', errno: rc, message: the library's sentence }. */
static napi_value throw_rc(napi_env env, int32_t rc, const char *sentence) {
    napi_value code, msg, err, num;
    const char *text = sentence;
    if (!text || !*text) text = cluster_last_error();
    if (!text || !*text) text = cluster_strerror(rc);
    if (napi_create_string_utf8(env, code_name(rc), NAPI_AUTO_LENGTH, &code) != napi_ok ||
        napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &msg) != napi_ok ||
        napi_create_error(env, code, msg, &err) != napi_ok) {
        napi_throw_error(env, code_name(rc), text);
        return NULL;
    }
    if (napi_create_int32(env, rc, &num) == napi_ok) napi_set_named_property(env, err, "errno", num);
    napi_throw(env, err);
    return NULL;
}

static napi_value throw_type(napi_env env, const char *what) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", what);
    return NULL;
}

static napi_value make_int(napi_env env, int64_t v) {
    napi_value out = NULL;
    napi_create_int64(env, v, &out);
    return out;
}

static napi_value undefined(napi_env env) {
    napi_value out = NULL;
    napi_get_undefined(env, &out);
    return out;
}

/* Returns the call's result: a count/id/port, or throws for a negative code. */
static void logs_soon(void);

/* A failed library call: keep its sentence, let queued log records out (JS may run: nothing
 * may be pending then, and it must not overwrite the sentence), then throw. */
static napi_value fail_rc(napi_env env, int32_t rc) {
    char *sentence = strdup(cluster_last_error());
    logs_soon();
    throw_rc(env, rc, sentence);
    free(sentence);
    return NULL;
}

static napi_value rc_result(napi_env env, int32_t rc) {
    if (rc < 0) return fail_rc(env, rc);
    logs_soon();
    return make_int(env, rc);
}

static bool get_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv, size_t *argc) {
    size_t n = want;
    if (napi_get_cb_info(env, info, &n, argv, NULL, NULL) != napi_ok) return false;
    for (size_t i = n; i < want; i++) napi_get_undefined(env, &argv[i]);
    if (argc) *argc = n;
    return true;
}

static bool get_u32(napi_env env, napi_value v, uint32_t *out) {
    double d;
    if (napi_get_value_double(env, v, &d) != napi_ok || !(d >= 0) || d > 4294967295.0 || d != (double)(uint32_t)d)
        return false;
    *out = (uint32_t)d;
    return true;
}

static bool get_i32(napi_env env, napi_value v, int32_t *out) {
    double d;
    if (napi_get_value_double(env, v, &d) != napi_ok || d < -2147483648.0 || d > 2147483647.0 || d != (double)(int32_t)d)
        return false;
    *out = (int32_t)d;
    return true;
}

static bool get_u64(napi_env env, napi_value v, uint64_t *out) {
    double d;
    if (napi_get_value_double(env, v, &d) != napi_ok || !(d >= 0) || d > 9007199254740991.0 || d != (double)(uint64_t)d)
        return false;
    *out = (uint64_t)d;
    return true;
}

static bool get_bool(napi_env env, napi_value v, bool *out) {
    return napi_get_value_bool(env, v, out) == napi_ok;
}

/* A malloc'd NUL-terminated copy of a JS string; NULL if not a string or it holds a NUL. */
static char *get_cstr(napi_env env, napi_value v) {
    size_t len = 0, got = 0;
    if (napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok) return NULL;
    char *s = malloc(len + 1);
    if (!s) return NULL;
    if (napi_get_value_string_utf8(env, v, s, len + 1, &got) != napi_ok || strlen(s) != got) {
        free(s);
        return NULL;
    }
    return s;
}

/* Bytes of a Buffer / TypedArray / DataView / ArrayBuffer. */
static bool get_bytes(napi_env env, napi_value v, const uint8_t **data, size_t *len) {
    bool is = false;
    void *p = NULL;
    if (napi_is_typedarray(env, v, &is) == napi_ok && is) {
        napi_typedarray_type type;
        size_t count = 0, offset = 0;
        napi_value ab;
        if (napi_get_typedarray_info(env, v, &type, &count, &p, &ab, &offset) != napi_ok) return false;
        size_t width = 1;
        switch (type) {
        case napi_int16_array: case napi_uint16_array: width = 2; break;
        case napi_int32_array: case napi_uint32_array: case napi_float32_array: width = 4; break;
        case napi_float64_array: case napi_bigint64_array: case napi_biguint64_array: width = 8; break;
        default: width = 1; break;
        }
        *data = p;
        *len = count * width;
        return true;
    }
    if (napi_is_dataview(env, v, &is) == napi_ok && is) {
        size_t n = 0, offset = 0;
        napi_value ab;
        if (napi_get_dataview_info(env, v, &n, &p, &ab, &offset) != napi_ok) return false;
        *data = p;
        *len = n;
        return true;
    }
    if (napi_is_arraybuffer(env, v, &is) == napi_ok && is) {
        size_t n = 0;
        if (napi_get_arraybuffer_info(env, v, &p, &n) != napi_ok) return false;
        *data = p;
        *len = n;
        return true;
    }
    return false;
}

static bool is_nullish(napi_env env, napi_value v) {
    napi_valuetype t;
    return napi_typeof(env, v, &t) != napi_ok || t == napi_undefined || t == napi_null;
}

/* Only the owning environment (the main thread's) may drive the runtime. */
static bool owner(napi_env env) {
    if (env == g.env) return true;
    napi_throw_error(env, "ERR_RCLUSTER_THREAD",
                     "rcluster: the cluster runtime belongs to the main thread of the process");
    return false;
}

/* ---------------------------------------------------------------------------------------- */
/* Delivering a batch to JS                                                                  */

static void free_buffer(napi_env env, void *data, void *hint) {
    (void)env;
    (void)hint;
    free(data);
}

static napi_value ev_to_js(napi_env env, ev_t *e) {
    napi_value o, v;
    TRY(napi_create_object(env, &o));
#define SET_INT(name, val)                                                                     \
    do {                                                                                       \
        TRY(napi_create_int64(env, (int64_t)(val), &v));                                       \
        TRY(napi_set_named_property(env, o, name, v));                                         \
    } while (0)
    SET_INT("kind", e->kind);
    SET_INT("workerId", e->worker_id);
    SET_INT("fd", e->fd);
    if (e->kind != CLUSTER_EVENT_MESSAGE) { /* a message needs no more: the hot path stays short */
        SET_INT("pid", e->pid);
        SET_INT("exitCode", e->exit_code);
        SET_INT("signal", e->signal);
        SET_INT("listener", e->listener);
        TRY(napi_get_boolean(env, e->exited_after_disconnect, &v));
        TRY(napi_set_named_property(env, o, "exitedAfterDisconnect", v));
    }
#undef SET_INT
    if (e->data && e->len <= SMALL_COPY) {
        /* Small: a plain copy costs less than a Buffer with a finalizer for the GC to run. */
        void *dst;
        napi_status st = napi_create_buffer_copy(env, e->len, e->data, &dst, &v);
        free(e->data);
        e->data = NULL;
        if (st != napi_ok) goto fail;
        TRY(napi_set_named_property(env, o, "data", v));
    } else if (e->data) {
        /* The copy made in the callback becomes the Buffer's memory (no second copy). */
        napi_status st = napi_create_external_buffer(env, e->len, e->data, free_buffer, NULL, &v);
        if (st == napi_ok) {
            e->data = NULL;
        } else {
            void *dst;
            TRY(napi_create_buffer_copy(env, e->len, e->data, &dst, &v));
            free(e->data);
            e->data = NULL;
        }
        TRY(napi_set_named_property(env, o, "data", v));
    }
    if (e->family) {
        napi_value peer;
        TRY(napi_create_object(env, &peer));
        TRY(napi_create_string_utf8(env, e->family == 4 ? "IPv4" : e->family == 6 ? "IPv6" : "unix",
                                    NAPI_AUTO_LENGTH, &v));
        TRY(napi_set_named_property(env, peer, "family", v));
        TRY(napi_create_string_utf8(env, e->addr, NAPI_AUTO_LENGTH, &v));
        TRY(napi_set_named_property(env, peer, "address", v));
        TRY(napi_create_int32(env, e->port, &v));
        TRY(napi_set_named_property(env, peer, "port", v));
        TRY(napi_set_named_property(env, o, "peer", peer));
    }
    return o;
fail:
    return NULL;
}

/* An exception thrown by the JS handler (it is not meant to throw: it rethrows listeners'
 * exceptions on the next tick) becomes an uncaught exception, as for any async callback. */
static void raise_pending(napi_env env) {
    bool pending = false;
    napi_value err;
    if (napi_is_exception_pending(env, &pending) == napi_ok && pending &&
        napi_get_and_clear_last_exception(env, &err) == napi_ok)
        napi_fatal_exception(env, err);
}

/* Hands the collected events to the JS handler as handler(list, meta, data):
 *  - plain messages (packed, the hot path) are three int32s each in `meta` (workerId,
 *    offset, length), their payloads back to back in the Buffer `data`: two allocations per
 *    batch instead of an object and a Buffer per message;
 *  - every other event is an object in `list`, at its index in the batch (the packed ones
 *    leave holes there, which keeps the order); `list` is null when every event is packed.
 * The fds and payloads belong to JS after. */
static void deliver(void) {
    napi_env env = g.env;
    napi_handle_scope scope;
    if (g.n == 0 && g.lost == 0) return;
    if (!env || !g.handler || napi_open_handle_scope(env, &scope) != napi_ok) {
        discard_events();
        return;
    }
    if (g.lost > 0) { /* say so, rather than losing events silently */
        char why[96];
        snprintf(why, sizeof why, "rcluster: %zu event(s) lost: out of memory", g.lost);
        g.lost = 0;
        push_synthetic(CLUSTER_EVENT_ERROR, why);
    }
    napi_value args[3], fn, recv, result;
    size_t n = g.n, packed = 0;
    for (size_t i = 0; i < n; i++) packed += g.evs[i].packed;
    if (packed < n) {
        TRY(napi_create_array_with_length(env, n, &args[0]));
        for (size_t i = 0; i < n; i++) {
            if (g.evs[i].packed) continue;
            napi_value v = ev_to_js(env, &g.evs[i]);
            if (!v || napi_set_element(env, args[0], (uint32_t)i, v) != napi_ok) goto fail;
        }
    } else {
        TRY(napi_get_null(env, &args[0]));
    }
    if (packed > 0) {
        void *meta, *bytes;
        napi_value ab;
        TRY(napi_create_arraybuffer(env, packed * 3 * sizeof(int32_t), &meta, &ab));
        TRY(napi_create_typedarray(env, napi_int32_array, packed * 3, ab, 0, &args[1]));
        TRY(napi_create_buffer_copy(env, g.alen, g.alen ? g.arena : (void *)"", &bytes, &args[2]));
        int32_t *m = meta;
        for (size_t i = 0; i < n; i++) {
            if (!g.evs[i].packed) continue;
            *m++ = (int32_t)g.evs[i].worker_id;
            *m++ = (int32_t)g.evs[i].off; /* < 2^31: a turn reads at most a few MiB */
            *m++ = (int32_t)g.evs[i].len;
        }
    } else {
        TRY(napi_get_undefined(env, &args[1]));
        args[2] = args[1];
    }
    g.n = 0; /* everything is JS's now (payloads in Buffers, fds as numbers) */
    g.alen = 0;
    if (g.acap > ARENA_KEEP) { /* one huge turn does not pin its memory for good */
        free(g.arena);
        g.arena = NULL;
        g.acap = 0;
    }
    TRY(napi_get_reference_value(env, g.handler, &fn));
    TRY(napi_get_global(env, &recv));
    /* What the handlers send in reply to this batch leaves batched (node's sends are
     * asynchronous anyway): one datagram instead of one per message. */
    bool corked = cluster_cork() == 0;
    napi_status st = napi_make_callback(env, g.actx, recv, fn, 3, args, &result);
    if (corked) cluster_uncork();
    if (st != napi_ok) raise_pending(env);
    napi_close_handle_scope(env, scope);
    return;
fail:
    discard_events();
    raise_pending(env);
    napi_close_handle_scope(env, scope);
}

/* ---------------------------------------------------------------------------------------- */
/* The pump: libuv -> cluster_dispatch                                                       */

static void on_pump_handle_closed(uv_handle_t *h) {
    pump_t *p = h->data;
    if (--p->open_handles == 0) free(p);
}

static void pump_close(pump_t *p) {
    if (p->closing) return;
    p->closing = true;
    if (g.pump == p) g.pump = NULL;
    uv_poll_stop(&p->poll);
    uv_timer_stop(&p->kick);
    uv_close((uv_handle_t *)&p->poll, on_pump_handle_closed);
    uv_close((uv_handle_t *)&p->kick, on_pump_handle_closed);
}

static void on_kick(uv_timer_t *t);
static void flush_logs(void);

static bool fd_readable(int fd) {
    struct pollfd pfd = {.fd = fd, .events = POLLIN, .revents = 0};
    return poll(&pfd, 1, 0) > 0 && (pfd.revents & POLLIN);
}

static void pump_run(pump_t *p) {
    for (int turn = 0; turn < MAX_TURNS; turn++) {
        bool was_ready = fd_readable(p->fd);
        int32_t r = cluster_dispatch(0);
        flush_logs();
        if (r == CLUSTER_E_CLOSED) {
            pump_close(p);
            push_synthetic(EV_CLOSED, NULL);
            deliver();
            return;
        }
        if (r < 0) {
            char why[512];
            snprintf(why, sizeof why, "rcluster: cluster_dispatch failed (%s): %s", code_name(r), cluster_last_error());
            pump_close(p);
            push_synthetic(EV_FAILED, why);
            deliver();
            return;
        }
        deliver();
        if (p->closing || g.pump != p) return; /* JS tore it down meanwhile */
        if (!was_ready && r == 0) return;      /* an idle turn: nothing can have changed */
    }
    uv_timer_start(&p->kick, on_kick, 0, 0); /* still busy: continue after libuv's other work */
}

static void on_kick(uv_timer_t *t) {
    pump_t *p = t->data;
    if (!p->closing) pump_run(p);
}

/* After a call from JS into the library: records it logged on this thread wait in logq; a
 * zero timer hands them over right after this JS turn (directly when no runtime runs). */
static void logs_soon(void) {
    if (g.nlog == 0) return;
    if (g.pump && !g.pump->closing) uv_timer_start(&g.pump->kick, on_kick, 0, 0);
    else flush_logs();
}

static void on_poll(uv_poll_t *h, int status, int events) {
    pump_t *p = h->data;
    (void)events;
    if (p->closing) return;
    if (status < 0) {
        char why[256];
        snprintf(why, sizeof why, "rcluster: polling the cluster fd failed: %s", uv_strerror(status));
        pump_close(p);
        push_synthetic(EV_FAILED, why);
        deliver();
        return;
    }
    pump_run(p);
}

/* Starts watching the runtime that was just started. Returns 0 or a CLUSTER_E_* code. */
static int32_t pump_open(void) {
    int32_t fd = cluster_fd();
    if (fd < 0) return fd;
    pump_t *p = calloc(1, sizeof *p);
    if (!p) return CLUSTER_E_SYS;
    p->fd = fd;
    p->poll.data = p;
    p->kick.data = p;
    if (uv_poll_init(g.loop, &p->poll, fd) != 0) {
        free(p);
        return CLUSTER_E_SYS;
    }
    p->open_handles = 1;
    uv_timer_init(g.loop, &p->kick);
    p->open_handles = 2;
    uv_unref((uv_handle_t *)&p->kick); /* the poll handle alone decides about liveness */
    if (uv_poll_start(&p->poll, UV_READABLE, on_poll) != 0) {
        pump_close(p);
        return CLUSTER_E_SYS;
    }
    g.pump = p;
    /* Events may already wait (FORK of the first workers): the fd is readable then, but a
     * zero timer costs nothing and makes sure the first turn happens. */
    uv_timer_start(&p->kick, on_kick, 0, 0);
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Configuration ops: [name, ...args] arrays built by lib/primary.js                        */

static int32_t apply_op(napi_env env, cluster_config *cfg, napi_value op, char *bad, size_t badlen) {
    napi_value a[5];
    uint32_t argc = 0;
    char *name = NULL, *s = NULL;
    int32_t rc = CLUSTER_E_INVAL;
    bool called = false; /* a library setter ran: its sentence explains a failure */
    uint32_t u[3] = {0, 0, 0};
    uint64_t q[2] = {0, 0};
    bool b = false;
    bool ok = napi_get_array_length(env, op, &argc) == napi_ok && argc >= 1;
    for (uint32_t i = 0; ok && i < 5; i++) {
        if (i < argc) ok = napi_get_element(env, op, i, &a[i]) == napi_ok;
        else napi_get_undefined(env, &a[i]);
    }
    if (!ok || !(name = get_cstr(env, a[0]))) {
        snprintf(bad, badlen, "a configuration entry is not [name, ...args]");
        return CLUSTER_E_INVAL;
    }
    snprintf(bad, badlen, "bad arguments for configuration entry '%s'", name);
#define U(i) get_u32(env, a[i], &u[(i) - 1])
#define CALL(x) (called = true, (x))
    if (!strcmp(name, "workers")) {
        if (U(1)) rc = CALL(cluster_config_set_workers(cfg, u[0]));
    } else if (!strcmp(name, "mode")) {
        if (U(1)) rc = CALL(cluster_config_set_mode(cfg, u[0]));
    } else if (!strcmp(name, "policy")) {
        if (U(1)) rc = CALL(cluster_config_set_policy(cfg, u[0]));
    } else if (!strcmp(name, "exec")) {
        uint32_t n = 0;
        if ((s = get_cstr(env, a[1])) && napi_get_array_length(env, a[2], &n) == napi_ok) {
            char **argv = calloc((size_t)n + 1, sizeof *argv);
            bool good = argv != NULL;
            for (uint32_t i = 0; good && i < n; i++) {
                napi_value item;
                good = napi_get_element(env, a[2], i, &item) == napi_ok && (argv[i] = get_cstr(env, item));
            }
            if (good) rc = CALL(cluster_config_set_exec(cfg, s, (const char *const *)argv));
            for (uint32_t i = 0; argv && i < n; i++) free(argv[i]);
            free(argv);
        }
    } else if (!strcmp(name, "listen_tcp")) {
        if ((s = get_cstr(env, a[1])) && U(2) && u[1] <= 65535)
            rc = CALL(cluster_config_listen_tcp(cfg, s, (uint16_t)u[1]));
    } else if (!strcmp(name, "listen_unix")) { /* [path, mode?]: the mode applies to this listener */
        if ((s = get_cstr(env, a[1])) && (is_nullish(env, a[2]) || U(2))) {
            rc = CALL(cluster_config_listen_unix(cfg, s));
            if (rc >= 0 && !is_nullish(env, a[2])) {
                int32_t m = cluster_config_set_unix_mode(cfg, (uint32_t)rc, u[1]);
                if (m < 0) rc = m;
            }
        }
    } else if (!strcmp(name, "listen_systemd")) {
        rc = CALL(cluster_config_listen_systemd(cfg));
    } else if (!strcmp(name, "max_message")) {
        if (get_u64(env, a[1], &q[0])) rc = CALL(cluster_config_set_max_message(cfg, q[0]));
    } else if (!strcmp(name, "signals")) {
        if (get_bool(env, a[1], &b)) rc = CALL(cluster_config_set_signals(cfg, b));
    } else if (!strcmp(name, "grace")) {
        if (U(1)) rc = CALL(cluster_config_set_grace(cfg, u[0]));
    } else if (!strcmp(name, "send_queue")) {
        if (get_u64(env, a[1], &q[0]) && get_u64(env, a[2], &q[1]))
            rc = CALL(cluster_config_set_send_queue(cfg, (size_t)q[0], (size_t)q[1]));
    } else if (!strcmp(name, "manual_ready")) {
        if (get_bool(env, a[1], &b)) rc = CALL(cluster_config_set_manual_ready(cfg, b));
    } else if (!strcmp(name, "channel")) {
        if (U(1)) rc = CALL(cluster_config_set_channel(cfg, u[0]));
    } else if (!strcmp(name, "sched_batch")) {
        if (get_bool(env, a[1], &b)) rc = CALL(cluster_config_set_sched_batch(cfg, b));
    } else if (!strcmp(name, "restart")) {
        if (get_bool(env, a[1], &b)) rc = CALL(cluster_config_set_restart(cfg, b));
    } else if (!strcmp(name, "backoff")) {
        if (U(1) && U(2) && U(3)) rc = CALL(cluster_config_set_backoff(cfg, u[0], u[1], u[2]));
    } else if (!strcmp(name, "crash_loop")) {
        if (U(1) && U(2)) rc = CALL(cluster_config_set_crash_loop(cfg, u[0], u[1]));
    } else if (!strcmp(name, "min_uptime")) {
        if (U(1)) rc = CALL(cluster_config_set_min_uptime(cfg, u[0]));
    } else if (!strcmp(name, "startup_timeout")) {
        if (U(1)) rc = CALL(cluster_config_set_startup_timeout(cfg, u[0]));
    } else if (!strcmp(name, "heartbeat")) {
        if (U(1) && U(2)) rc = CALL(cluster_config_set_heartbeat(cfg, u[0], u[1]));
    } else if (!strcmp(name, "max_requests")) {
        if (get_u64(env, a[1], &q[0]) && get_u64(env, a[2], &q[1])) rc = CALL(cluster_config_set_max_requests(cfg, q[0], q[1]));
    } else if (!strcmp(name, "user")) {
        if (U(1) && U(2)) rc = CALL(cluster_config_set_user(cfg, u[0], u[1]));
    } else if (!strcmp(name, "groups")) {
        uint32_t n = 0;
        if (napi_get_array_length(env, a[1], &n) == napi_ok) {
            uint32_t *gids = calloc((size_t)n + 1, sizeof *gids);
            bool good = gids != NULL;
            for (uint32_t i = 0; good && i < n; i++) {
                napi_value item;
                good = napi_get_element(env, a[1], i, &item) == napi_ok && get_u32(env, item, &gids[i]);
            }
            if (good) rc = CALL(cluster_config_set_groups(cfg, gids, n));
            free(gids);
        }
    } else if (!strcmp(name, "cwd")) {
        if ((s = get_cstr(env, a[1]))) rc = CALL(cluster_config_set_cwd(cfg, s));
    } else if (!strcmp(name, "env")) {
        if ((s = get_cstr(env, a[1]))) rc = CALL(cluster_config_add_env(cfg, s));
    } else if (!strcmp(name, "silent")) {
        if (get_bool(env, a[1], &b)) rc = CALL(cluster_config_set_silent(cfg, b));
    } else {
        snprintf(bad, badlen, "unknown configuration entry '%s'", name);
    }
#undef U
#undef CALL
    if (called) bad[0] = '\0'; /* the library's own sentence (cluster_last_error) says it better */
    free(name);
    free(s);
    return rc;
}

/* ---------------------------------------------------------------------------------------- */
/* Exported functions                                                                        */

/* setHandler(fn): the JS function that receives every batch of events. */
static napi_value js_set_handler(napi_env env, napi_callback_info info) {
    napi_value argv[1], resource, name;
    napi_valuetype t;
    if (!owner(env) || !get_args(env, info, 1, argv, NULL)) return NULL;
    if (napi_typeof(env, argv[0], &t) != napi_ok || t != napi_function) return throw_type(env, "handler must be a function");
    if (g.handler) napi_delete_reference(env, g.handler);
    g.handler = NULL;
    if (napi_create_reference(env, argv[0], 1, &g.handler) != napi_ok) return NULL;
    if (!g.actx) {
        if (napi_create_object(env, &resource) != napi_ok ||
            napi_create_string_utf8(env, "rcluster", NAPI_AUTO_LENGTH, &name) != napi_ok ||
            napi_async_init(env, resource, name, &g.actx) != napi_ok)
            return NULL;
    }
    return undefined(env);
}

/* primaryStart(ops): configures (ops: [[name, ...args], ...]) and starts the primary. */
static napi_value js_primary_start(napi_env env, napi_callback_info info) {
    napi_value argv[1];
    uint32_t n = 0;
    bool is_array = false;
    char bad[256] = "";
    if (!owner(env) || !get_args(env, info, 1, argv, NULL)) return NULL;
    if (napi_is_array(env, argv[0], &is_array) != napi_ok || !is_array || napi_get_array_length(env, argv[0], &n) != napi_ok)
        return throw_type(env, "primaryStart expects an array of configuration entries");
    /* The role first, as the library orders it: in a worker (whose own runtime runs) this is
     * CLUSTER_E_ROLE, not "already running". */
    if (cluster_is_worker())
        return throw_rc(env, CLUSTER_E_ROLE, "rcluster: this process is a worker: only the primary starts a cluster");
    if (!g.handler) return throw_rc(env, CLUSTER_E_STATE, "rcluster: no event handler (internal error)");
    if (g.pump) return throw_rc(env, CLUSTER_E_STATE, "rcluster: the cluster is already running");
    cluster_config *cfg = cluster_config_new();
    if (!cfg) return throw_rc(env, CLUSTER_E_SYS, "rcluster: out of memory");
    for (uint32_t i = 0; i < n; i++) {
        napi_value op;
        int32_t rc = napi_get_element(env, argv[0], i, &op) == napi_ok ? apply_op(env, cfg, op, bad, sizeof bad) : CLUSTER_E_INVAL;
        if (rc < 0) {
            cluster_config_free(cfg);
            return throw_rc(env, rc, bad[0] ? bad : NULL);
        }
    }
    int32_t rc = cluster_primary_start(cfg, on_event, NULL);
    cluster_config_free(cfg);
    if (rc < 0) return fail_rc(env, rc);
    rc = pump_open();
    logs_soon();
    if (rc < 0) {
        cluster_shutdown(0);
        return throw_rc(env, rc, "rcluster: cannot watch the cluster's fd on the libuv loop");
    }
    return undefined(env);
}

/* workerStart(): starts this worker's runtime (connects to the primary: ONLINE, READY). */
static napi_value js_worker_start(napi_env env, napi_callback_info info) {
    (void)info;
    if (!owner(env)) return NULL;
    if (!cluster_is_worker())
        return throw_rc(env, CLUSTER_E_ROLE, "rcluster: this process is not a worker: only a worker starts a worker runtime");
    if (!g.handler) return throw_rc(env, CLUSTER_E_STATE, "rcluster: no event handler (internal error)");
    if (g.pump) return throw_rc(env, CLUSTER_E_STATE, "rcluster: the worker runtime is already running");
    int32_t rc = cluster_worker_start(on_event, NULL);
    if (rc < 0) return fail_rc(env, rc);
    rc = pump_open();
    logs_soon();
    if (rc < 0) return throw_rc(env, rc, "rcluster: cannot watch the worker's fd on the libuv loop");
    return undefined(env);
}

/* setRef(bool): whether the runtime keeps the event loop (and so the process) alive. */
static napi_value js_set_ref(napi_env env, napi_callback_info info) {
    napi_value argv[1];
    bool on = true;
    if (!owner(env) || !get_args(env, info, 1, argv, NULL)) return NULL;
    if (!get_bool(env, argv[0], &on)) return throw_type(env, "setRef expects a boolean");
    if (g.pump && !g.pump->closing) {
        if (on) uv_ref((uv_handle_t *)&g.pump->poll);
        else uv_unref((uv_handle_t *)&g.pump->poll);
    }
    return undefined(env);
}

static napi_value js_is_running(napi_env env, napi_callback_info info) {
    napi_value v;
    (void)info;
    napi_get_boolean(env, g.pump != NULL && env == g.env, &v);
    return v;
}

static napi_value js_is_worker(napi_env env, napi_callback_info info) {
    napi_value v;
    (void)info;
    napi_get_boolean(env, cluster_is_worker(), &v);
    return v;
}

static napi_value js_worker_id(napi_env env, napi_callback_info info) {
    (void)info;
    return make_int(env, cluster_worker_id());
}

/* A malloc'd array of malloc'd copies of the strings of JS array `arr` (*n of them); NULL
 * on a non-string element or out of memory. */
static char **get_cstrs(napi_env env, napi_value arr, uint32_t *n) {
    if (napi_get_array_length(env, arr, n) != napi_ok) return NULL;
    char **out = calloc(*n ? *n : 1, sizeof *out);
    if (!out) return NULL;
    for (uint32_t i = 0; i < *n; i++) {
        napi_value item;
        if (napi_get_element(env, arr, i, &item) != napi_ok || !(out[i] = get_cstr(env, item))) {
            for (uint32_t j = 0; j < i; j++) free(out[j]);
            free(out);
            return NULL;
        }
    }
    return out;
}

static void free_cstrs(char **v, uint32_t n) {
    if (!v) return;
    for (uint32_t i = 0; i < n; i++) free(v[i]);
    free(v);
}

/* forkExec(argvArray, envArray, cwd|null): a worker with its own argv, env and directory. */
static napi_value js_fork_exec(napi_env env, napi_callback_info info) {
    napi_value argv[3];
    if (!owner(env) || !get_args(env, info, 3, argv, NULL)) return NULL;
    uint32_t argc = 0, n = 0;
    char **args = get_cstrs(env, argv[0], &argc);
    char **vars = args ? get_cstrs(env, argv[1], &n) : NULL;
    napi_valuetype t;
    char *cwd = NULL;
    bool ok = args && vars && napi_typeof(env, argv[2], &t) == napi_ok;
    if (ok && t == napi_string) ok = (cwd = get_cstr(env, argv[2])) != NULL;
    int32_t rc = ok ? cluster_fork_exec((const char *const *)args, argc, (const char *const *)vars, n, cwd) : CLUSTER_E_INVAL;
    free_cstrs(args, argc);
    free_cstrs(vars, n);
    free(cwd);
    if (!ok) return throw_type(env, "forkExec(argv, env, cwd): arrays of strings and a string or null");
    return rc_result(env, rc);
}

/* fork([envArray]): with an array of "NAME=value" strings, that worker's extra environment. */
static napi_value js_fork(napi_env env, napi_callback_info info) {
    size_t argc = 1;
    napi_value argv[1];
    if (!owner(env)) return NULL;
    if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
    bool is_array = false;
    if (argc < 1 || napi_is_array(env, argv[0], &is_array) != napi_ok || !is_array) return rc_result(env, cluster_fork());
    uint32_t n = 0;
    if (napi_get_array_length(env, argv[0], &n) != napi_ok) return NULL;
    char **vars = calloc(n ? n : 1, sizeof *vars);
    if (!vars) return throw_rc(env, CLUSTER_E_SYS, "rcluster: out of memory");
    int32_t rc = CLUSTER_OK;
    uint32_t got = 0;
    for (; got < n; got++) {
        napi_value item;
        if (napi_get_element(env, argv[0], got, &item) != napi_ok || !(vars[got] = get_cstr(env, item))) {
            rc = CLUSTER_E_INVAL;
            break;
        }
    }
    if (rc == CLUSTER_OK) rc = cluster_fork_env((const char *const *)vars, n);
    for (uint32_t i = 0; i < got; i++) free(vars[i]);
    free(vars);
    if (rc == CLUSTER_E_INVAL && got < n) return throw_type(env, "fork(env): an array of NAME=value strings");
    return rc_result(env, rc);
}

static napi_value js_workers(napi_env env, napi_callback_info info) {
    (void)info;
    if (!owner(env)) return NULL;
    for (;;) {
        int32_t n = cluster_workers(NULL, 0);
        if (n < 0) return throw_rc(env, n, NULL);
        size_t cap = (size_t)n + 16;
        uint32_t *ids = malloc(cap * sizeof *ids);
        if (!ids) return throw_rc(env, CLUSTER_E_SYS, "rcluster: out of memory");
        int32_t got = cluster_workers(ids, cap);
        if (got < 0) {
            free(ids);
            return throw_rc(env, got, NULL);
        }
        if ((size_t)got > cap) { /* grew meanwhile: again */
            free(ids);
            continue;
        }
        napi_value arr, v;
        if (napi_create_array_with_length(env, (size_t)got, &arr) != napi_ok) {
            free(ids);
            return NULL;
        }
        for (int32_t i = 0; i < got; i++) {
            if (napi_create_uint32(env, ids[i], &v) != napi_ok || napi_set_element(env, arr, (uint32_t)i, v) != napi_ok) {
                free(ids);
                return NULL;
            }
        }
        free(ids);
        return arr;
    }
}

static napi_value js_worker_info(napi_env env, napi_callback_info info) {
    napi_value argv[1], o, v;
    uint32_t id;
    struct cluster_worker_info wi;
    if (!owner(env) || !get_args(env, info, 1, argv, NULL)) return NULL;
    if (!get_u32(env, argv[0], &id)) return throw_type(env, "worker id must be a non-negative integer");
    memset(&wi, 0, sizeof wi);
    int32_t rc = cluster_worker_info(id, &wi);
    if (rc < 0) return throw_rc(env, rc, NULL);
    TRY(napi_create_object(env, &o));
#define SET_NUM(name, val)                                                                     \
    do {                                                                                       \
        TRY(napi_create_double(env, (double)(val), &v));                                       \
        TRY(napi_set_named_property(env, o, name, v));                                         \
    } while (0)
    SET_NUM("id", wi.id);
    SET_NUM("pid", wi.pid);
    SET_NUM("state", wi.state);
    SET_NUM("connections", wi.connections);
    SET_NUM("messagesIn", wi.messages_in);
    SET_NUM("messagesOut", wi.messages_out);
    SET_NUM("restarts", wi.restarts);
    SET_NUM("startedAt", wi.started_at_ms);
#undef SET_NUM
    return o;
fail:
    return NULL;
}

static napi_value js_kill(napi_env env, napi_callback_info info) {
    napi_value argv[2];
    uint32_t id;
    int32_t sig;
    if (!owner(env) || !get_args(env, info, 2, argv, NULL)) return NULL;
    if (!get_u32(env, argv[0], &id) || !get_i32(env, argv[1], &sig)) return throw_type(env, "kill(id, signal number)");
    return rc_result(env, cluster_worker_kill(id, sig));
}

static napi_value js_disconnect(napi_env env, napi_callback_info info) {
    napi_value argv[1];
    uint32_t id;
    if (!owner(env) || !get_args(env, info, 1, argv, NULL)) return NULL;
    if (!get_u32(env, argv[0], &id)) return throw_type(env, "worker id must be a non-negative integer");
    return rc_result(env, cluster_worker_disconnect(id));
}

static napi_value js_close_channel(napi_env env, napi_callback_info info) {
    napi_value argv[1];
    uint32_t id;
    if (!owner(env) || !get_args(env, info, 1, argv, NULL)) return NULL;
    if (!get_u32(env, argv[0], &id)) return throw_type(env, "worker id must be a non-negative integer");
    return rc_result(env, cluster_worker_close_channel(id));
}

/* takeStdio(id): [stdin, stdout, stderr] fds of a silent Node worker (the caller owns them). */
static napi_value js_take_stdio(napi_env env, napi_callback_info info) {
    napi_value argv[1];
    uint32_t id;
    if (!owner(env) || !get_args(env, info, 1, argv, NULL)) return NULL;
    if (!get_u32(env, argv[0], &id)) return throw_type(env, "worker id must be a non-negative integer");
    int32_t fds[3] = {-1, -1, -1};
    int32_t rc = cluster_worker_take_stdio(id, fds);
    if (rc < 0) return throw_rc(env, rc, NULL);
    napi_value arr, v;
    if (napi_create_array_with_length(env, 3, &arr) != napi_ok) return NULL;
    for (uint32_t i = 0; i < 3; i++) {
        if (napi_create_int32(env, fds[i], &v) != napi_ok || napi_set_element(env, arr, i, v) != napi_ok) return NULL;
    }
    return arr;
}

static napi_value js_reload(napi_env env, napi_callback_info info) {
    (void)info;
    if (!owner(env)) return NULL;
    return rc_result(env, cluster_reload());
}

static napi_value js_scale(napi_env env, napi_callback_info info) {
    napi_value argv[1];
    uint32_t n;
    if (!owner(env) || !get_args(env, info, 1, argv, NULL)) return NULL;
    if (!get_u32(env, argv[0], &n)) return throw_type(env, "scale expects a non-negative integer");
    return rc_result(env, cluster_scale(n));
}

static napi_value js_shutdown(napi_env env, napi_callback_info info) {
    napi_value argv[1];
    uint32_t grace;
    if (!owner(env) || !get_args(env, info, 1, argv, NULL)) return NULL;
    if (!get_u32(env, argv[0], &grace)) return throw_type(env, "shutdown expects a grace period in ms");
    return rc_result(env, cluster_shutdown(grace));
}

static napi_value js_local_port(napi_env env, napi_callback_info info) {
    napi_value argv[1];
    uint32_t i;
    if (!owner(env) || !get_args(env, info, 1, argv, NULL)) return NULL;
    if (!get_u32(env, argv[0], &i)) return throw_type(env, "listener index must be a non-negative integer");
    return rc_result(env, cluster_local_port(i));
}

static napi_value js_stats(napi_env env, napi_callback_info info) {
    (void)info;
    if (!owner(env)) return NULL;
    size_t cap = 4096;
    for (int tries = 0; tries < 8; tries++) {
        char *buf = malloc(cap);
        if (!buf) return throw_rc(env, CLUSTER_E_SYS, "rcluster: out of memory");
        int32_t n = cluster_stats(buf, cap);
        if (n < 0) {
            free(buf);
            return throw_rc(env, n, NULL);
        }
        if ((size_t)n < cap) {
            napi_value s = NULL;
            napi_create_string_utf8(env, buf, (size_t)n, &s);
            free(buf);
            return s;
        }
        free(buf);
        cap = (size_t)n + 1024;
    }
    return throw_rc(env, CLUSTER_E_STATE, "rcluster: stats kept growing");
}

/* Payloads up to this size are built on the stack (no allocation per send). */
#define SEND_STACK 2048

/* A tagged payload: [tag][bytes] (tag < 0: the bytes alone). Value: bytes or a string.
 * Built in `stack` (`cap` bytes) when it fits, else in memory the caller frees (payload_free). */
static uint8_t *build_payload(napi_env env, int32_t tag, napi_value value, uint8_t *stack, size_t cap,
                              size_t *out_len) {
    const uint8_t *bytes = NULL;
    size_t len = 0, head = tag >= 0 ? 1 : 0;
    uint8_t *buf = NULL;
    napi_valuetype t;
    if (napi_typeof(env, value, &t) != napi_ok) return NULL;
    if (t == napi_string) {
        size_t got = 0;
        /* First straight into the stack buffer: if it stopped well short of the end (a cut
         * never leaves more than one UTF-8 sequence, 4 bytes, unused) the string was whole. */
        if (napi_get_value_string_utf8(env, value, (char *)stack + head, cap - head, &got) != napi_ok) return NULL;
        if (got + 4 < cap - head - 1) {
            buf = stack;
        } else {
            if (napi_get_value_string_utf8(env, value, NULL, 0, &len) != napi_ok) return NULL;
            buf = malloc(head + len + 1);
            if (!buf) return NULL;
            if (napi_get_value_string_utf8(env, value, (char *)buf + head, len + 1, &got) != napi_ok) {
                free(buf);
                return NULL;
            }
        }
        len = got;
    } else if (get_bytes(env, value, &bytes, &len)) {
        buf = head + len <= cap ? stack : malloc(head + len + 1);
        if (!buf) return NULL;
        if (len) memcpy(buf + head, bytes, len);
    } else {
        return NULL;
    }
    if (head) buf[0] = (uint8_t)tag;
    *out_len = head + len;
    return buf;
}

static void payload_free(uint8_t *buf, const uint8_t *stack) {
    if (buf != stack) free(buf);
}

/* send(to, tag, value, fd?): cluster_send / cluster_send_fd. */
static napi_value js_send(napi_env env, napi_callback_info info) {
    napi_value argv[4];
    uint32_t to;
    int32_t tag, fd = -1;
    size_t len = 0;
    uint8_t stack[SEND_STACK];
    if (!owner(env) || !get_args(env, info, 4, argv, NULL)) return NULL;
    if (!get_u32(env, argv[0], &to) || !get_i32(env, argv[1], &tag) || tag > 255)
        return throw_type(env, "send(to, tag, value, fd)");
    if (!is_nullish(env, argv[3]) && (!get_i32(env, argv[3], &fd) || fd < 0))
        return throw_type(env, "the fd to pass must be a non-negative integer");
    uint8_t *buf = build_payload(env, tag, argv[2], stack, sizeof stack, &len);
    if (!buf) return throw_type(env, "a message is a Buffer, a TypedArray, an ArrayBuffer or a string");
    int32_t rc = fd >= 0 ? cluster_send_fd(to, buf, len, fd) : cluster_send(to, buf, len);
    payload_free(buf, stack);
    return rc_result(env, rc);
}

/* broadcast(tag, value). */
static napi_value js_broadcast(napi_env env, napi_callback_info info) {
    napi_value argv[2];
    int32_t tag;
    size_t len = 0;
    if (!owner(env) || !get_args(env, info, 2, argv, NULL)) return NULL;
    if (!get_i32(env, argv[0], &tag) || tag > 255) return throw_type(env, "broadcast(tag, value)");
    uint8_t stack[SEND_STACK];
    uint8_t *buf = build_payload(env, tag, argv[1], stack, sizeof stack, &len);
    if (!buf) return throw_type(env, "a message is a Buffer, a TypedArray, an ArrayBuffer or a string");
    int32_t rc = cluster_broadcast(buf, len);
    payload_free(buf, stack);
    return rc_result(env, rc);
}

static napi_value js_conn_done(napi_env env, napi_callback_info info) {
    (void)info;
    if (!owner(env)) return NULL;
    return rc_result(env, cluster_conn_done());
}

static napi_value js_ready(napi_env env, napi_callback_info info) {
    (void)info;
    if (!owner(env)) return NULL;
    return rc_result(env, cluster_ready());
}

static napi_value js_strerror(napi_env env, napi_callback_info info) {
    napi_value argv[1], s = NULL;
    int32_t rc;
    if (!get_args(env, info, 1, argv, NULL)) return NULL;
    if (!get_i32(env, argv[0], &rc)) return throw_type(env, "strerror expects an integer");
    napi_create_string_utf8(env, cluster_strerror(rc), NAPI_AUTO_LENGTH, &s);
    return s;
}

/* ---------------------------------------------------------------------------------------- */
/* Logging                                                                                   */

static void log_free(logrec_t *r) {
    if (!r) return;
    free(r->target);
    free(r->message);
    free(r);
}

/* The library's log sink: any thread. Queues the record for the JS thread. */
static void on_log(void *userdata, int32_t level, const char *target, const char *message) {
    (void)userdata;
    napi_threadsafe_function tsfn = g.log_tsfn;
    if (!tsfn) return;
    logrec_t *r = calloc(1, sizeof *r);
    if (!r) return;
    r->level = level;
    r->target = strdup(target ? target : "");
    r->message = strdup(message ? message : "");
    if (!r->target || !r->message) {
        log_free(r);
        return;
    }
    if (pthread_equal(pthread_self(), g.js_thread)) {
        /* The JS thread, maybe inside a library call that holds its lock: queue it; the pump
         * hands it to JS after the dispatch turn (in order with the events, never lost at exit). */
        if (g.nlog == g.caplog) {
            size_t cap = g.caplog ? g.caplog * 2 : 16;
            logrec_t **q = realloc(g.logq, cap * sizeof *q);
            if (!q) {
                log_free(r);
                return;
            }
            g.logq = q;
            g.caplog = cap;
        }
        g.logq[g.nlog++] = r;
        return;
    }
    if (napi_call_threadsafe_function(tsfn, r, napi_tsfn_nonblocking) != napi_ok) log_free(r);
}

/* Hands the records queued on the JS thread to the JS logger. */
static void flush_logs(void) {
    napi_env env = g.env;
    napi_handle_scope scope;
    bool pending = false;
    if (g.nlog == 0) return;
    if (env && napi_is_exception_pending(env, &pending) == napi_ok && pending) return; /* later */
    if (!env || !g.logger || napi_open_handle_scope(env, &scope) != napi_ok) {
        for (size_t i = 0; i < g.nlog; i++) log_free(g.logq[i]);
        g.nlog = 0;
        return;
    }
    /* Take the batch first: the logger may run code that logs again. */
    size_t n = g.nlog;
    logrec_t **batch = malloc(n * sizeof *batch);
    if (!batch) {
        napi_close_handle_scope(env, scope);
        return;
    }
    memcpy(batch, g.logq, n * sizeof *batch);
    g.nlog = 0;
    for (size_t i = 0; i < n; i++) {
        logrec_t *r = batch[i];
        napi_value fn, recv, args[3], result;
        if (g.logger && napi_get_reference_value(env, g.logger, &fn) == napi_ok && fn &&
            napi_get_global(env, &recv) == napi_ok && napi_create_int32(env, r->level, &args[0]) == napi_ok &&
            napi_create_string_utf8(env, r->target, NAPI_AUTO_LENGTH, &args[1]) == napi_ok &&
            napi_create_string_utf8(env, r->message, NAPI_AUTO_LENGTH, &args[2]) == napi_ok) {
            if (napi_make_callback(env, g.actx, recv, fn, 3, args, &result) != napi_ok) raise_pending(env);
        }
        log_free(r);
    }
    free(batch);
    napi_close_handle_scope(env, scope);
}

static void log_call_js(napi_env env, napi_value js_cb, void *context, void *data) {
    logrec_t *r = data;
    (void)js_cb;
    (void)context;
    if (env && g.logger) {
        napi_value fn, recv, args[3], result;
        if (napi_get_reference_value(env, g.logger, &fn) == napi_ok && fn &&
            napi_get_global(env, &recv) == napi_ok && napi_create_int32(env, r->level, &args[0]) == napi_ok &&
            napi_create_string_utf8(env, r->target, NAPI_AUTO_LENGTH, &args[1]) == napi_ok &&
            napi_create_string_utf8(env, r->message, NAPI_AUTO_LENGTH, &args[2]) == napi_ok) {
            if (napi_call_function(env, recv, fn, 3, args, &result) != napi_ok) raise_pending(env);
        }
    }
    log_free(r);
}

/* setLogger(fn | null). */
static napi_value js_set_logger(napi_env env, napi_callback_info info) {
    napi_value argv[1];
    napi_valuetype t;
    if (!owner(env) || !get_args(env, info, 1, argv, NULL)) return NULL;
    if (napi_typeof(env, argv[0], &t) != napi_ok) return NULL;
    if (t != napi_function && t != napi_null && t != napi_undefined)
        return throw_type(env, "setLogger expects a function or null");
    if (t == napi_function) {
        napi_ref ref;
        if (napi_create_reference(env, argv[0], 1, &ref) != napi_ok) return NULL;
        if (g.logger) napi_delete_reference(env, g.logger);
        g.logger = ref;
        int32_t rc = cluster_set_log_callback(on_log, NULL);
        if (rc < 0) return throw_rc(env, rc, NULL);
    } else {
        cluster_set_log_callback(NULL, NULL);
        if (g.logger) napi_delete_reference(env, g.logger);
        g.logger = NULL;
    }
    return undefined(env);
}

/* ---------------------------------------------------------------------------------------- */
/* Module                                                                                    */

static void on_env_cleanup(void *arg) {
    (void)arg;
    cluster_set_log_callback(NULL, NULL); /* before the thread-safe function goes away */
    g.log_tsfn = NULL;
    for (size_t i = 0; i < g.nlog; i++) log_free(g.logq[i]);
    g.nlog = 0;
    if (g.pump) pump_close(g.pump);
    discard_events();
    free(g.evs);
    g.evs = NULL;
    g.cap = 0;
    free(g.arena);
    g.arena = NULL;
    g.acap = 0;
    g.env = NULL;
}

static bool set_fn(napi_env env, napi_value exports, const char *name, napi_callback cb) {
    napi_value fn;
    return napi_create_function(env, name, NAPI_AUTO_LENGTH, cb, NULL, &fn) == napi_ok &&
           napi_set_named_property(env, exports, name, fn) == napi_ok;
}

static bool set_const(napi_env env, napi_value obj, const char *name, int64_t value) {
    napi_value v;
    return napi_create_int64(env, value, &v) == napi_ok && napi_set_named_property(env, obj, name, v) == napi_ok;
}

/* claim(): makes this environment (the main thread's: lib/index.js checks) the runtime's
 * owner. Returns false if another environment owns it already. */
static napi_value js_claim(napi_env env, napi_callback_info info) {
    napi_value v, name;
    (void)info;
    if (g.env && g.env != env) {
        napi_get_boolean(env, false, &v);
        return v;
    }
    if (!g.env) {
        if (napi_get_uv_event_loop(env, &g.loop) != napi_ok) return NULL;
        if (napi_create_string_utf8(env, "rcluster log", NAPI_AUTO_LENGTH, &name) != napi_ok ||
            napi_create_threadsafe_function(env, NULL, NULL, name, 0, 1, NULL, NULL, NULL, log_call_js, &g.log_tsfn) !=
                napi_ok)
            return NULL;
        napi_unref_threadsafe_function(env, g.log_tsfn); /* logging never keeps the process alive */
        /* Registered after the thread-safe function's own hook, so it runs before it. */
        if (napi_add_env_cleanup_hook(env, on_env_cleanup, NULL) != napi_ok) return NULL;
        g.js_thread = pthread_self();
        g.env = env;
    }
    napi_get_boolean(env, true, &v);
    return v;
}

NAPI_MODULE_INIT(/* napi_env env, napi_value exports */) {
    napi_value c;
    if (napi_create_object(env, &c) != napi_ok) return NULL;
#define C(name) if (!set_const(env, c, #name, name)) return NULL
    C(RCLUSTER_ABI_VERSION);
    C(CLUSTER_OK); C(CLUSTER_E_INVAL); C(CLUSTER_E_ROLE); C(CLUSTER_E_NOWORKER); C(CLUSTER_E_AGAIN);
    C(CLUSTER_E_TOOBIG); C(CLUSTER_E_CLOSED); C(CLUSTER_E_THREADS); C(CLUSTER_E_STATE); C(CLUSTER_E_SYS);
    C(CLUSTER_E_PANIC); C(CLUSTER_E_TIMEOUT);
    C(CLUSTER_MODE_FORK); C(CLUSTER_MODE_EXEC);
    C(CLUSTER_POLICY_ROUND_ROBIN); C(CLUSTER_POLICY_LEAST_CONNECTIONS); C(CLUSTER_POLICY_STICKY);
    C(CLUSTER_POLICY_SHARED); C(CLUSTER_POLICY_REUSEPORT);
    C(CLUSTER_CHANNEL_RCLUSTER); C(CLUSTER_CHANNEL_NODE_JSON); C(CLUSTER_CHANNEL_NODE_ADVANCED);
    C(CLUSTER_EVENT_FORK); C(CLUSTER_EVENT_ONLINE); C(CLUSTER_EVENT_READY); C(CLUSTER_EVENT_MESSAGE);
    C(CLUSTER_EVENT_DISCONNECT); C(CLUSTER_EVENT_EXIT); C(CLUSTER_EVENT_CONNECTION); C(CLUSTER_EVENT_SHUTDOWN);
    C(CLUSTER_EVENT_DRAIN); C(CLUSTER_EVENT_ERROR); C(CLUSTER_EVENT_SLOT_FAILED); C(CLUSTER_EVENT_RELOADED);
    C(CLUSTER_WORKER_STARTING); C(CLUSTER_WORKER_ONLINE); C(CLUSTER_WORKER_READY);
    C(CLUSTER_WORKER_DISCONNECTING); C(CLUSTER_WORKER_DEAD);
    C(EV_CLOSED); C(EV_FAILED);
#undef C
    if (napi_set_named_property(env, exports, "constants", c) != napi_ok) return NULL;
    if (!set_fn(env, exports, "isWorker", js_is_worker) || !set_fn(env, exports, "workerId", js_worker_id) ||
        !set_fn(env, exports, "strerror", js_strerror) || !set_fn(env, exports, "isRunning", js_is_running) ||
        !set_fn(env, exports, "claim", js_claim) || !set_fn(env, exports, "setHandler", js_set_handler) ||
        !set_fn(env, exports, "primaryStart", js_primary_start) || !set_fn(env, exports, "workerStart", js_worker_start) ||
        !set_fn(env, exports, "setRef", js_set_ref) || !set_fn(env, exports, "fork", js_fork) ||
        !set_fn(env, exports, "workers", js_workers) || !set_fn(env, exports, "workerInfo", js_worker_info) ||
        !set_fn(env, exports, "kill", js_kill) || !set_fn(env, exports, "disconnect", js_disconnect) ||
        !set_fn(env, exports, "closeChannel", js_close_channel) ||
        !set_fn(env, exports, "forkExec", js_fork_exec) ||
        !set_fn(env, exports, "takeStdio", js_take_stdio) ||
        !set_fn(env, exports, "reload", js_reload) || !set_fn(env, exports, "scale", js_scale) ||
        !set_fn(env, exports, "shutdown", js_shutdown) || !set_fn(env, exports, "localPort", js_local_port) ||
        !set_fn(env, exports, "stats", js_stats) || !set_fn(env, exports, "send", js_send) ||
        !set_fn(env, exports, "broadcast", js_broadcast) || !set_fn(env, exports, "connDone", js_conn_done) ||
        !set_fn(env, exports, "ready", js_ready) || !set_fn(env, exports, "setLogger", js_set_logger))
        return NULL;
    return exports;
}
