/* The router through the C ABI: a C client through a C router to a C server (events both
 * ways with the original sender's uuid, dispatch_to a routed client, requests both ways),
 * legacy Node clients through the C router to the C server, a router closed and restarted on
 * the same port with its clients reconnecting, a backend server, the pull model, and the
 * argument checks. */
#include "common.h"

#define SECRET "c-router-secret"
#define WAIT 20000 /* generous: everything runs under valgrind */
#define LINE 8192

static iris_server *start_server(collector *events) {
    iris_options *o = NULL;
    iris_server *s = NULL;
    CHECK_OK(iris_options_new(SECRET, &o));
    CHECK_OK(iris_options_set_string(o, "port", "127.0.0.1:0"));
    CHECK_OK(iris_options_set_string(o, "uuid", "c-server-uuid"));
    CHECK_OK(iris_options_set_string(o, "designation", "c-server"));
    CHECK_OK(iris_options_set_certificates(o, key_pem, cert_pem, NULL));
    CHECK_OK(iris_server_bind(o, collect_event, events, collector_destroyed, &s));
    iris_options_free(o);
    return s;
}

/* A router whose frontend listens on `port` (0: any) and whose backend is a client of the
 * server on `server_port`; callback mode when `events` is not NULL, else pull mode. */
static iris_result start_router(int port, int server_port, collector *events, iris_router **out) {
    char text[64];
    iris_options *f = NULL, *b = NULL;
    CHECK_OK(iris_options_new(SECRET, &f));
    snprintf(text, sizeof text, "127.0.0.1:%d", port);
    CHECK_OK(iris_options_set_string(f, "port", text));
    CHECK_OK(iris_options_set_string(f, "uuid", "c-router-frontend"));
    CHECK_OK(iris_options_set_certificates(f, key_pem, cert_pem, NULL));
    CHECK_OK(iris_options_new(SECRET, &b));
    snprintf(text, sizeof text, "127.0.0.1:%d", server_port);
    CHECK_OK(iris_options_add_address(b, text));
    CHECK_OK(iris_options_set_string(b, "uuid", "c-router-backend"));
    CHECK_OK(iris_options_set_int(b, "reconnect_initial", 200));
    iris_result r = iris_router_start(f, b, false, events ? collect_event : NULL, events,
                                      events ? collector_destroyed : NULL, out);
    iris_options_free(f);
    iris_options_free(b);
    return r;
}

static iris_client *start_client(int port, const char *uuid, collector *events) {
    iris_options *o = client_options(SECRET, port, uuid);
    iris_client *c = NULL;
    CHECK_OK(iris_options_set_string(o, "designation", "c-client"));
    CHECK_OK(iris_options_set_int(o, "reconnect_initial", 200));
    CHECK_OK(iris_client_connect(o, collect_event, events, collector_destroyed, &c));
    iris_options_free(o);
    return c;
}

/* dispatch_to a routed uuid, retried until the server has learnt the route. */
static iris_result dispatch_to_routed(iris_server *s, const char *uuid, const char *json) {
    long long deadline = now_ms() + WAIT;
    iris_result r;
    while ((r = iris_server_dispatch_to(s, uuid, json, 0)) == IRIS_ERR_NOT_CONNECTED &&
           now_ms() < deadline)
        usleep(20000);
    return r;
}

/* Answers the request of event `k` in `c` with resp (or err), then frees it. */
static void answer(collector *c, int k, const char *err, const char *resp) {
    CHECK(k >= 0);
    if (k < 0) return;
    iris_request *req = collector_take_request(c, k);
    CHECK(req != NULL);
    CHECK_OK(iris_request_respond(req, err, resp));
    iris_request_free(req);
}

static void test_c_client_router_c_server(void) {
    collector se, re, ce;
    collector_init(&se, 1);
    collector_init(&re, 0);
    collector_init(&ce, 1);
    iris_server *s = start_server(&se);
    iris_router *r = NULL;
    iris_client *c = NULL;
    int si = 0, ri = 0, ci = 0, k;
    CHECK(s != NULL);
    if (!s) goto out;
    CHECK_OK(start_router(0, iris_server_port(s), &re, &r));
    if (!r) goto out;
    CHECK(iris_router_port(r) != 0);
    CHECK(iris_router_backend_port(r) == 0); /* the backend is a client */

    /* The router's backend reaches the server. */
    k = collector_wait(&re, IRIS_EVENT_CONNECT, NULL, &ri, WAIT);
    CHECK(k >= 0 && re.events[k].side == IRIS_SIDE_BACKEND &&
          strcmp(re.events[k].uuid, "c-server-uuid") == 0);
    k = collector_wait(&se, IRIS_EVENT_CONNECT, NULL, &si, WAIT);
    CHECK(k >= 0 && strcmp(se.events[k].uuid, "c-router-backend") == 0);
    CHECK(k >= 0 && se.events[k].designation && strcmp(se.events[k].designation, "router") == 0);

    c = start_client(iris_router_port(r), "c-client-uuid", &ce);
    CHECK_OK(iris_client_wait_connected(c, WAIT));
    k = collector_wait(&ce, IRIS_EVENT_CONNECT, NULL, &ci, WAIT);
    CHECK(k >= 0 && strcmp(ce.events[k].uuid, "c-router-frontend") == 0);
    k = collector_wait(&re, IRIS_EVENT_CONNECT, NULL, &ri, WAIT);
    CHECK(k >= 0 && re.events[k].side == IRIS_SIDE_FRONTEND &&
          strcmp(re.events[k].uuid, "c-client-uuid") == 0);

    char *json = NULL;
    CHECK_OK(iris_router_peers(r, IRIS_SIDE_FRONTEND, &json));
    CHECK(json && strstr(json, "\"uuid\":\"c-client-uuid\""));
    iris_string_free(json);
    json = NULL;
    CHECK_OK(iris_router_peers(r, IRIS_SIDE_BACKEND, &json));
    CHECK(json && strstr(json, "\"uuid\":\"c-server-uuid\""));
    iris_string_free(json);
    json = NULL;
    CHECK_OK(iris_router_routes(r, IRIS_SIDE_FRONTEND, &json));
    CHECK(json && json[0] == '{');
    iris_string_free(json);
    CHECK_RES(iris_router_peers(r, IRIS_SIDE_NONE, &json), IRIS_ERR_INVALID_ARGUMENT);
    CHECK_RES(iris_router_next_event(r, 0, &(iris_event *){NULL}), IRIS_ERR_INVALID_STATE);

    /* The server's dispatch_to reaches the routed client (once the route is known). */
    CHECK_OK(dispatch_to_routed(s, "c-client-uuid", "{\"op\":\"to-client\",\"n\":1}"));
    k = collector_wait(&ce, IRIS_EVENT_MESSAGE, "\"op\":\"to-client\"", &ci, WAIT);
    CHECK(k >= 0 && strstr(ce.events[k].json, "\"n\":1"));

    /* An event from the client reaches the server with the client's uuid. */
    CHECK_OK(iris_client_dispatch(c, "{\"op\":\"hello\",\"text\":\"hi\"}", 0, NULL));
    k = collector_wait(&se, IRIS_EVENT_MESSAGE, "\"op\":\"hello\"", &si, WAIT);
    CHECK(k >= 0 && strcmp(se.events[k].uuid, "c-client-uuid") == 0);
    CHECK(k >= 0 && strstr(se.events[k].json, "\"text\":\"hi\""));

    /* A broadcast from the server reaches the client too. */
    CHECK_OK(iris_server_dispatch(s, "{\"op\":\"to-all\"}", 0, NULL));
    k = collector_wait(&ce, IRIS_EVENT_MESSAGE, "\"op\":\"to-all\"", &ci, WAIT);
    CHECK(k >= 0);

    /* Client -> server request, answered at the server, seen with the client's uuid. */
    {
        outcome o;
        outcome_init(&o);
        CHECK_OK(iris_client_request(c, NULL, "{\"op\":\"add\",\"a\":2,\"b\":3}", 0, on_response,
                                     &o, NULL));
        k = collector_wait(&se, IRIS_EVENT_REQUEST, "\"op\":\"add\"", &si, WAIT);
        CHECK(k >= 0 && strcmp(se.events[k].uuid, "c-client-uuid") == 0);
        answer(&se, k, NULL, "{\"sum\":5}");
        CHECK(outcome_wait(&o, WAIT) == 1);
        CHECK(o.result == IRIS_OK && o.json && strcmp(o.json, "{\"sum\":5}") == 0);
        outcome_destroy(&o);
    }
    /* ... and an error answer relayed as such. */
    {
        outcome o;
        outcome_init(&o);
        CHECK_OK(iris_client_request(c, NULL, "{\"op\":\"fail\"}", 0, on_response, &o, NULL));
        k = collector_wait(&se, IRIS_EVENT_REQUEST, "\"op\":\"fail\"", &si, WAIT);
        answer(&se, k, "{\"_Error\":true,\"name\":\"TypeError\",\"message\":\"bad\"}", NULL);
        CHECK(outcome_wait(&o, WAIT) == 1);
        CHECK(o.result == IRIS_ERR_REMOTE && o.json && strstr(o.json, "TypeError"));
        outcome_destroy(&o);
    }
    /* Server -> routed client request, answered by the client. */
    {
        outcome o;
        outcome_init(&o);
        CHECK_OK(iris_server_request(s, "c-client-uuid", "{\"op\":\"mul\",\"a\":4,\"b\":5}", 0,
                                     on_response, &o, NULL));
        k = collector_wait(&ce, IRIS_EVENT_REQUEST, "\"op\":\"mul\"", &ci, WAIT);
        answer(&ce, k, NULL, "{\"product\":20}");
        CHECK(outcome_wait(&o, WAIT) == 1);
        CHECK(o.result == IRIS_OK && o.json && strcmp(o.json, "{\"product\":20}") == 0);
        outcome_destroy(&o);
    }

    /* Closing the router ends the client's stream; its events end with a disconnect. */
    CHECK_OK(iris_router_close(r));
    k = collector_wait(&ce, IRIS_EVENT_DISCONNECT, NULL, &ci, WAIT);
    CHECK(k >= 0);

out:
    iris_client_free(c);
    iris_router_free(r);
    iris_server_free(s);
    CHECK(r == NULL || re.destroyed == 1);
    collector_destroy(&ce);
    collector_destroy(&re);
    collector_destroy(&se);
}

/* Starts a router on a fixed port, retrying while the port is still held. */
static iris_router *start_router_on(int port, int server_port, collector *events) {
    iris_router *r = NULL;
    for (int attempt = 0; attempt < 50 && !r; attempt++) {
        iris_result res = start_router(port, server_port, events, &r);
        if (res == IRIS_OK) break;
        if (events) {
            /* destroy ran on failure: start over with the same collector */
            pthread_mutex_lock(&events->mu);
            events->destroyed = 0;
            pthread_mutex_unlock(&events->mu);
        }
        r = NULL;
        usleep(100000);
    }
    return r;
}

/* Waits in pull mode for a router event of `kind` on `side`; 0 when it came. */
static int pull_wait(iris_router *r, uint32_t kind, iris_side side, const char *uuid) {
    long long deadline = now_ms() + WAIT;
    while (now_ms() < deadline) {
        iris_event *ev = NULL;
        iris_result res = iris_router_next_event(r, 500, &ev);
        if (res == IRIS_ERR_TIMEOUT) continue;
        if (res != IRIS_OK) return -1;
        int match = iris_event_get_kind(ev) == kind && iris_event_side(ev) == side &&
                    (!uuid || (iris_event_uuid(ev) && strcmp(iris_event_uuid(ev), uuid) == 0));
        iris_event_free(ev);
        if (match) return 0;
    }
    return -1;
}

static void test_router_restart(void) {
    collector se, re, ce;
    collector_init(&se, 1);
    collector_init(&re, 0);
    collector_init(&ce, 1);
    iris_server *s = start_server(&se);
    iris_router *r = NULL;
    iris_client *c = NULL;
    int ci = 0, si = 0, k;
    int port = free_port();
    CHECK(s != NULL && port > 0);
    if (!s || port <= 0) goto out;
    r = start_router_on(port, iris_server_port(s), &re);
    CHECK(r != NULL);
    if (!r) goto out;
    CHECK(iris_router_port(r) == port);
    c = start_client(port, "c-client-uuid", &ce);
    CHECK_OK(iris_client_wait_connected(c, WAIT));
    CHECK(collector_wait(&ce, IRIS_EVENT_CONNECT, NULL, &ci, WAIT) >= 0);
    CHECK_OK(dispatch_to_routed(s, "c-client-uuid", "{\"op\":\"first\"}"));
    CHECK(collector_wait(&ce, IRIS_EVENT_MESSAGE, "\"op\":\"first\"", &ci, WAIT) >= 0);

    /* Close and free the router: the client loses its stream. */
    CHECK_OK(iris_router_close(r));
    CHECK(collector_wait(&ce, IRIS_EVENT_DISCONNECT, NULL, &ci, WAIT) >= 0);
    iris_router_free(r);
    CHECK(re.destroyed == 1);
    r = NULL;

    /* A new router, in pull mode, on the same port: the client reconnects by itself. */
    r = start_router_on(port, iris_server_port(s), NULL);
    CHECK(r != NULL);
    if (!r) goto out;
    CHECK(pull_wait(r, IRIS_EVENT_CONNECT, IRIS_SIDE_BACKEND, "c-server-uuid") == 0);
    CHECK(collector_wait(&ce, IRIS_EVENT_CONNECT, NULL, &ci, WAIT) >= 0);
    CHECK(pull_wait(r, IRIS_EVENT_CONNECT, IRIS_SIDE_FRONTEND, "c-client-uuid") == 0);
    CHECK_OK(iris_client_wait_connected(c, WAIT));

    /* Requests both ways and dispatch_to work again. */
    {
        outcome o;
        outcome_init(&o);
        CHECK_OK(iris_client_request(c, NULL, "{\"op\":\"again\"}", 0, on_response, &o, NULL));
        k = collector_wait(&se, IRIS_EVENT_REQUEST, "\"op\":\"again\"", &si, WAIT);
        CHECK(k >= 0 && strcmp(se.events[k].uuid, "c-client-uuid") == 0);
        answer(&se, k, NULL, "{\"ok\":true}");
        CHECK(outcome_wait(&o, WAIT) == 1);
        CHECK(o.result == IRIS_OK && o.json && strcmp(o.json, "{\"ok\":true}") == 0);
        outcome_destroy(&o);
    }
    CHECK_OK(dispatch_to_routed(s, "c-client-uuid", "{\"op\":\"second\"}"));
    CHECK(collector_wait(&ce, IRIS_EVENT_MESSAGE, "\"op\":\"second\"", &ci, WAIT) >= 0);
    {
        outcome o;
        outcome_init(&o);
        CHECK_OK(iris_server_request(s, "c-client-uuid", "{\"op\":\"back\"}", 0, on_response, &o,
                                     NULL));
        k = collector_wait(&ce, IRIS_EVENT_REQUEST, "\"op\":\"back\"", &ci, WAIT);
        answer(&ce, k, NULL, "\"yes\"");
        CHECK(outcome_wait(&o, WAIT) == 1);
        CHECK(o.result == IRIS_OK && o.json && strcmp(o.json, "\"yes\"") == 0);
        outcome_destroy(&o);
    }

    /* Pull mode after close: drained, then closed. */
    CHECK_OK(iris_router_close(r));
    {
        iris_result res;
        iris_event *ev = NULL;
        long long deadline = now_ms() + WAIT;
        while ((res = iris_router_next_event(r, 200, &ev)) == IRIS_OK || res == IRIS_ERR_TIMEOUT) {
            iris_event_free(ev);
            ev = NULL;
            if (now_ms() > deadline) break;
        }
        CHECK(res == IRIS_ERR_CLOSED);
    }

out:
    iris_client_free(c);
    iris_router_free(r);
    iris_server_free(s);
    collector_destroy(&ce);
    collector_destroy(&re);
    collector_destroy(&se);
}

static int start_legacy_client(legacy_peer *p, int port, const char *uuid) {
    char fields[512], line[LINE];
    snprintf(fields, sizeof fields,
             "\"role\":\"client\",\"auth\":\"%s\",\"address\":\"127.0.0.1:%d\","
             "\"uuid\":\"%s\",\"designation\":\"legacy-client\"",
             SECRET, port, uuid);
    if (legacy_start(p, fields) != 0) return -1;
    if (legacy_wait(p, "\"ev\":\"connect\"", line, sizeof line, WAIT) != 0) {
        legacy_stop(p);
        return -1;
    }
    return 0;
}

static void test_legacy_clients_through_router(void) {
    collector se, re;
    collector_init(&se, 1);
    collector_init(&re, 0);
    legacy_peer l1, l2;
    memset(&l1, 0, sizeof l1);
    memset(&l2, 0, sizeof l2);
    iris_server *s = start_server(&se);
    iris_router *r = NULL;
    int si = 0, k;
    char line[LINE];
    CHECK(s != NULL);
    if (!s) goto out;
    CHECK_OK(start_router(0, iris_server_port(s), &re, &r));
    if (!r) goto out;
    CHECK(start_legacy_client(&l1, iris_router_port(r), "legacy-client-1") == 0);
    CHECK(start_legacy_client(&l2, iris_router_port(r), "legacy-client-2") == 0);
    if (!l1.pid || !l2.pid) goto out;

    /* Legacy request through the router, answered by the C server. */
    legacy_send(&l1, "{\"cmd\":\"request\",\"id\":1,\"msg\":{\"op\":\"add\",\"a\":2,\"b\":3}}");
    k = collector_wait(&se, IRIS_EVENT_REQUEST, "\"op\":\"add\"", &si, WAIT);
    CHECK(k >= 0 && strcmp(se.events[k].uuid, "legacy-client-1") == 0);
    answer(&se, k, NULL, "{\"sum\":5}");
    CHECK(legacy_wait(&l1, "\"ev\":\"response\"", line, sizeof line, WAIT) == 0);
    CHECK(strstr(line, "\"id\":1") && strstr(line, "\"err\":null") &&
          strstr(line, "\"resp\":{\"sum\":5}"));

    /* An error answer reaches legacy as an Error. */
    legacy_send(&l2, "{\"cmd\":\"request\",\"id\":2,\"msg\":{\"op\":\"fail\"}}");
    k = collector_wait(&se, IRIS_EVENT_REQUEST, "\"op\":\"fail\"", &si, WAIT);
    CHECK(k >= 0 && strcmp(se.events[k].uuid, "legacy-client-2") == 0);
    answer(&se, k, "{\"_Error\":true,\"name\":\"TypeError\",\"message\":\"bad\"}", NULL);
    CHECK(legacy_wait(&l2, "\"ev\":\"response\"", line, sizeof line, WAIT) == 0);
    CHECK(strstr(line, "\"id\":2") && strstr(line, "TypeError"));

    /* A legacy event reaches the server with the legacy client's uuid. */
    legacy_send(&l2, "{\"cmd\":\"dispatch\",\"msg\":{\"op\":\"note\",\"text\":\"from-2\"}}");
    k = collector_wait(&se, IRIS_EVENT_MESSAGE, "\"op\":\"note\"", &si, WAIT);
    CHECK(k >= 0 && strcmp(se.events[k].uuid, "legacy-client-2") == 0);
    CHECK(k >= 0 && strstr(se.events[k].json, "from-2"));

    /* dispatch_to reaches the one legacy client it names. */
    CHECK_OK(dispatch_to_routed(s, "legacy-client-2", "{\"op\":\"just-2\"}"));
    CHECK(legacy_wait(&l2, "\"op\":\"just-2\"", line, sizeof line, WAIT) == 0);
    CHECK(strstr(line, "\"ev\":\"message\""));
    CHECK_OK(dispatch_to_routed(s, "legacy-client-1", "{\"op\":\"just-1\"}"));
    CHECK(legacy_wait(&l1, "\"op\":\"just-1\"", line, sizeof line, WAIT) == 0);

    /* A request from the C server to a legacy client, answered by its handler. */
    {
        char *resp = NULL;
        CHECK_OK(iris_server_request_wait(s, "legacy-client-1", "{\"op\":\"add\",\"a\":4,\"b\":5}",
                                          0, &resp, NULL));
        CHECK(resp && strcmp(resp, "{\"sum\":9}") == 0);
        iris_string_free(resp);
        resp = NULL;
        CHECK_RES(iris_server_request_wait(s, "legacy-client-2", "{\"op\":\"fail\"}", 0, &resp,
                                           NULL),
                  IRIS_ERR_REMOTE);
        CHECK(strstr(iris_last_error_message(), "bad input"));
    }

out:
    legacy_stop(&l1);
    legacy_stop(&l2);
    iris_router_free(r);
    iris_server_free(s);
    collector_destroy(&re);
    collector_destroy(&se);
}

/* Backend as a server: clients on both sides meet in the middle. */
static void test_backend_server(void) {
    collector ae, be;
    collector_init(&ae, 1);
    collector_init(&be, 1);
    iris_options *f = NULL, *b = NULL;
    iris_router *r = NULL;
    iris_client *a = NULL, *c = NULL;
    int ai = 0, bi = 0, k;
    CHECK_OK(iris_options_new(SECRET, &f));
    CHECK_OK(iris_options_set_string(f, "port", "127.0.0.1:0"));
    CHECK_OK(iris_options_set_certificates(f, key_pem, cert_pem, NULL));
    CHECK_OK(iris_options_new(SECRET, &b));
    CHECK_OK(iris_options_set_string(b, "port", "127.0.0.1:0"));
    CHECK_OK(iris_options_set_certificates(b, key_pem, cert_pem, NULL));
    CHECK_OK(iris_router_start(f, b, true, NULL, NULL, NULL, &r));
    iris_options_free(f);
    iris_options_free(b);
    if (!r) goto out;
    CHECK(iris_router_port(r) != 0 && iris_router_backend_port(r) != 0);
    CHECK(iris_router_port(r) != iris_router_backend_port(r));
    a = start_client(iris_router_port(r), "front-client", &ae);
    c = start_client(iris_router_backend_port(r), "back-client", &be);
    CHECK_OK(iris_client_wait_connected(a, WAIT));
    CHECK_OK(iris_client_wait_connected(c, WAIT));
    /* A frontend event reaches the backend client with its sender's uuid. */
    {
        long long deadline = now_ms() + WAIT;
        k = -1;
        while (k < 0 && now_ms() < deadline) {
            CHECK_OK(iris_client_dispatch(a, "{\"op\":\"meet\"}", 0, NULL));
            k = collector_wait(&be, IRIS_EVENT_MESSAGE, "\"op\":\"meet\"", &bi, 500);
        }
        CHECK(k >= 0 && strcmp(be.events[k].uuid, "front-client") == 0);
    }
    /* The backend client's request to the frontend client, by uuid. */
    {
        outcome o;
        outcome_init(&o);
        CHECK_OK(iris_client_request(c, "front-client", "{\"op\":\"hi\"}", 0, on_response, &o,
                                     NULL));
        k = collector_wait(&ae, IRIS_EVENT_REQUEST, "\"op\":\"hi\"", &ai, WAIT);
        answer(&ae, k, NULL, "{\"from\":\"front\"}");
        CHECK(outcome_wait(&o, WAIT) == 1);
        CHECK(o.result == IRIS_OK && o.json && strcmp(o.json, "{\"from\":\"front\"}") == 0);
        outcome_destroy(&o);
    }
out:
    iris_client_free(a);
    iris_client_free(c);
    iris_router_free(r);
    collector_destroy(&ae);
    collector_destroy(&be);
}

static int destroyed_count;
static void count_destroy(void *user_data) {
    (void)user_data;
    destroyed_count++;
}

static void test_router_arguments(void) {
    iris_options *o = NULL;
    iris_router *r = NULL;
    CHECK_OK(iris_options_new(SECRET, &o));
    destroyed_count = 0;
    CHECK_RES(iris_router_start(NULL, o, false, NULL, NULL, count_destroy, &r),
              IRIS_ERR_NULL_ARGUMENT);
    CHECK(destroyed_count == 1 && r == NULL);
    CHECK_RES(iris_router_start(o, NULL, false, NULL, NULL, count_destroy, &r),
              IRIS_ERR_NULL_ARGUMENT);
    CHECK(destroyed_count == 2 && r == NULL);
    CHECK_RES(iris_router_start(o, o, false, NULL, NULL, count_destroy, NULL),
              IRIS_ERR_NULL_ARGUMENT);
    CHECK(destroyed_count == 3);
    /* The frontend lacks port and certificates: a config error, destroy still once. */
    iris_result res = iris_router_start(o, o, false, NULL, NULL, count_destroy, &r);
    CHECK(res != IRIS_OK && r == NULL && destroyed_count == 4);
    CHECK(strlen(iris_last_error_message()) > 0);
    iris_options_free(o);

    CHECK(iris_router_port(NULL) == 0);
    CHECK(iris_router_backend_port(NULL) == 0);
    CHECK_RES(iris_router_close(NULL), IRIS_ERR_NULL_ARGUMENT);
    iris_event *ev = NULL;
    CHECK_RES(iris_router_next_event(NULL, 0, &ev), IRIS_ERR_NULL_ARGUMENT);
    char *json = NULL;
    CHECK_RES(iris_router_peers(NULL, IRIS_SIDE_FRONTEND, &json), IRIS_ERR_NULL_ARGUMENT);
    CHECK(iris_event_side(NULL) == IRIS_SIDE_NONE);
    iris_router_free(NULL);
}

/* Reads the legacy peer's output up to a line containing `until`, counting the connect and
 * disconnect events before it; 0 when that line came. */
static int legacy_scan(legacy_peer *p, const char *until, int *connects, int *disconnects) {
    char line[LINE];
    long long deadline = now_ms() + WAIT;
    for (;;) {
        long long left = deadline - now_ms();
        if (left <= 0 || legacy_wait(p, "\"ev\":", line, sizeof line, (int)left) != 0) return -1;
        if (strstr(line, "\"ev\":\"connect\"")) ++*connects;
        if (strstr(line, "\"ev\":\"disconnect\"")) ++*disconnects;
        if (strstr(line, until)) return 0;
    }
}

typedef struct {
    iris_client *client;
    int stop; /* atomic */
    int answered, failed;
    iris_result first_failure;
} steady_requests;

/* A request every 20 ms until told to stop, counting the answers and the failures. */
static void *steady_loop(void *arg) {
    steady_requests *s = (steady_requests *)arg;
    char json[96], want[48];
    for (int n = 1; !__atomic_load_n(&s->stop, __ATOMIC_SEQ_CST); n++) {
        snprintf(json, sizeof json, "{\"op\":\"add\",\"a\":%d,\"b\":1}", n);
        snprintf(want, sizeof want, "{\"sum\":%d}", n + 1);
        iris_result r = request_expect(s->client, json, want);
        if (r == IRIS_OK) {
            __atomic_add_fetch(&s->answered, 1, __ATOMIC_SEQ_CST);
        } else {
            if (__atomic_add_fetch(&s->failed, 1, __ATOMIC_SEQ_CST) == 1) s->first_failure = r;
        }
        usleep(20000);
    }
    return NULL;
}

/* Issue 14, item 7: our router told a legacy server `rpc::offline` when a frontend client left;
 * legacy's handler for it throws and ends the stream, so the router's link dropped and requests
 * in flight failed. Here 50 clients come and go (and a peer sends events whose op legacy would
 * look up as a control handler or an Object.prototype member) while a steady client makes a
 * request every 20 ms: none fails, and the legacy server sees one connection from the C router,
 * never dropped. */
static void test_leaving_clients_legacy_backend(void) {
    legacy_peer p;
    int port = 0, connects = 0, disconnects = 0, ri = 0, k;
    memset(&p, 0, sizeof p);
    if (legacy_server_start(&p, SECRET, 1, "", &port) != 0) {
        CHECK(!"legacy server started");
        return;
    }
    collector re;
    collector_init(&re, 0);
    iris_router *r = NULL;
    iris_client *steady = NULL, *hostile = NULL;
    pthread_t worker;
    int worker_started = 0;
    steady_requests s;
    memset(&s, 0, sizeof s);
    CHECK_OK(start_router(0, port, &re, &r));
    if (!r) goto out;
    k = collector_wait(&re, IRIS_EVENT_CONNECT, NULL, &ri, WAIT);
    CHECK(k >= 0 && re.events[k].side == IRIS_SIDE_BACKEND);
    CHECK(legacy_scan(&p, "\"uuid\":\"c-router-backend\"", &connects, &disconnects) == 0);
    int rport = iris_router_port(r);

    steady = default_client(SECRET, rport, "steady");
    CHECK_OK(iris_client_wait_connected(steady, WAIT));
    s.client = steady;
    worker_started = pthread_create(&worker, NULL, steady_loop, &s) == 0;
    CHECK(worker_started);

    /* 50 clients come and go, five at a time. */
    for (int round = 0; round < 10; round++) {
        iris_client *batch[5];
        char uuid[32];
        for (int i = 0; i < 5; i++) {
            snprintf(uuid, sizeof uuid, "churn-%d-%d", round, i);
            batch[i] = default_client(SECRET, rport, uuid);
        }
        for (int i = 0; i < 5; i++) CHECK_OK(iris_client_wait_connected(batch[i], WAIT));
        for (int i = 0; i < 5; i++) iris_client_free(batch[i]);
    }
    hostile = default_client(SECRET, rport, "hostile");
    CHECK_OK(iris_client_wait_connected(hostile, WAIT));
    const char *ops[] = {"[\"rpc::offline\"]", "[[\"rpc::init\"]]", "\"__proto__\"", "\"toString\""};
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
        char json[160];
        snprintf(json, sizeof json, "{\"op\":%s,\"uuid\":\"x\",\"data\":{\"uuid\":\"hijack\"}}", ops[i]);
        CHECK_OK(iris_client_dispatch(hostile, json, 0, NULL));
    }
    CHECK_OK(iris_client_dispatch(hostile, "{\"op\":\"after-hostile\"}", 0, NULL));
    CHECK(legacy_scan(&p, "\"op\":\"after-hostile\"", &connects, &disconnects) == 0);
    /* More requests after the last client left and the last offence. */
    int seen = __atomic_load_n(&s.answered, __ATOMIC_SEQ_CST);
    long long deadline = now_ms() + WAIT;
    while (__atomic_load_n(&s.answered, __ATOMIC_SEQ_CST) < seen + 10 && now_ms() < deadline)
        usleep(20000);
    CHECK(__atomic_load_n(&s.answered, __ATOMIC_SEQ_CST) >= seen + 10);

out:
    __atomic_store_n(&s.stop, 1, __ATOMIC_SEQ_CST);
    if (worker_started) pthread_join(worker, NULL);
    fprintf(stderr, "steady client: %d requests answered, %d failed (first: %s)\n", s.answered,
            s.failed, s.failed ? iris_result_text(s.first_failure) : "none");
    CHECK(s.failed == 0);
    /* Everything the legacy server reported so far (its answer comes after it). */
    legacy_send(&p, "{\"cmd\":\"connected\"}");
    CHECK(legacy_scan(&p, "\"ev\":\"connected\"", &connects, &disconnects) == 0);
    CHECK(connects == 1);
    CHECK(disconnects == 0);
    int bi = 0;
    while ((k = collector_wait(&re, IRIS_EVENT_DISCONNECT, NULL, &bi, 0)) >= 0)
        CHECK(re.events[k].side != IRIS_SIDE_BACKEND);
    iris_client_free(hostile);
    iris_client_free(steady);
    iris_router_free(r);
    legacy_stop(&p);
    collector_destroy(&re);
}

int main(int argc, char **argv) {
    (void)argc;
    (void)argv;
    make_certificates();
    run_test("router: arguments", test_router_arguments);
    run_test("router: C client, C router, C server", test_c_client_router_c_server);
    run_test("router: closed and restarted on the same port", test_router_restart);
    run_test("router: legacy clients, C router, C server", test_legacy_clients_through_router);
    run_test("router: backend server, clients meet in the middle", test_backend_server);
    run_test("router: 50 clients come and go, a legacy backend never drops",
             test_leaving_clients_legacy_backend);
    free_certificates();
    return total_failed_tests ? 1 : 0;
}
