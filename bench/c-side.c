/*
 * The C side of a benchmark pairing, on the C ABI (include/iris_rpc.h); see bench/README.md
 * for the contract. Both sides in one program:
 *
 *   c-side serve  --port H:P --auth S --key F --cert F [--no-cipher] [--security MODE]
 *   c-side client --address H:P --auth S --key F --cert F [--no-cipher] [--security MODE]
 *          --workload events|requests|openloop|idle [--size B] [--duration S] [--inflight N]
 *          [--rate R] [--connections N] [--concurrency N]
 *
 * Built by bench/run: cc -O2 -Iinclude bench/c-side.c libiris_rpc.a -lpthread -ldl -lm.
 *
 * There is no JSON parser here: the contract's messages are tiny, fixed and written by the
 * sides themselves, so we only look for the one field we need (`"op":"..."` and a number
 * such as `"ack":K` or `"n":N`) with memmem/strtoull. The results are printed with printf.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "iris_rpc.h"

/* ---- helpers -------------------------------------------------------------------------- */

static void die(const char *what, iris_result r) {
    fprintf(stderr, "c-side: %s: %s: %s\n", what, iris_result_text(r), iris_last_error_message());
    exit(1);
}

static void fail(const char *what) {
    fprintf(stderr, "c-side: %s\n", what);
    exit(1);
}

#define CHECK(what, call)                                                                        \
    do {                                                                                         \
        iris_result r_ = (call);                                                                 \
        if (r_ != IRIS_OK) die(what, r_);                                                        \
    } while (0)

static double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static void sleep_until_us(double t) {
    struct timespec ts;
    ts.tv_sec = (time_t)(t / 1e6);
    ts.tv_nsec = (long)((t - (double)ts.tv_sec * 1e6) * 1e3);
    if (ts.tv_nsec >= 1000000000L) ts.tv_nsec = 999999999L;
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

/* True if the message `json` has `"op":"<op>"`. */
static int has_op(const char *json, size_t len, const char *op) {
    char key[64];
    int k = snprintf(key, sizeof key, "\"op\":\"%s\"", op);
    return k > 0 && (size_t)k < sizeof key && memmem(json, len, key, (size_t)k) != NULL;
}

/* The unsigned number after `"<name>":` in `json`, or `dflt` when absent or not a number. */
static uint64_t num_field(const char *json, size_t len, const char *name, uint64_t dflt) {
    char key[64];
    int k = snprintf(key, sizeof key, "\"%s\":", name);
    if (k <= 0 || (size_t)k >= sizeof key) return dflt;
    const char *p = memmem(json, len, key, (size_t)k);
    if (p == NULL) return dflt;
    p += k;
    while (p < json + len && *p == ' ') p++;
    if (p >= json + len || *p < '0' || *p > '9') return dflt;
    return strtoull(p, NULL, 10);
}

/* `{"op":"<op>","d":"xxx.."}`, exactly `size` bytes (or the shortest such object). */
static char *padded_body(const char *op, size_t size) {
    size_t head = strlen(op) + 16; /* {"op":"","d":" and the closing "} */
    size_t fill = size > head ? size - head : 0;
    char *s = malloc(head + fill + 1);
    if (s == NULL) fail("out of memory");
    int k = sprintf(s, "{\"op\":\"%s\",\"d\":\"", op);
    memset(s + k, 'x', fill);
    strcpy(s + k + fill, "\"}");
    return s;
}

/* Reads stdin until it ends (the driver closes it to stop a side). */
static void wait_stdin_end(void) {
    char buf[256];
    while (fread(buf, 1, sizeof buf, stdin) > 0) {
    }
}

static void print_num(const char *name, double x, int last) {
    if (isfinite(x))
        printf("\"%s\":%.17g%s", name, x, last ? "" : ",");
    else
        printf("\"%s\":null%s", name, last ? "" : ",");
}

/* ---- arguments ------------------------------------------------------------------------ */

static struct {
    const char *port, *address, *auth, *key, *cert, *workload;
    int cipher;
    const char *security; /* legacy, prefer-v2 or require-v2; NULL keeps the default */
    size_t size, inflight, connections, concurrency;
    double duration, rate;
} A = {"127.0.0.1:0", NULL, "bench-secret", NULL, NULL, NULL, 1, NULL, 64, 1, 5000, 256, 1.5, 1000};

static double number_arg(const char *name, const char *v, double min) {
    char *end = NULL;
    double x = strtod(v, &end);
    if (end == v || *end != '\0' || !isfinite(x) || x < min) {
        fprintf(stderr, "c-side: bad value for %s: %s\n", name, v);
        exit(2);
    }
    return x;
}

static void parse_args(int argc, char **argv) {
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--no-cipher") == 0) {
            A.cipher = 0;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "c-side: %s needs a value\n", a);
            exit(2);
        }
        const char *v = argv[++i];
        if (strcmp(a, "--port") == 0) A.port = v;
        else if (strcmp(a, "--address") == 0) A.address = v;
        else if (strcmp(a, "--auth") == 0) A.auth = v;
        else if (strcmp(a, "--key") == 0) A.key = v;
        else if (strcmp(a, "--cert") == 0) A.cert = v;
        else if (strcmp(a, "--security") == 0) A.security = v;
        else if (strcmp(a, "--workload") == 0) A.workload = v;
        else if (strcmp(a, "--size") == 0) A.size = (size_t)number_arg(a, v, 16);
        else if (strcmp(a, "--duration") == 0) A.duration = number_arg(a, v, 0.01);
        else if (strcmp(a, "--inflight") == 0) A.inflight = (size_t)number_arg(a, v, 1);
        else if (strcmp(a, "--rate") == 0) A.rate = number_arg(a, v, 1);
        else if (strcmp(a, "--connections") == 0) A.connections = (size_t)number_arg(a, v, 1);
        else if (strcmp(a, "--concurrency") == 0) A.concurrency = (size_t)number_arg(a, v, 1);
        else {
            fprintf(stderr, "c-side: unknown argument %s\n", a);
            exit(2);
        }
    }
}

static iris_options *options(const char *designation) {
    iris_options *o = NULL;
    CHECK("options", iris_options_new(A.auth, &o));
    CHECK("designation", iris_options_set_string(o, "designation", designation));
    if (!A.cipher) CHECK("cipher option", iris_options_set_bool(o, "cipher", false));
    if (A.security != NULL) CHECK("security option", iris_options_set_string(o, "security", A.security));
    if (A.key != NULL && A.cert != NULL)
        CHECK("certificates", iris_options_set_certificates(o, A.key, A.cert, NULL));
    return o;
}

/* ---- server side ---------------------------------------------------------------------- */

static iris_server *_Atomic server;
static uint64_t count, ack_every = UINT64_MAX; /* only touched on the callback thread */

static void send_to(const char *uuid, const char *op, uint64_t n) {
    char msg[96];
    snprintf(msg, sizeof msg, "{\"op\":\"%s\",\"n\":%llu}", op, (unsigned long long)n);
    iris_server *s = atomic_load(&server);
    if (s != NULL && uuid != NULL) iris_server_dispatch_to(s, uuid, msg, 0);
}

static void on_server_event(void *user_data, const iris_event *ev) {
    (void)user_data;
    uint32_t kind = iris_event_get_kind(ev);
    if (kind == IRIS_EVENT_MESSAGE) {
        size_t len = 0;
        const char *json = iris_event_json(ev, &len);
        if (json == NULL) return;
        if (has_op(json, len, "bench.ev")) {
            if (++count % ack_every == 0) send_to(iris_event_uuid(ev), "bench.ack", count);
        } else if (has_op(json, len, "bench.start")) {
            count = 0;
            ack_every = num_field(json, len, "ack", UINT64_MAX);
            if (ack_every == 0) ack_every = UINT64_MAX;
        } else if (has_op(json, len, "bench.end")) {
            send_to(iris_event_uuid(ev), "bench.done", count);
        }
    } else if (kind == IRIS_EVENT_REQUEST) {
        iris_request *req = NULL;
        if (iris_event_take_request(ev, &req) != IRIS_OK) return;
        const char *op = iris_request_op(req);
        if (op != NULL && strcmp(op, "bench.echo") == 0) iris_request_respond(req, NULL, "{\"ok\":true}");
        iris_request_free(req); /* unanswered: "No such handler" */
    }
}

static int serve(void) {
    iris_options *o = options("bench-server");
    CHECK("port option", iris_options_set_string(o, "port", A.port));
    iris_server *s = NULL;
    CHECK("listen", iris_server_bind(o, on_server_event, NULL, NULL, &s));
    iris_options_free(o);
    atomic_store(&server, s);
    printf("{\"ready\":true,\"port\":%u,\"pid\":%ld}\n", (unsigned)iris_server_port(s), (long)getpid());
    fflush(stdout);
    wait_stdin_end();
    atomic_store(&server, NULL);
    iris_server_free(s);
    return 0;
}

/* ---- client side ---------------------------------------------------------------------- */

static iris_client *client;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv;

static void signal_main(void) {
    pthread_mutex_lock(&mu);
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
}

/* Waits on `cv` (mutex held) until the absolute monotonic time `deadline_us`; 0 on timeout. */
static int wait_main(double deadline_us) {
    struct timespec ts;
    ts.tv_sec = (time_t)(deadline_us / 1e6);
    ts.tv_nsec = (long)((deadline_us - (double)ts.tv_sec * 1e6) * 1e3);
    if (ts.tv_nsec >= 1000000000L) ts.tv_nsec = 999999999L;
    return pthread_cond_timedwait(&cv, &mu, &ts) != ETIMEDOUT;
}

/* Latency samples in microseconds, appended on the callback thread only. */
static double *lat;
static size_t lat_n, lat_cap;

static void record(double us) {
    if (lat_n == lat_cap) {
        size_t cap = lat_cap ? lat_cap * 2 : 1 << 16;
        double *p = cap <= (1u << 26) ? realloc(lat, cap * sizeof *p) : NULL;
        if (p == NULL) return; /* full: drop the sample, as the Node client does */
        lat = p;
        lat_cap = cap;
    }
    lat[lat_n++] = us;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Prints p50/p99/p99.9/max of the samples (exact, as the Node client), the last fields. */
static void print_percentiles(void) {
    qsort(lat, lat_n, sizeof *lat, cmp_double);
    const double qs[] = {0.5, 0.99, 0.999};
    const char *names[] = {"p50_us", "p99_us", "p999_us"};
    for (int i = 0; i < 3; i++) {
        double x = NAN;
        if (lat_n > 0) {
            double k = ceil(qs[i] * (double)lat_n) - 1;
            size_t j = k < 0 ? 0 : (size_t)k;
            x = lat[j < lat_n ? j : lat_n - 1];
        }
        print_num(names[i], x, 0);
    }
    print_num("max_us", lat_n ? lat[lat_n - 1] : NAN, 1);
}

/* events: credit-based flow, at most `window` events (~4 MiB of bodies) unacknowledged. */
static _Atomic uint64_t acked, done_n;
static _Atomic int finished;

static void on_events_event(void *user_data, const iris_event *ev) {
    (void)user_data;
    if (iris_event_get_kind(ev) != IRIS_EVENT_MESSAGE) return;
    size_t len = 0;
    const char *json = iris_event_json(ev, &len);
    if (json == NULL) return;
    if (has_op(json, len, "bench.ack")) {
        atomic_store(&acked, num_field(json, len, "n", 0));
        signal_main();
    } else if (has_op(json, len, "bench.done")) {
        atomic_store(&done_n, num_field(json, len, "n", 0));
        atomic_store(&finished, 1);
        signal_main();
    }
}

static void events(void) {
    size_t size = A.size;
    uint64_t window = (4u << 20) / size;
    window = window < 64 ? 64 : window > 65536 ? 65536 : window;
    uint64_t ack = window / 4 ? window / 4 : 1;
    char *body = padded_body("bench.ev", size);
    size_t body_len = strlen(body);
    char msg[96];
    snprintf(msg, sizeof msg, "{\"op\":\"bench.start\",\"ack\":%llu}", (unsigned long long)ack);
    CHECK("dispatch bench.start", iris_client_dispatch(client, msg, 0, NULL));
    double start = now_us(), end = start + A.duration * 1e6;
    uint64_t sent = 0;
    for (;;) {
        if (sent - atomic_load(&acked) >= window) {
            pthread_mutex_lock(&mu);
            double deadline = now_us() + 30e6;
            while (sent - atomic_load(&acked) >= window) {
                if (!wait_main(deadline) && now_us() >= deadline)
                    fail("no acknowledgement from the server for 30 s");
            }
            pthread_mutex_unlock(&mu);
        }
        CHECK("dispatch bench.ev", iris_client_dispatch(client, body, body_len, NULL));
        sent++;
        if (sent % 256 == 0 && now_us() >= end) break;
    }
    snprintf(msg, sizeof msg, "{\"op\":\"bench.end\",\"sent\":%llu}", (unsigned long long)sent);
    CHECK("dispatch bench.end", iris_client_dispatch(client, msg, 0, NULL));
    pthread_mutex_lock(&mu);
    double deadline = now_us() + 60e6;
    while (!atomic_load(&finished)) {
        if (!wait_main(deadline) && now_us() >= deadline) fail("no bench.done from the server within 60 s");
    }
    pthread_mutex_unlock(&mu);
    double secs = (now_us() - start) / 1e6;
    double n = (double)atomic_load(&done_n);
    printf("{\"result\":{\"sent\":%llu,\"count\":%.0f,", (unsigned long long)sent, n);
    print_num("secs", secs, 0);
    printf("\"size\":%zu,", size);
    print_num("msgs_per_s", n / secs, 0);
    print_num("mb_per_s", n * (double)size / secs / 1e6, 1);
    printf("}}\n");
    free(body);
}

/* requests (closed loop) and openloop share the request body and the callback bookkeeping. */
static char *req_body;
static size_t req_len;
static double loop_end;
static _Atomic uint64_t errors, settled;
static _Atomic size_t active;

static void on_closed_response(void *user_data, iris_result r, const char *json, size_t len);

/* Sends the next request of one closed loop; `slot` holds its send time. 0 if it failed. */
static int send_closed(double *slot) {
    *slot = now_us();
    return iris_client_request(client, NULL, req_body, req_len, on_closed_response, slot, NULL) == IRIS_OK;
}

static void on_closed_response(void *user_data, iris_result r, const char *json, size_t len) {
    (void)json;
    (void)len;
    double *slot = user_data, t = now_us();
    if (r == IRIS_OK) record(t - *slot);
    else atomic_fetch_add(&errors, 1);
    /* A failed request ends its loop (as the Rust client), so a dead stream cannot spin. */
    if (r == IRIS_OK && t < loop_end && send_closed(slot)) return;
    if (atomic_fetch_sub(&active, 1) == 1) signal_main();
}

static void requests(void) {
    size_t inflight = A.inflight;
    double *slots = calloc(inflight, sizeof *slots);
    if (slots == NULL) fail("out of memory");
    double start = now_us();
    loop_end = start + A.duration * 1e6;
    atomic_store(&active, inflight);
    for (size_t i = 0; i < inflight; i++) {
        if (!send_closed(&slots[i])) {
            atomic_fetch_add(&errors, 1);
            if (atomic_fetch_sub(&active, 1) == 1) signal_main();
        }
    }
    pthread_mutex_lock(&mu);
    double deadline = loop_end + 60e6;
    while (atomic_load(&active) > 0) {
        if (!wait_main(deadline) && now_us() >= deadline) fail("requests did not settle in time");
    }
    pthread_mutex_unlock(&mu);
    double secs = (now_us() - start) / 1e6;
    printf("{\"result\":{\"count\":%zu,\"errors\":%llu,", lat_n, (unsigned long long)atomic_load(&errors));
    print_num("secs", secs, 0);
    printf("\"inflight\":%zu,", inflight);
    print_num("req_per_s", (double)lat_n / secs, 0);
    print_percentiles();
    printf("}}\n");
    free(slots);
}

static uint64_t open_total;

static void on_open_response(void *user_data, iris_result r, const char *json, size_t len) {
    (void)json;
    (void)len;
    const double *due = user_data;
    if (r == IRIS_OK) record(now_us() - *due);
    else atomic_fetch_add(&errors, 1);
    if (atomic_fetch_add(&settled, 1) + 1 == open_total) signal_main();
}

/* openloop: requests at fixed intended send times from this (main) thread, latency measured
 * from the intended time, so a late pacer shows up in it. */
static void open_loop(void) {
    double rate = A.rate, dur = A.duration * 1e6;
    double total_f = round(rate * dur / 1e6);
    uint64_t total = total_f < 1 ? 1 : (uint64_t)total_f;
    open_total = total;
    double interval = 1e6 / rate;
    double *due = malloc(total * sizeof *due);
    if (due == NULL) fail("out of memory");
    lat_cap = total; /* room for every sample up front: no realloc on the callback thread */
    lat = malloc(total * sizeof *lat);
    if (lat == NULL) fail("out of memory");
    double start = now_us();
    for (uint64_t i = 0; i < total; i++) {
        due[i] = start + (double)i * interval;
        if (due[i] > now_us()) sleep_until_us(due[i]);
        if (iris_client_request(client, NULL, req_body, req_len, on_open_response, &due[i], NULL) != IRIS_OK) {
            atomic_fetch_add(&errors, 1);
            if (atomic_fetch_add(&settled, 1) + 1 == total) signal_main();
        }
    }
    pthread_mutex_lock(&mu);
    double deadline = now_us() + dur + 60e6;
    while (atomic_load(&settled) < total) {
        if (!wait_main(deadline) && now_us() >= deadline) fail("open-loop requests did not settle in time");
    }
    pthread_mutex_unlock(&mu);
    double secs = (now_us() - start) / 1e6;
    printf("{\"result\":{\"count\":%zu,\"errors\":%llu,", lat_n, (unsigned long long)atomic_load(&errors));
    print_num("secs", secs, 0);
    print_num("rate", rate, 0);
    print_percentiles();
    printf("}}\n");
    free(due);
}

/* idle: N clients (each with its own random uuid), at most C handshaking at once: C worker
 * threads each connect one client at a time and wait for it. */
static _Atomic size_t next_conn, connected, failed;

static void *idle_worker(void *arg) {
    (void)arg;
    iris_options *o = options("bench-client");
    if (iris_options_add_address(o, A.address) != IRIS_OK) fail("bad --address");
    while (atomic_fetch_add(&next_conn, 1) < A.connections) {
        iris_client *c = NULL; /* NULL callback: pull mode, nobody pulls; held until exit */
        if (iris_client_connect(o, NULL, NULL, NULL, &c) == IRIS_OK && iris_client_wait_connected(c, 60000) == IRIS_OK)
            atomic_fetch_add(&connected, 1);
        else
            atomic_fetch_add(&failed, 1);
    }
    iris_options_free(o);
    return NULL;
}

static void idle(void) {
    size_t workers = A.concurrency < A.connections ? A.concurrency : A.connections;
    pthread_t *t = calloc(workers, sizeof *t);
    if (t == NULL) fail("out of memory");
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    double start = now_us();
    size_t started = 0;
    for (; started < workers; started++)
        if (pthread_create(&t[started], &attr, idle_worker, NULL) != 0) break;
    if (started == 0) fail("cannot start threads");
    for (size_t i = 0; i < started; i++) pthread_join(t[i], NULL);
    double secs = (now_us() - start) / 1e6;
    size_t n = atomic_load(&connected);
    printf("{\"result\":{\"connected\":%zu,\"failed\":%zu,", n, atomic_load(&failed));
    print_num("secs", secs, 0);
    print_num("handshakes_per_s", (double)n / secs, 1);
    printf("}}\n");
    fflush(stdout);
    wait_stdin_end();
    /* Exit without closing the clients one by one: that would only add time. */
    _exit(0);
}

static int run_client(void) {
    if (A.address == NULL) fail("client needs --address");
    if (A.workload == NULL) fail("client needs --workload");
    if (strcmp(A.workload, "idle") == 0) idle();
    int ev = strcmp(A.workload, "events") == 0, rq = strcmp(A.workload, "requests") == 0;
    int ol = strcmp(A.workload, "openloop") == 0;
    if (!ev && !rq && !ol) {
        fprintf(stderr, "c-side: unknown workload %s\n", A.workload);
        return 2;
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&cv, &ca);
    iris_options *o = options("bench-client");
    CHECK("address", iris_options_add_address(o, A.address));
    /* Callback mode (events other than bench.ack/bench.done are ignored); request callbacks
     * run on the same callback thread. */
    CHECK("connect", iris_client_connect(o, on_events_event, NULL, NULL, &client));
    iris_options_free(o);
    iris_result r = iris_client_wait_connected(client, 15000);
    if (r != IRIS_OK) die("could not connect within 15 s", r);
    req_body = padded_body("bench.echo", 64);
    req_len = strlen(req_body);
    if (ev) events();
    else if (rq) requests();
    else open_loop();
    fflush(stdout);
    iris_client_free(client);
    free(req_body);
    free(lat);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2 || (strcmp(argv[1], "serve") != 0 && strcmp(argv[1], "client") != 0)) {
        fprintf(stderr, "usage: c-side serve|client [options] (see bench/README.md)\n");
        return 2;
    }
    parse_args(argc, argv);
    return strcmp(argv[1], "serve") == 0 ? serve() : run_client();
}
