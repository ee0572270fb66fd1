/* A C server with a C client in one process: requests answered from C (at once, later from
 * another thread, with errors, never), timeouts, cancel, close, events both ways, the pull
 * model, a wrong secret, and the callback rules. */
#include "common.h"

#define SECRET "c-pair-secret"
#define WAIT 20000 /* generous: everything may run under valgrind */

static char *fmt_options(const char *extra) {
    static char buf[256];
    snprintf(buf, sizeof buf, "{\"auth\":\"" SECRET "\",\"designation\":\"c-test\"%s}", extra);
    return buf;
}

/* A server in callback mode that takes request handles, on a free port. */
static iris_server *start_server(collector *events, const char *extra) {
    iris_options *o = NULL;
    iris_server *s = NULL;
    CHECK_OK(iris_options_from_json(fmt_options(extra), 0, &o));
    CHECK_OK(iris_options_set_string(o, "port", "127.0.0.1:0"));
    CHECK_OK(iris_options_set_certificates(o, key_pem, cert_pem, NULL));
    CHECK_OK(iris_server_bind(o, collect_event, events, collector_destroyed, &s));
    iris_options_free(o);
    return s;
}

static iris_client *start_client(iris_server *s, const char *secret, iris_event_callback cb,
                                 void *ud, iris_destroy_callback destroy) {
    char address[64];
    snprintf(address, sizeof address, "127.0.0.1:%u", (unsigned)iris_server_port(s));
    iris_options *o = NULL;
    iris_client *c = NULL;
    CHECK_OK(iris_options_new(secret, &o));
    CHECK_OK(iris_options_add_address(o, address));
    CHECK_OK(iris_options_set_string(o, "designation", "c-client"));
    CHECK_OK(iris_options_set_int(o, "reconnect_initial", 200));
    CHECK_OK(iris_client_connect(o, cb, ud, destroy, &c));
    iris_options_free(o);
    return c;
}

/* Answers a request from a thread of its own, after the event callback has long returned. */
typedef struct {
    iris_request *req;
    const char *err;
    const char *resp;
} late_answer;

static void *answer_later(void *arg) {
    late_answer *a = (late_answer *)arg;
    usleep(50000);
    iris_result r = iris_request_respond(a->req, a->err, a->resp);
    if (r != IRIS_OK) fprintf(stderr, "late respond failed: %s\n", iris_last_error_message());
    iris_request_free(a->req);
    return NULL;
}

static void test_requests_answered_from_c(void) {
    collector se, ce;
    collector_init(&se, 1);
    collector_init(&ce, 0);
    iris_server *s = start_server(&se, "");
    iris_client *c = start_client(s, SECRET, collect_event, &ce, collector_destroyed);
    CHECK(s && c);
    if (!s || !c) goto out;
    int si = 0, ci = 0;
    CHECK(collector_wait(&se, IRIS_EVENT_LISTEN, NULL, &si, WAIT) == 0);
    CHECK_OK(iris_client_wait_connected(c, WAIT));
    int k = collector_wait(&ce, IRIS_EVENT_CONNECT, NULL, &ci, WAIT);
    CHECK(k >= 0 && ce.events[k].uuid && strcmp(ce.events[k].uuid, iris_server_uuid(s)) == 0);
    CHECK(k >= 0 && ce.events[k].designation && strcmp(ce.events[k].designation, "c-test") == 0);
    k = collector_wait(&se, IRIS_EVENT_CONNECT, NULL, &si, WAIT);
    CHECK(k >= 0 && strcmp(se.events[k].uuid, iris_client_uuid(c)) == 0);

    /* 1. A request answered later from another thread, waited for synchronously. */
    {
        pthread_t t;
        late_answer a = {NULL, NULL, "{\"sum\":5}"};
        outcome o;
        outcome_init(&o);
        uint64_t id = 0;
        const char *msg = "{\"op\":\"add\",\"a\":2,\"b\":3}";
        CHECK_OK(iris_client_request(c, NULL, msg, strlen(msg), on_response, &o, &id));
        CHECK(id != 0);
        k = collector_wait(&se, IRIS_EVENT_REQUEST, "\"op\":\"add\"", &si, WAIT);
        CHECK(k >= 0);
        if (k >= 0) {
            a.req = collector_take_request(&se, k);
            CHECK(a.req != NULL);
            CHECK(strcmp(iris_request_op(a.req), "add") == 0);
            CHECK(strcmp(iris_request_uuid(a.req), iris_client_uuid(c)) == 0);
            size_t len = 0;
            const char *body = iris_request_json(a.req, &len);
            CHECK(body && len == strlen(body) && strstr(body, "\"a\":2"));
            pthread_create(&t, NULL, answer_later, &a);
            CHECK(outcome_wait(&o, WAIT) == 1);
            CHECK(o.result == IRIS_OK && o.json && strcmp(o.json, "{\"sum\":5}") == 0);
            pthread_join(t, NULL);
        }
        usleep(20000);
        CHECK(o.calls == 1); /* exactly once */
        outcome_destroy(&o);
    }

    /* 2. An error answer, and an answer given twice. */
    {
        pthread_t t;
        late_answer a = {NULL, "{\"_Error\":true,\"name\":\"TypeError\",\"message\":\"bad\"}", NULL};
        outcome o;
        outcome_init(&o);
        CHECK_OK(iris_client_request(c, NULL, "{\"op\":\"fail\"}", 0, on_response, &o, NULL));
        k = collector_wait(&se, IRIS_EVENT_REQUEST, "\"op\":\"fail\"", &si, WAIT);
        CHECK(k >= 0);
        if (k >= 0) {
            a.req = collector_take_request(&se, k);
            CHECK_RES(iris_request_respond(a.req, "{not json", NULL), IRIS_ERR_INVALID_JSON);
            pthread_create(&t, NULL, answer_later, &a);
            pthread_join(t, NULL);
            CHECK(outcome_wait(&o, WAIT) == 1);
            CHECK(o.result == IRIS_ERR_REMOTE && strstr(o.json, "\"name\":\"TypeError\""));
        }
        outcome_destroy(&o);
    }

    /* 3. A request freed unanswered: the client gets "No such handler". */
    {
        outcome o;
        outcome_init(&o);
        CHECK_OK(iris_client_request(c, NULL, "{\"op\":\"nobody\"}", 0, on_response, &o, NULL));
        k = collector_wait(&se, IRIS_EVENT_REQUEST, "\"op\":\"nobody\"", &si, WAIT);
        CHECK(k >= 0);
        if (k >= 0) iris_request_free(collector_take_request(&se, k));
        CHECK(outcome_wait(&o, WAIT) == 1);
        CHECK(o.result == IRIS_ERR_REMOTE && strstr(o.json, "No such handler 'nobody'"));
        outcome_destroy(&o);
    }

    /* 4. Never answered: the request times out by op_timeout, exactly once. */
    {
        outcome o;
        outcome_init(&o);
        const char *msg = "{\"op\":\"ignored\",\"op_timeout\":300}";
        CHECK_OK(iris_client_request(c, NULL, msg, 0, on_response, &o, NULL));
        CHECK(outcome_wait(&o, WAIT) == 1);
        CHECK(o.result == IRIS_ERR_TIMEOUT && strstr(o.json, "Connection Timed Out"));
        /* A late answer to a timed-out request is ignored by the client. */
        k = collector_wait(&se, IRIS_EVENT_REQUEST, "\"op\":\"ignored\"", &si, WAIT);
        if (k >= 0) {
            iris_request *r = collector_take_request(&se, k);
            CHECK_OK(iris_request_respond(r, NULL, "1"));
            CHECK_RES(iris_request_respond(r, NULL, "2"), IRIS_ERR_INVALID_STATE);
            iris_request_free(r);
        }
        usleep(100000);
        CHECK(o.calls == 1);
        outcome_destroy(&o);
    }

    /* 5. Cancel: the callback reports the cancel, once; cancelling again finds nothing. */
    {
        outcome o;
        outcome_init(&o);
        uint64_t id = 0;
        CHECK_OK(iris_client_request(c, NULL, "{\"op\":\"held\"}", 0, on_response, &o, &id));
        k = collector_wait(&se, IRIS_EVENT_REQUEST, "\"op\":\"held\"", &si, WAIT);
        CHECK_OK(iris_client_request_cancel(c, id));
        CHECK(outcome_wait(&o, WAIT) == 1);
        CHECK(o.result == IRIS_ERR_CANCELLED);
        CHECK_RES(iris_client_request_cancel(c, id), IRIS_ERR_NOT_FOUND);
        outcome_destroy(&o);
    }

    /* 6. Events both ways, dispatch_to, peers. */
    {
        size_t sent = 0;
        CHECK_OK(iris_client_dispatch(c, "{\"op\":\"note\",\"n\":1}", 0, &sent));
        CHECK(sent == 1);
        k = collector_wait(&se, IRIS_EVENT_MESSAGE, "\"op\":\"note\"", &si, WAIT);
        CHECK(k >= 0 && strcmp(se.events[k].uuid, iris_client_uuid(c)) == 0);
        CHECK_OK(iris_server_dispatch_to(s, iris_client_uuid(c), "{\"op\":\"news\"}", 0));
        CHECK(collector_wait(&ce, IRIS_EVENT_MESSAGE, "\"op\":\"news\"", &ci, WAIT) >= 0);
        CHECK_RES(iris_server_dispatch_to(s, "no-such-uuid", "{\"op\":\"x\"}", 0),
                  IRIS_ERR_NOT_CONNECTED);
        char *peers = NULL;
        CHECK_OK(iris_server_peers(s, &peers));
        CHECK(peers && strstr(peers, iris_client_uuid(c)) && strstr(peers, "c-client"));
        iris_string_free(peers);
        CHECK_OK(iris_server_set_ping_data(s, "{\"load\":1}"));
        CHECK_OK(iris_server_ping(s, &sent));
        CHECK(collector_wait(&ce, IRIS_EVENT_MESSAGE, "\"load\":1", &ci, WAIT) >= 0);
    }

    /* 7. The server requests from the client too (request_wait, with a uuid). The client's
     *    collector does not take requests, so the event is freed after the callback, which
     *    answers "No such handler". */
    {
        char *resp = NULL;
        size_t len = 0;
        iris_result r = iris_server_request_wait(s, iris_client_uuid(c), "{\"op\":\"who\"}", 0,
                                                 &resp, &len);
        CHECK(r == IRIS_ERR_REMOTE);
        CHECK(strstr(iris_last_error_message(), "No such handler 'who'") != NULL);
        CHECK(resp == NULL);
    }

    /* 8. Closing the server: the client sees the disconnect; a request pending on the
     *    server side settles with IRIS_ERR_CLOSED. */
    {
        outcome o;
        outcome_init(&o);
        /* The client now holds requests unanswered, so only the close can settle this one. */
        pthread_mutex_lock(&ce.mu);
        ce.take_requests = 1;
        pthread_mutex_unlock(&ce.mu);
        CHECK_OK(iris_server_request(s, NULL, "{\"op\":\"pending\"}", 0, on_response, &o, NULL));
        CHECK(collector_wait(&ce, IRIS_EVENT_REQUEST, "\"op\":\"pending\"", &ci, WAIT) >= 0);
        CHECK_OK(iris_server_close(s));
        CHECK(outcome_wait(&o, WAIT) == 1);
        CHECK(o.result == IRIS_ERR_CLOSED);
        CHECK(collector_wait(&ce, IRIS_EVENT_DISCONNECT, NULL, &ci, WAIT) >= 0);
        CHECK_RES(iris_server_dispatch(s, "{\"op\":\"x\"}", 0, NULL), IRIS_ERR_NOT_CONNECTED);
        outcome o2;
        outcome_init(&o2);
        CHECK_OK(iris_server_request(s, NULL, "{\"op\":\"late\"}", 0, on_response, &o2, NULL));
        CHECK(outcome_wait(&o2, WAIT) == 1);
        CHECK(o2.result == IRIS_ERR_CLOSED);
        outcome_destroy(&o2);
        outcome_destroy(&o);
    }
out:
    iris_client_free(c);
    iris_server_free(s);
    CHECK(se.destroyed == 1 && ce.destroyed == 1);
    collector_destroy(&se);
    collector_destroy(&ce);
}

/* Pull model on both sides. */
static void test_pull_model(void) {
    iris_options *o = NULL;
    iris_server *s = NULL;
    iris_client *c = NULL;
    iris_event *ev = NULL;
    CHECK_OK(iris_options_new(SECRET, &o));
    CHECK_OK(iris_options_set_int(o, "port", 0));
    CHECK_OK(iris_options_set_string(o, "host", "127.0.0.1"));
    CHECK_OK(iris_options_set_bool(o, "cipher", false));
    CHECK_OK(iris_options_set_certificates(o, key_pem, cert_pem, NULL));
    CHECK_OK(iris_server_bind(o, NULL, NULL, NULL, &s));
    iris_options_free(o);
    if (!s) return;
    CHECK_OK(iris_server_next_event(s, WAIT, &ev));
    CHECK(ev && iris_event_get_kind(ev) == IRIS_EVENT_LISTEN);
    CHECK(ev && strstr(iris_event_address(ev), "127.0.0.1:") != NULL);
    iris_event_free(ev);
    ev = NULL;
    CHECK_RES(iris_server_next_event(s, 0, &ev), IRIS_ERR_TIMEOUT);
    CHECK(ev == NULL); /* outputs are written only on success */

    c = start_client(s, SECRET, NULL, NULL, NULL);
    CHECK_OK(iris_client_wait_connected(c, WAIT));
    CHECK(iris_client_is_connected(c));
    CHECK_OK(iris_client_next_event(c, WAIT, &ev));
    CHECK(ev && iris_event_get_kind(ev) == IRIS_EVENT_CONNECT);
    iris_event_free(ev);
    CHECK_OK(iris_server_next_event(s, WAIT, &ev));
    CHECK(ev && iris_event_get_kind(ev) == IRIS_EVENT_CONNECT);
    iris_event_free(ev);

    /* Answer from the pull loop on another thread while this one waits for the response. */
    outcome out;
    outcome_init(&out);
    CHECK_OK(iris_client_request(c, NULL, "{\"op\":\"echo\",\"x\":[1,2]}", 0, on_response, &out,
                                 NULL));
    CHECK_OK(iris_server_next_event(s, WAIT, &ev));
    CHECK(ev && iris_event_get_kind(ev) == IRIS_EVENT_REQUEST);
    iris_request *req = NULL;
    CHECK_OK(iris_event_take_request(ev, &req));
    CHECK_RES(iris_event_take_request(ev, &req), IRIS_ERR_NOT_FOUND);
    iris_event_free(ev);
    CHECK_OK(iris_request_respond(req, NULL, iris_request_json(req, NULL)));
    iris_request_free(req);
    CHECK(outcome_wait(&out, WAIT) == 1);
    CHECK(out.result == IRIS_OK && strcmp(out.json, "{\"op\":\"echo\",\"x\":[1,2]}") == 0);
    outcome_destroy(&out);

    /* A request event freed without taking the request answers "No such handler". */
    outcome out2;
    outcome_init(&out2);
    CHECK_OK(iris_client_request(c, NULL, "{\"op\":\"drop\"}", 0, on_response, &out2, NULL));
    CHECK_OK(iris_server_next_event(s, WAIT, &ev));
    iris_event_free(ev);
    CHECK(outcome_wait(&out2, WAIT) == 1);
    CHECK(out2.result == IRIS_ERR_REMOTE && strstr(out2.json, "No such handler 'drop'"));
    outcome_destroy(&out2);

    /* Unpulled events (and a request among them) are dropped cleanly by free. */
    CHECK_OK(iris_client_dispatch(c, "{\"op\":\"unread\"}", 0, NULL));
    CHECK_OK(iris_client_close(c));
    /* After close, the events still queued come out, then IRIS_ERR_CLOSED. */
    iris_result r = IRIS_OK;
    for (int i = 0; i < 16 && r == IRIS_OK; i++) {
        ev = NULL;
        r = iris_client_next_event(c, WAIT, &ev);
        iris_event_free(ev);
    }
    CHECK(r == IRIS_ERR_CLOSED);
    iris_client_free(c);
    iris_server_free(s);
}

/* A wrong secret never connects; the server reports an authentication error. */
static void test_wrong_secret(void) {
    collector se, ce;
    collector_init(&se, 0);
    collector_init(&ce, 0);
    iris_server *s = start_server(&se, "");
    iris_client *c = s ? start_client(s, "not-the-secret", collect_event, &ce, collector_destroyed)
                       : NULL;
    if (s && c) {
        int si = 0, ci = 0;
        int k = collector_wait(&se, IRIS_EVENT_ERROR, NULL, &si, WAIT);
        CHECK(k >= 0 && se.events[k].error_code == IRIS_ERR_AUTH);
        CHECK(collector_wait(&ce, IRIS_EVENT_ERROR, NULL, &ci, WAIT) >= 0);
        CHECK(!iris_client_is_connected(c));
        CHECK_RES(iris_client_wait_connected(c, 300), IRIS_ERR_TIMEOUT);
        char *resp = NULL;
        CHECK_RES(iris_client_request_wait(c, NULL, "{\"op\":\"add\"}", 0, &resp, NULL),
                  IRIS_ERR_NOT_CONNECTED);
        CHECK(strstr(iris_last_error_message(), "not connected") != NULL);
    }
    iris_client_free(c);
    iris_server_free(s);
    collector_destroy(&se);
    collector_destroy(&ce);
}

/* Callbacks may call the library: answer inside the callback, refuse blocking calls there,
 * and close from the callback without deadlock. */
typedef struct {
    iris_server *server;
    int blocked_call;    /* result of a blocking call made inside the callback */
    int answered;
} callback_state;

static void answering_callback(void *ud, const iris_event *ev) {
    callback_state *st = (callback_state *)ud;
    if (iris_event_get_kind(ev) != IRIS_EVENT_REQUEST) return;
    char *resp = NULL;
    int blocked = iris_server_request_wait(st->server, NULL, "{\"op\":\"x\"}", 0, &resp, NULL);
    if (iris_server_wait_connected(st->server, 10) != IRIS_ERR_INVALID_STATE) blocked = -1;
    __atomic_store_n(&st->blocked_call, blocked, __ATOMIC_SEQ_CST);
    iris_request *req = NULL;
    if (iris_event_take_request(ev, &req) == IRIS_OK) {
        /* Counted before answering: the client may read it as soon as the answer arrives. */
        __atomic_fetch_add(&st->answered, 1, __ATOMIC_SEQ_CST);
        if (iris_request_respond(req, NULL, "\"from the callback\"") != IRIS_OK)
            __atomic_fetch_add(&st->answered, 100, __ATOMIC_SEQ_CST);
        iris_request_free(req);
    }
    if (strstr(iris_event_json(ev, NULL), "close")) iris_server_close(st->server);
}

static void test_callback_rules(void) {
    callback_state st = {NULL, 0, 0};
    iris_options *o = NULL;
    CHECK_OK(iris_options_new(SECRET, &o));
    CHECK_OK(iris_options_set_string(o, "port", "127.0.0.1:0"));
    CHECK_OK(iris_options_set_certificates(o, key_pem, cert_pem, NULL));
    iris_server *s = NULL;
    CHECK_OK(iris_server_bind(o, answering_callback, &st, NULL, &s));
    iris_options_free(o);
    if (!s) return;
    st.server = s;
    iris_client *c = start_client(s, SECRET, NULL, NULL, NULL);
    CHECK_OK(iris_client_wait_connected(c, WAIT));
    char *resp = NULL;
    CHECK_OK(iris_client_request_wait(c, NULL, "{\"op\":\"hi\"}", 0, &resp, NULL));
    CHECK(resp && strcmp(resp, "\"from the callback\"") == 0);
    iris_string_free(resp);
    CHECK(__atomic_load_n(&st.blocked_call, __ATOMIC_SEQ_CST) == IRIS_ERR_INVALID_STATE);
    CHECK(__atomic_load_n(&st.answered, __ATOMIC_SEQ_CST) == 1);
    /* The process's metrics, as Prometheus text: the answered request is counted. */
    char *metrics = NULL;
    size_t metrics_len = 0;
    CHECK_OK(iris_metrics_text(&metrics, &metrics_len));
    CHECK(metrics && strlen(metrics) == metrics_len);
    const char *answered = metrics ? strstr(metrics, "iris_rpc_requests_total{outcome=\"answered\"} ") : NULL;
    CHECK(answered && atoll(answered + strlen("iris_rpc_requests_total{outcome=\"answered\"} ")) >= 1);
    CHECK(metrics && strstr(metrics, "# TYPE iris_rpc_connections gauge") != NULL);
    iris_string_free(metrics);
    CHECK_RES(iris_metrics_text(NULL, NULL), IRIS_ERR_NULL_ARGUMENT);
    /* Closing from inside the callback: the request is answered, then the server closes. */
    resp = NULL;
    CHECK_OK(iris_client_request_wait(c, NULL, "{\"op\":\"close\"}", 0, &resp, NULL));
    iris_string_free(resp);
    long long deadline = now_ms() + WAIT;
    while (iris_client_is_connected(c) && now_ms() < deadline) usleep(10000);
    CHECK(!iris_client_is_connected(c));
    iris_client_free(c);
    iris_server_free(s);
}

/* Freeing a client with requests in flight: every callback runs (IRIS_ERR_CLOSED) before
 * free returns, then destroy. */
static void test_free_settles_everything(void) {
    collector se;
    collector_init(&se, 1); /* takes and holds the requests: nobody answers */
    iris_server *s = start_server(&se, "");
    if (!s) return;
    iris_client *c = start_client(s, SECRET, NULL, NULL, NULL);
    CHECK_OK(iris_client_wait_connected(c, WAIT));
    enum { N = 20 };
    outcome o[N];
    for (int i = 0; i < N; i++) {
        outcome_init(&o[i]);
        CHECK_OK(iris_client_request(c, NULL, "{\"op\":\"never\"}", 0, on_response, &o[i], NULL));
    }
    int si = 0;
    for (int i = 0; i < N; i++)
        CHECK(collector_wait(&se, IRIS_EVENT_REQUEST, NULL, &si, WAIT) >= 0);
    iris_client_free(c);
    for (int i = 0; i < N; i++) {
        CHECK(o[i].calls == 1 && o[i].result == IRIS_ERR_CLOSED);
        outcome_destroy(&o[i]);
    }
    iris_server_free(s); /* the held requests are freed with the collector */
    collector_destroy(&se);
}

int main(void) {
    make_certificates();
    run_test("pair: requests answered from C, errors, timeout, cancel, events, close",
             test_requests_answered_from_c);
    run_test("pair: pull model", test_pull_model);
    run_test("pair: wrong secret", test_wrong_secret);
    run_test("pair: callbacks may call the library", test_callback_rules);
    run_test("pair: free settles every request", test_free_settles_everything);
    free_certificates();
    return total_failed_tests ? 1 : 0;
}
