/* Helpers shared by the C test programs: checks, an event collector for callback mode, a
 * waiter for request callbacks, and a driver for tests/interop/legacy-peer.js (the legacy
 * Node package run as a child process).
 *
 * Every wait is bounded; a failed check is reported and the program continues, so one run
 * lists every failure. Each test prints "ok NAME" or "not ok NAME"; scripts/test-c counts
 * them. */
#ifndef IRIS_TEST_COMMON_H
#define IRIS_TEST_COMMON_H

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "iris_rpc.h"

extern char **environ;

static int test_failures;      /* failed checks in the current test */
static int total_failed_tests; /* tests with at least one failed check */

#define CHECK(cond)                                                                         \
    do {                                                                                    \
        if (!(cond)) {                                                                      \
            fprintf(stderr, "%s:%d: check failed: %s (last error: %s)\n", __FILE__, __LINE__, \
                    #cond, iris_last_error_message());                                      \
            test_failures++;                                                                \
        }                                                                                   \
    } while (0)

#define CHECK_RES(call, expected)                                                           \
    do {                                                                                    \
        iris_result r_ = (call);                                                            \
        if (r_ != (expected)) {                                                             \
            fprintf(stderr, "%s:%d: %s gave %d (%s), expected %s (last error: %s)\n",       \
                    __FILE__, __LINE__, #call, (int)r_, iris_result_text(r_), #expected,     \
                    iris_last_error_message());                                             \
            test_failures++;                                                                \
        }                                                                                   \
    } while (0)

#define CHECK_OK(call) CHECK_RES(call, IRIS_OK)

static void run_test(const char *name, void (*fn)(void)) {
    test_failures = 0;
    fprintf(stderr, "--- %s\n", name);
    fn();
    if (test_failures) {
        total_failed_tests++;
        printf("not ok %s\n", name);
    } else {
        printf("ok %s\n", name);
    }
    fflush(stdout);
}

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void deadline_in(struct timespec *ts, int ms) {
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

/* ---- events collected in callback mode --------------------------------------------------- */

#define MAX_EVENTS 256

typedef struct {
    uint32_t kind;
    char *uuid;
    char *address;
    char *designation;
    char *json;
    char *error_message;
    iris_result error_code;
    iris_side side; /* routers: which side */
    iris_request *request; /* taken in the callback when the collector is asked to */
} event_copy;

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    event_copy events[MAX_EVENTS];
    int count;
    int take_requests;
    int destroyed; /* times the destroy callback ran */
} collector;

static void collector_init(collector *c, int take_requests) {
    memset(c, 0, sizeof *c);
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    c->take_requests = take_requests;
}

static void event_copy_free(event_copy *e) {
    free(e->uuid);
    free(e->address);
    free(e->designation);
    free(e->json);
    free(e->error_message);
    iris_request_free(e->request);
    memset(e, 0, sizeof *e);
}

static void collector_destroy(collector *c) {
    for (int i = 0; i < c->count; i++) event_copy_free(&c->events[i]);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
}

/* iris_event_callback: copies what the tests look at. */
static void collect_event(void *user_data, const iris_event *ev) {
    collector *c = (collector *)user_data;
    event_copy e;
    memset(&e, 0, sizeof e);
    e.kind = iris_event_get_kind(ev);
    e.uuid = dup_or_null(iris_event_uuid(ev));
    e.address = dup_or_null(iris_event_address(ev));
    e.designation = dup_or_null(iris_event_designation(ev));
    e.json = dup_or_null(iris_event_json(ev, NULL));
    e.error_message = dup_or_null(iris_event_error_message(ev));
    e.error_code = iris_event_error_code(ev);
    e.side = iris_event_side(ev);
    pthread_mutex_lock(&c->mu);
    int take = c->take_requests;
    pthread_mutex_unlock(&c->mu);
    if (e.kind == IRIS_EVENT_REQUEST && take) {
        if (iris_event_take_request(ev, &e.request) != IRIS_OK) e.request = NULL;
    }
    pthread_mutex_lock(&c->mu);
    if (c->count < MAX_EVENTS) {
        c->events[c->count++] = e;
    } else {
        event_copy_free(&e);
    }
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

static void collector_destroyed(void *user_data) {
    collector *c = (collector *)user_data;
    pthread_mutex_lock(&c->mu);
    c->destroyed++;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

/* Waits for the first event of `kind` at index >= *from whose json contains `needle` (when
 * not NULL); returns its index and moves *from past it, or -1 on timeout. */
static int collector_wait(collector *c, uint32_t kind, const char *needle, int *from, int ms) {
    struct timespec dl;
    deadline_in(&dl, ms);
    int found = -1;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        for (int i = *from; i < c->count; i++) {
            event_copy *e = &c->events[i];
            if (e->kind == kind && (!needle || (e->json && strstr(e->json, needle)))) {
                found = i;
                break;
            }
        }
        if (found >= 0) break;
        if (pthread_cond_timedwait(&c->cv, &c->mu, &dl) == ETIMEDOUT) break;
    }
    if (found >= 0) *from = found + 1;
    pthread_mutex_unlock(&c->mu);
    return found;
}

/* Takes ownership of a collected request (NULL if none). */
static iris_request *collector_take_request(collector *c, int index) {
    pthread_mutex_lock(&c->mu);
    iris_request *r = c->events[index].request;
    c->events[index].request = NULL;
    pthread_mutex_unlock(&c->mu);
    return r;
}

/* ---- request outcomes (iris_response_callback) ------------------------------------------ */

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int calls;
    iris_result result;
    char *json;
} outcome;

static void outcome_init(outcome *o) {
    memset(o, 0, sizeof *o);
    pthread_mutex_init(&o->mu, NULL);
    pthread_cond_init(&o->cv, NULL);
}

static void outcome_destroy(outcome *o) {
    free(o->json);
    pthread_mutex_destroy(&o->mu);
    pthread_cond_destroy(&o->cv);
}

static void on_response(void *user_data, iris_result result, const char *json, size_t len) {
    outcome *o = (outcome *)user_data;
    pthread_mutex_lock(&o->mu);
    o->calls++;
    o->result = result;
    free(o->json);
    o->json = strndup(json, len);
    pthread_cond_broadcast(&o->cv);
    pthread_mutex_unlock(&o->mu);
}

/* Waits until the callback ran; returns the number of calls so far. */
static int outcome_wait(outcome *o, int ms) {
    struct timespec dl;
    deadline_in(&dl, ms);
    pthread_mutex_lock(&o->mu);
    while (o->calls == 0) {
        if (pthread_cond_timedwait(&o->cv, &o->mu, &dl) == ETIMEDOUT) break;
    }
    int calls = o->calls;
    pthread_mutex_unlock(&o->mu);
    return calls;
}

/* Options for a client of 127.0.0.1:`port` named `uuid`; the caller may set more, and frees
 * them. */
static iris_options *client_options(const char *secret, int port, const char *uuid) {
    char address[64];
    snprintf(address, sizeof address, "127.0.0.1:%d", port);
    iris_options *o = NULL;
    CHECK_OK(iris_options_new(secret, &o));
    CHECK_OK(iris_options_add_address(o, address));
    CHECK_OK(iris_options_set_string(o, "uuid", uuid));
    return o;
}

/* A client with default options but its uuid, its events left unread (pull mode); NULL when
 * it cannot start. */
static iris_client *default_client(const char *secret, int port, const char *uuid) {
    iris_options *o = client_options(secret, port, uuid);
    iris_client *c = NULL;
    CHECK_OK(iris_client_connect(o, NULL, NULL, NULL, &c));
    iris_options_free(o);
    return c;
}

/* A blocking request from `c` to its only stream: IRIS_OK when the answer's JSON text is
 * exactly `want`, else the failure (IRIS_ERR_PROTOCOL for a wrong answer). */
static iris_result request_expect(const iris_client *c, const char *json, const char *want) {
    char *resp = NULL;
    iris_result r = iris_client_request_wait(c, NULL, json, 0, &resp, NULL);
    if (r == IRIS_OK && (!resp || strcmp(resp, want) != 0)) {
        fprintf(stderr, "request %s: answer %s, expected %s\n", json, resp ? resp : "(none)", want);
        r = IRIS_ERR_PROTOCOL;
    }
    iris_string_free(resp);
    return r;
}

/* ---- certificates and ports --------------------------------------------------------------- */

static char *key_pem, *cert_pem;

static void make_certificates(void) {
    if (iris_self_signed_pem(&key_pem, &cert_pem) != IRIS_OK) {
        fprintf(stderr, "cannot generate certificates: %s\n", iris_last_error_message());
        exit(2);
    }
}

static void free_certificates(void) {
    iris_string_free(key_pem);
    iris_string_free(cert_pem);
    key_pem = cert_pem = NULL;
}

/* A port free right now on 127.0.0.1 (the legacy server cannot bind port 0 itself). */
static int free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    int port = -1;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0) close(fd);
    return port;
}

/* ---- JSON text building ------------------------------------------------------------------ */

/* Appends `s` as a JSON string literal to buf (size cap). */
static void json_append_string(char *buf, size_t cap, const char *s) {
    size_t n = strlen(buf);
    if (n + 1 < cap) buf[n++] = '"';
    for (; *s && n + 8 < cap; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            buf[n++] = '\\';
            buf[n++] = (char)ch;
        } else if (ch == '\n') {
            buf[n++] = '\\';
            buf[n++] = 'n';
        } else if (ch < 0x20) {
            n += (size_t)snprintf(buf + n, cap - n, "\\u%04x", ch);
        } else {
            buf[n++] = (char)ch;
        }
    }
    if (n + 1 < cap) buf[n++] = '"';
    buf[n] = '\0';
}

static void json_appendf(char *buf, size_t cap, const char *fmt, ...) {
    size_t n = strlen(buf);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + n, cap - n, fmt, ap);
    va_end(ap);
}

/* ---- the legacy peer ---------------------------------------------------------------------- */

typedef struct {
    pid_t pid;
    int in_fd;  /* its stdin */
    int out_fd; /* its stdout */
    char buf[1 << 16];
    size_t len;
} legacy_peer;

#ifndef LEGACY_PEER_JS
#define LEGACY_PEER_JS "tests/interop/legacy-peer.js"
#endif

/* Starts argv[0] (searched in PATH) with its stdin and stdout on pipes; its stderr stays
 * ours. Returns 0 on success. Any line-speaking child can be driven as a legacy_peer. */
static int child_spawn(legacy_peer *p, char *const argv[]) {
    int to_child[2], from_child[2];
    if (pipe2(to_child, O_CLOEXEC) != 0) return -1;
    if (pipe2(from_child, O_CLOEXEC) != 0) {
        close(to_child[0]);
        close(to_child[1]);
        return -1;
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, to_child[0], 0);
    posix_spawn_file_actions_adddup2(&fa, from_child[1], 1);
    int rc = posix_spawnp(&p->pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(to_child[0]);
    close(from_child[1]);
    if (rc != 0) {
        close(to_child[1]);
        close(from_child[0]);
        p->pid = 0;
        fprintf(stderr, "cannot start %s: %s\n", argv[0], strerror(rc));
        return -1;
    }
    p->in_fd = to_child[1];
    p->out_fd = from_child[0];
    p->len = 0;
    return 0;
}

/* Starts `node legacy-peer.js CONFIG`; CONFIG gets key and cert added. Returns 0 on success. */
static int legacy_start(legacy_peer *p, const char *config_fields) {
    static char config[16384];
    config[0] = '\0';
    json_appendf(config, sizeof config, "{%s,\"key\":", config_fields);
    json_append_string(config, sizeof config, key_pem);
    json_appendf(config, sizeof config, ",\"cert\":");
    json_append_string(config, sizeof config, cert_pem);
    json_appendf(config, sizeof config, "}");

    const char *node = getenv("NODE") ? getenv("NODE") : "node";
    char *argv[] = {(char *)node, (char *)LEGACY_PEER_JS, config, NULL};
    return child_spawn(p, argv);
}

/* Reads the next stdout line containing `needle` into line (cap bytes); 0 on success, -1 on
 * timeout or end of output. Lines without the needle are skipped. */
static int legacy_wait(legacy_peer *p, const char *needle, char *line, size_t cap, int ms) {
    long long deadline = now_ms() + ms;
    for (;;) {
        char *nl;
        while ((nl = memchr(p->buf, '\n', p->len)) != NULL) {
            size_t n = (size_t)(nl - p->buf);
            int match = 0;
            *nl = '\0';
            if (strstr(p->buf, needle)) {
                match = 1;
                if (line) snprintf(line, cap, "%s", p->buf);
            }
            memmove(p->buf, nl + 1, p->len - n - 1);
            p->len -= n + 1;
            if (match) return 0;
        }
        long long left = deadline - now_ms();
        if (left <= 0) return -1;
        struct pollfd pfd = {p->out_fd, POLLIN, 0};
        int pr = poll(&pfd, 1, (int)left);
        if (pr < 0 && errno == EINTR) continue;
        if (pr <= 0) return -1;
        if (p->len == sizeof p->buf) p->len = 0; /* an absurdly long line: drop it */
        ssize_t r = read(p->out_fd, p->buf + p->len, sizeof p->buf - p->len);
        if (r <= 0) return -1;
        p->len += (size_t)r;
    }
}

static void legacy_send(legacy_peer *p, const char *command_json) {
    size_t n = strlen(command_json);
    if (write(p->in_fd, command_json, n) != (ssize_t)n || write(p->in_fd, "\n", 1) != 1)
        fprintf(stderr, "legacy peer: write failed\n");
}

/* Closes the child's stdin and reaps it, killing it if it has not exited within 5 s. */
static void child_end(legacy_peer *p) {
    if (p->pid <= 0) return;
    close(p->in_fd);
    long long deadline = now_ms() + 5000;
    int status;
    while (waitpid(p->pid, &status, WNOHANG) == 0) {
        if (now_ms() > deadline) {
            kill(p->pid, SIGKILL);
            waitpid(p->pid, &status, 0);
            break;
        }
        usleep(10000);
    }
    close(p->out_fd);
    p->pid = 0;
}

/* Ends the peer: "exit" command, then close and reap (killing it if it hangs). */
static void legacy_stop(legacy_peer *p) {
    if (p->pid <= 0) return;
    legacy_send(p, "{\"cmd\":\"exit\"}");
    child_end(p);
}

/* Kills the peer at once (SIGKILL: no goodbye on its streams), then reaps it. */
static void legacy_kill(legacy_peer *p) {
    if (p->pid <= 0) return;
    kill(p->pid, SIGKILL);
    int status;
    waitpid(p->pid, &status, 0);
    close(p->in_fd);
    close(p->out_fd);
    p->pid = 0;
}

/* Starts the legacy package's server on `port`. `extra` is more members of its config (each
 * with a leading comma; "" for none). Waits up to 20 s for it to listen; 0 on success. */
static int legacy_server_start_on(legacy_peer *p, const char *secret, int cipher, const char *extra,
                                  int port) {
    char fields[1024], line[8192];
    snprintf(fields, sizeof fields,
             "\"role\":\"server\",\"auth\":\"%s\",\"port\":\"127.0.0.1:%d\",\"cipher\":%s,"
             "\"uuid\":\"legacy-server-uuid\"%s",
             secret, port, cipher ? "true" : "false", extra);
    if (legacy_start(p, fields) != 0) return -1;
    if (legacy_wait(p, "\"ev\":\"listen\"", line, sizeof line, 20000) == 0 &&
        strstr(line, "\"err\":null"))
        return 0;
    legacy_stop(p);
    return -1;
}

/* legacy_server_start_on a free port, retrying if another process took the port meanwhile;
 * 0 on success, with the port in *port_out. */
static int legacy_server_start(legacy_peer *p, const char *secret, int cipher, const char *extra,
                               int *port_out) {
    for (int attempt = 0; attempt < 5; attempt++) {
        int port = free_port();
        if (legacy_server_start_on(p, secret, cipher, extra, port) == 0) {
            *port_out = port;
            return 0;
        }
    }
    return -1;
}

#endif
