/* The multiplexer through the C ABI: a server link and a client link built from one JSON
 * config, events tagged with their link, dispatch to all and to one uuid, requests both ways,
 * active(), the pull model and the argument checks. */
#include "common.h"

#define SECRET "c-mux-secret"
#define WAIT 20000

static iris_server *start_server(collector *events) {
    iris_options *o = NULL;
    iris_server *s = NULL;
    CHECK_OK(iris_options_new(SECRET, &o));
    CHECK_OK(iris_options_set_string(o, "port", "127.0.0.1:0"));
    CHECK_OK(iris_options_set_string(o, "uuid", "c-server-uuid"));
    CHECK_OK(iris_options_set_certificates(o, key_pem, cert_pem, NULL));
    CHECK_OK(iris_server_bind(o, collect_event, events, collector_destroyed, &s));
    iris_options_free(o);
    return s;
}

static iris_client *start_client(int port, collector *events) {
    iris_options *o = client_options(SECRET, port, "c-client-uuid");
    iris_client *c = NULL;
    CHECK_OK(iris_options_set_int(o, "reconnect_initial", 200));
    CHECK_OK(iris_client_connect(o, collect_event, events, collector_destroyed, &c));
    iris_options_free(o);
    return c;
}

/* {"srv":{"port":..,"certificates":{..}},"cli":{"address":"127.0.0.1:PORT"}} */
static char *make_config(int server_port) {
    static char config[16384];
    config[0] = '\0';
    json_appendf(config, sizeof config,
                 "{\"srv\":{\"port\":\"127.0.0.1:0\",\"certificates\":{\"key\":");
    json_append_string(config, sizeof config, key_pem);
    json_appendf(config, sizeof config, ",\"cert\":");
    json_append_string(config, sizeof config, cert_pem);
    json_appendf(config, sizeof config, "}},\"cli\":{\"address\":\"127.0.0.1:%d\"}}", server_port);
    return config;
}

static const char *COMMON = "{\"auth\":\"" SECRET "\",\"uuid\":\"mux-uuid\",\"designation\":\"mux\"}";

/* Waits for an event of `kind` from link `link`; its index or -1. */
static int wait_link(collector *c, uint32_t kind, const char *link, const char *uuid, int *from) {
    for (;;) {
        int k = collector_wait(c, kind, NULL, from, WAIT);
        if (k < 0) return -1;
        /* the collector does not copy the link; the uuid tells the peers apart */
        (void)link;
        if (!uuid || (c->events[k].uuid && strcmp(c->events[k].uuid, uuid) == 0)) return k;
    }
}

typedef struct {
    collector events;
    pthread_mutex_t mu;
    char links[MAX_EVENTS][16];
} link_log;

static link_log mux_log;

static void mux_event(void *user_data, const iris_event *ev) {
    link_log *l = (link_log *)user_data;
    const char *link = iris_event_link(ev);
    pthread_mutex_lock(&l->mu);
    int i = l->events.count;
    if (i < MAX_EVENTS) snprintf(l->links[i], sizeof l->links[i], "%s", link ? link : "");
    pthread_mutex_unlock(&l->mu);
    collect_event(&l->events, ev);
}

static void mux_destroyed(void *user_data) { collector_destroyed(&((link_log *)user_data)->events); }

static void test_mux_links(void) {
    collector se, ce;
    collector_init(&se, 1);
    collector_init(&ce, 1);
    memset(&mux_log, 0, sizeof mux_log);
    collector_init(&mux_log.events, 1);
    pthread_mutex_init(&mux_log.mu, NULL);
    collector *me = &mux_log.events;
    iris_server *s = start_server(&se);
    iris_multiplexer *m = NULL;
    iris_client *c = NULL;
    int mi = 0, si = 0, ci = 0, k;
    if (!s) goto out;
    CHECK_OK(iris_multiplexer_from_config(COMMON, make_config(iris_server_port(s)), NULL,
                                          mux_event, &mux_log, mux_destroyed, &m));
    if (!m) goto out;
    int port = iris_multiplexer_link_port(m, "srv");
    CHECK(port > 0);
    CHECK(iris_multiplexer_link_port(m, "cli") == 0);
    CHECK(iris_multiplexer_link_port(m, "nope") == 0);

    k = collector_wait(me, IRIS_EVENT_LISTEN, NULL, &mi, WAIT);
    CHECK(k >= 0 && strcmp(mux_log.links[k], "srv") == 0);
    mi = 0;
    k = wait_link(me, IRIS_EVENT_CONNECT, "cli", "c-server-uuid", &mi);
    CHECK(k >= 0 && strcmp(mux_log.links[k], "cli") == 0);
    CHECK(collector_wait(&se, IRIS_EVENT_CONNECT, NULL, &si, WAIT) >= 0);

    c = start_client(port, &ce);
    CHECK_OK(iris_client_wait_connected(c, WAIT));
    mi = 0;
    k = wait_link(me, IRIS_EVENT_CONNECT, "srv", "c-client-uuid", &mi);
    CHECK(k >= 0 && strcmp(mux_log.links[k], "srv") == 0);

    char *json = NULL;
    CHECK_OK(iris_multiplexer_active(m, &json));
    CHECK(json && strstr(json, "\"uuid\":\"c-client-uuid\"") && strstr(json, "\"link\":\"srv\""));
    CHECK(json && strstr(json, "\"uuid\":\"c-server-uuid\"") && strstr(json, "\"link\":\"cli\""));
    iris_string_free(json);

    /* dispatch reaches both links; dispatch_to only the one it names. */
    size_t sent = 0;
    CHECK_OK(iris_multiplexer_dispatch(m, "{\"op\":\"all\"}", 0, &sent));
    CHECK(sent == 2);
    CHECK(collector_wait(&se, IRIS_EVENT_MESSAGE, "\"op\":\"all\"", &si, WAIT) >= 0);
    CHECK(collector_wait(&ce, IRIS_EVENT_MESSAGE, "\"op\":\"all\"", &ci, WAIT) >= 0);
    CHECK_OK(iris_multiplexer_dispatch_to(m, "c-client-uuid", "{\"op\":\"one\"}", 0));
    CHECK(collector_wait(&ce, IRIS_EVENT_MESSAGE, "\"op\":\"one\"", &ci, WAIT) >= 0);
    CHECK_RES(iris_multiplexer_dispatch_to(m, "nobody", "{\"op\":\"x\"}", 0),
              IRIS_ERR_NOT_CONNECTED);

    /* A request from the multiplexer to the server, by uuid. */
    {
        outcome o;
        outcome_init(&o);
        CHECK_OK(iris_multiplexer_request(m, "c-server-uuid", "{\"op\":\"add\",\"a\":1,\"b\":2}", 0,
                                          on_response, &o, NULL));
        k = collector_wait(&se, IRIS_EVENT_REQUEST, "\"op\":\"add\"", &si, WAIT);
        CHECK(k >= 0 && strcmp(se.events[k].uuid, "mux-uuid") == 0);
        if (k >= 0) {
            iris_request *req = collector_take_request(&se, k);
            CHECK_OK(iris_request_respond(req, NULL, "{\"sum\":3}"));
            iris_request_free(req);
        }
        CHECK(outcome_wait(&o, WAIT) == 1);
        CHECK(o.result == IRIS_OK && o.json && strcmp(o.json, "{\"sum\":3}") == 0);
        outcome_destroy(&o);
    }
    /* A request from the client arrives as a request event of link "srv". */
    {
        outcome o;
        outcome_init(&o);
        CHECK_OK(iris_client_request(c, NULL, "{\"op\":\"ask\"}", 0, on_response, &o, NULL));
        k = collector_wait(me, IRIS_EVENT_REQUEST, "\"op\":\"ask\"", &mi, WAIT);
        CHECK(k >= 0 && strcmp(mux_log.links[k], "srv") == 0);
        if (k >= 0) {
            iris_request *req = collector_take_request(me, k);
            CHECK_OK(iris_request_respond(req, NULL, "\"answer\""));
            iris_request_free(req);
        }
        CHECK(outcome_wait(&o, WAIT) == 1);
        CHECK(o.result == IRIS_OK && o.json && strcmp(o.json, "\"answer\"") == 0);
        outcome_destroy(&o);
    }
    /* request_wait with a remote error, and cancel. */
    {
        char *resp = NULL;
        outcome o;
        outcome_init(&o);
        uint64_t id = 0;
        CHECK_OK(iris_multiplexer_request(m, "c-server-uuid", "{\"op\":\"slow\"}", 0, on_response,
                                          &o, &id));
        CHECK(collector_wait(&se, IRIS_EVENT_REQUEST, "\"op\":\"slow\"", &si, WAIT) >= 0);
        CHECK_OK(iris_multiplexer_request_cancel(m, id));
        CHECK(outcome_wait(&o, WAIT) == 1 && o.result == IRIS_ERR_CANCELLED);
        CHECK_RES(iris_multiplexer_request_cancel(m, id), IRIS_ERR_NOT_FOUND);
        outcome_destroy(&o);
        CHECK_RES(iris_multiplexer_request_wait(m, "nobody", "{\"op\":\"x\"}", 0, &resp, NULL),
                  IRIS_ERR_NOT_CONNECTED);
    }

out:
    iris_client_free(c);
    iris_multiplexer_free(m);
    CHECK(m == NULL || me->destroyed == 1);
    iris_server_free(s);
    collector_destroy(&ce);
    collector_destroy(&se);
    collector_destroy(me);
    pthread_mutex_destroy(&mux_log.mu);
}

static void test_mux_pull_and_arguments(void) {
    iris_multiplexer *m = NULL;
    int destroyed = 0;
    collector d;
    collector_init(&d, 0);
    CHECK_RES(iris_multiplexer_from_config(COMMON, "{not json", NULL, NULL, &d,
                                           collector_destroyed, &m),
              IRIS_ERR_INVALID_JSON);
    CHECK_RES(iris_multiplexer_from_config(COMMON, NULL, NULL, NULL, &d, collector_destroyed, &m),
              IRIS_ERR_NULL_ARGUMENT);
    CHECK_RES(iris_multiplexer_from_config(
                  COMMON, "{\"a\":{\"port\":\"127.0.0.1:0\",\"address\":\"127.0.0.1:1\"}}", NULL,
                  NULL, &d, collector_destroyed, &m),
              IRIS_ERR_CONFIG);
    destroyed = d.destroyed;
    CHECK(destroyed == 3 && m == NULL);
    collector_destroy(&d);

    /* One link titled "solo", a server, events pulled. */
    char config[16384];
    config[0] = '\0';
    json_appendf(config, sizeof config, "{\"port\":\"127.0.0.1:0\",\"certificates\":{\"key\":");
    json_append_string(config, sizeof config, key_pem);
    json_appendf(config, sizeof config, ",\"cert\":");
    json_append_string(config, sizeof config, cert_pem);
    json_appendf(config, sizeof config, "}}");
    CHECK_OK(iris_multiplexer_from_config(COMMON, config, "solo", NULL, NULL, NULL, &m));
    if (!m) return;
    CHECK(iris_multiplexer_link_port(m, "solo") > 0);
    iris_event *ev = NULL;
    CHECK_OK(iris_multiplexer_next_event(m, WAIT, &ev));
    CHECK(ev && iris_event_get_kind(ev) == IRIS_EVENT_LISTEN &&
          strcmp(iris_event_link(ev), "solo") == 0);
    iris_event_free(ev);
    ev = NULL;
    CHECK_RES(iris_multiplexer_next_event(m, 0, &ev), IRIS_ERR_TIMEOUT);
    CHECK_RES(iris_multiplexer_dispatch(m, "{\"op\":\"x\"}", 0, NULL), IRIS_ERR_NOT_CONNECTED);
    CHECK_OK(iris_multiplexer_close(m));
    iris_result r;
    while ((r = iris_multiplexer_next_event(m, 1000, &ev)) == IRIS_OK) {
        iris_event_free(ev);
        ev = NULL;
    }
    CHECK(r == IRIS_ERR_CLOSED);
    iris_multiplexer_free(m);
    iris_multiplexer_free(NULL);
    CHECK(iris_multiplexer_link_port(NULL, "solo") == 0);
    CHECK(iris_event_link(NULL) == NULL);
}

int main(int argc, char **argv) {
    (void)argc;
    (void)argv;
    make_certificates();
    run_test("multiplexer: server and client links, requests both ways", test_mux_links);
    run_test("multiplexer: pull model and arguments", test_mux_pull_and_arguments);
    free_certificates();
    return total_failed_tests ? 1 : 0;
}
