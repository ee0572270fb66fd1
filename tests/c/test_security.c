/* The `security` option from C: v2 between two iris-rpc peers (the default), the legacy
 * protocol when either side asks for it, require-v2 refusing legacy peers (ours set to
 * `legacy`, and the legacy Node package), and bad values. The mode negotiated with each peer
 * is the "mode" of iris_*_peers, next to "cipher". */
#include "common.h"

#define SECRET "c-security-secret"
#define WAIT 20000 /* generous: everything may run under valgrind */
#define LINE 8192

static int cipher_on = 1;

/* Sets `security` unless it is NULL (the default, prefer-v2). */
static void set_security(iris_options *o, const char *security) {
    if (security) CHECK_OK(iris_options_set_string(o, "security", security));
}

static iris_server *start_server(collector *events, const char *security) {
    iris_options *o = NULL;
    iris_server *s = NULL;
    CHECK_OK(iris_options_new(SECRET, &o));
    CHECK_OK(iris_options_set_string(o, "port", "127.0.0.1:0"));
    CHECK_OK(iris_options_set_string(o, "uuid", "c-security-server"));
    CHECK_OK(iris_options_set_bool(o, "cipher", cipher_on != 0));
    CHECK_OK(iris_options_set_certificates(o, key_pem, cert_pem, NULL));
    set_security(o, security);
    CHECK_OK(iris_server_bind(o, collect_event, events, collector_destroyed, &s));
    iris_options_free(o);
    return s;
}

static iris_client *start_client(int port, collector *events, const char *security) {
    iris_options *o = client_options(SECRET, port, "c-security-client");
    iris_client *c = NULL;
    CHECK_OK(iris_options_set_bool(o, "cipher", cipher_on != 0));
    CHECK_OK(iris_options_set_int(o, "reconnect_initial", 200));
    set_security(o, security);
    CHECK_OK(iris_client_connect(o, collect_event, events, collector_destroyed, &c));
    iris_options_free(o);
    return c;
}

/* The peers JSON has exactly one peer, with this mode and the cipher as set. */
static void check_peers(char *peers, const char *mode) {
    char want_mode[64];
    snprintf(want_mode, sizeof want_mode, "\"mode\":\"%s\"", mode);
    CHECK(peers && strstr(peers, want_mode));
    CHECK(peers && strstr(peers, cipher_on ? "\"cipher\":true" : "\"cipher\":false"));
    CHECK(peers && strstr(peers, "},{") == NULL);
    if (peers) fprintf(stderr, "peers: %s\n", peers);
    iris_string_free(peers);
}

/* A server and a client with these settings connect; an event each way and a request
 * round-trip; both see `mode`. */
static void check_pair_works(const char *server_security, const char *client_security,
                             const char *mode) {
    collector se, ce;
    collector_init(&se, 1);
    collector_init(&ce, 0);
    iris_server *s = start_server(&se, server_security);
    iris_client *c = s ? start_client((int)iris_server_port(s), &ce, client_security) : NULL;
    if (!s || !c) goto out;
    int si = 0, ci = 0, k;
    CHECK_OK(iris_client_wait_connected(c, WAIT));
    CHECK(collector_wait(&ce, IRIS_EVENT_CONNECT, NULL, &ci, WAIT) >= 0);
    CHECK(collector_wait(&se, IRIS_EVENT_CONNECT, NULL, &si, WAIT) >= 0);

    CHECK_OK(iris_client_dispatch(c, "{\"op\":\"up\",\"n\":1}", 0, NULL));
    k = collector_wait(&se, IRIS_EVENT_MESSAGE, "\"op\":\"up\"", &si, WAIT);
    CHECK(k >= 0 && strcmp(se.events[k].uuid, "c-security-client") == 0);
    CHECK_OK(iris_server_dispatch_to(s, "c-security-client", "{\"op\":\"down\",\"n\":2}", 0));
    CHECK(collector_wait(&ce, IRIS_EVENT_MESSAGE, "\"op\":\"down\"", &ci, WAIT) >= 0);

    outcome o;
    outcome_init(&o);
    CHECK_OK(iris_client_request(c, NULL, "{\"op\":\"add\",\"a\":2,\"b\":3}", 0, on_response, &o,
                                 NULL));
    k = collector_wait(&se, IRIS_EVENT_REQUEST, "\"op\":\"add\"", &si, WAIT);
    CHECK(k >= 0);
    if (k >= 0) {
        iris_request *r = collector_take_request(&se, k);
        CHECK_OK(iris_request_respond(r, NULL, "{\"sum\":5}"));
        iris_request_free(r);
    }
    CHECK(outcome_wait(&o, WAIT) == 1);
    CHECK(o.result == IRIS_OK && o.json && strcmp(o.json, "{\"sum\":5}") == 0);
    outcome_destroy(&o);

    char *peers = NULL;
    CHECK_OK(iris_client_peers(c, &peers));
    check_peers(peers, mode);
    peers = NULL;
    CHECK_OK(iris_server_peers(s, &peers));
    check_peers(peers, mode);
out:
    iris_client_free(c);
    iris_server_free(s);
    collector_destroy(&se);
    collector_destroy(&ce);
}

static void test_v2_default(void) { check_pair_works(NULL, NULL, "v2"); }
static void test_v2_explicit(void) { check_pair_works("prefer-v2", "require-v2", "v2"); }
static void test_legacy_both(void) { check_pair_works("legacy", "legacy", "legacy"); }
static void test_prefer_server_legacy_client(void) { check_pair_works(NULL, "legacy", "legacy"); }
static void test_legacy_server_prefer_client(void) { check_pair_works("legacy", NULL, "legacy"); }

/* The first error event at index >= *from (any kind of error), or -1. */
static int wait_error(collector *c, int *from) {
    return collector_wait(c, IRIS_EVENT_ERROR, NULL, from, WAIT);
}

static int has_connect(collector *c) {
    int from = 0;
    return collector_wait(c, IRIS_EVENT_CONNECT, NULL, &from, 0) >= 0;
}

/* A require-v2 server refuses a client set to legacy: the server says why, the client says
 * the server refused and why, and no stream comes up. */
static void test_require_server_legacy_client(void) {
    collector se, ce;
    collector_init(&se, 0);
    collector_init(&ce, 0);
    iris_server *s = start_server(&se, "require-v2");
    iris_client *c = s ? start_client((int)iris_server_port(s), &ce, "legacy") : NULL;
    if (s && c) {
        int si = 0, ci = 0;
        int k = wait_error(&se, &si);
        CHECK(k >= 0 && se.events[k].error_code == IRIS_ERR_AUTH);
        CHECK(k >= 0 && se.events[k].error_message &&
              strstr(se.events[k].error_message, "require-v2"));
        if (k >= 0) fprintf(stderr, "server error: %s\n", se.events[k].error_message);
        k = wait_error(&ce, &ci);
        CHECK(k >= 0 && ce.events[k].error_code == IRIS_ERR_AUTH);
        CHECK(k >= 0 && ce.events[k].error_message &&
              strstr(ce.events[k].error_message, "require-v2"));
        if (k >= 0) fprintf(stderr, "client error: %s\n", ce.events[k].error_message);
        CHECK_RES(iris_client_wait_connected(c, 300), IRIS_ERR_TIMEOUT);
        CHECK(!iris_client_is_connected(c));
        CHECK(!iris_server_is_connected(s));
        CHECK(!has_connect(&se) && !has_connect(&ce));
        char *peers = NULL;
        CHECK_OK(iris_server_peers(s, &peers));
        CHECK(peers && strcmp(peers, "[]") == 0);
        iris_string_free(peers);
    }
    iris_client_free(c);
    iris_server_free(s);
    collector_destroy(&se);
    collector_destroy(&ce);
}

/* A require-v2 client never connects to a server set to legacy, and says why. */
static void test_legacy_server_require_client(void) {
    collector se, ce;
    collector_init(&se, 0);
    collector_init(&ce, 0);
    iris_server *s = start_server(&se, "legacy");
    iris_client *c = s ? start_client((int)iris_server_port(s), &ce, "require-v2") : NULL;
    if (s && c) {
        int ci = 0;
        int k = wait_error(&ce, &ci);
        CHECK(k >= 0 && ce.events[k].error_code == IRIS_ERR_AUTH);
        CHECK(k >= 0 && ce.events[k].error_message &&
              strstr(ce.events[k].error_message, "require-v2"));
        if (k >= 0) fprintf(stderr, "client error: %s\n", ce.events[k].error_message);
        CHECK_RES(iris_client_wait_connected(c, 300), IRIS_ERR_TIMEOUT);
        CHECK(!iris_client_is_connected(c));
        CHECK(!iris_server_is_connected(s));
        CHECK(!has_connect(&se) && !has_connect(&ce));
        char *resp = NULL;
        CHECK_RES(iris_client_request_wait(c, NULL, "{\"op\":\"add\"}", 0, &resp, NULL),
                  IRIS_ERR_NOT_CONNECTED);
    }
    iris_client_free(c);
    iris_server_free(s);
    collector_destroy(&se);
    collector_destroy(&ce);
}

/* A bad value is a configuration error wherever it is set, and leaves the options as they
 * were. */
static void test_bad_value(void) {
    iris_options *o = NULL;
    CHECK_OK(iris_options_new(SECRET, &o));
    CHECK_RES(iris_options_set_string(o, "security", "v3"), IRIS_ERR_CONFIG);
    CHECK(strstr(iris_last_error_message(), "security") &&
          strstr(iris_last_error_message(), "require-v2"));
    fprintf(stderr, "bad value: %s\n", iris_last_error_message());
    /* Not a string: a configuration error too (the core's message names the type only). */
    CHECK_RES(iris_options_set_bool(o, "security", true), IRIS_ERR_CONFIG);
    CHECK_RES(iris_options_set_string(o, "security", "Require-V2"), IRIS_ERR_CONFIG);
    CHECK_OK(iris_options_set_string(o, "security", "require-v2"));
    CHECK_OK(iris_options_set_string(o, "security", "legacy"));
    CHECK_OK(iris_options_set_json(o, "security", "\"prefer-v2\""));
    iris_options_free(o);

    o = NULL;
    CHECK_RES(iris_options_from_json("{\"auth\":\"s\",\"security\":\"none\"}", 0, &o),
              IRIS_ERR_CONFIG);
    CHECK(o == NULL);
    CHECK(strstr(iris_last_error_message(), "security") != NULL);
    CHECK_OK(iris_options_from_json("{\"auth\":\"s\",\"security\":\"require-v2\"}", 0, &o));
    iris_options_free(o);
}

/* ---- against the legacy Node package ------------------------------------------------------ */

/* The default client with the legacy package's server: the legacy protocol, working. */
static void test_default_client_legacy_package(void) {
    legacy_peer p;
    int port = 0;
    memset(&p, 0, sizeof p);
    if (legacy_server_start(&p, SECRET, cipher_on, "", &port) != 0) {
        CHECK(!"legacy server started");
        return;
    }
    collector ce;
    collector_init(&ce, 0);
    iris_client *c = start_client(port, &ce, NULL);
    CHECK_OK(iris_client_wait_connected(c, WAIT));
    char *resp = NULL;
    CHECK_OK(iris_client_request_wait(c, NULL, "{\"op\":\"add\",\"a\":2,\"b\":3}", 0, &resp, NULL));
    CHECK(resp && strcmp(resp, "{\"sum\":5}") == 0);
    iris_string_free(resp);
    char *peers = NULL;
    CHECK_OK(iris_client_peers(c, &peers));
    check_peers(peers, "legacy");
    iris_client_free(c);
    legacy_stop(&p);
    collector_destroy(&ce);
}

/* A require-v2 client never connects to the legacy package's server. */
static void test_require_client_legacy_package(void) {
    legacy_peer p;
    int port = 0;
    memset(&p, 0, sizeof p);
    if (legacy_server_start(&p, SECRET, cipher_on, "", &port) != 0) {
        CHECK(!"legacy server started");
        return;
    }
    collector ce;
    collector_init(&ce, 0);
    iris_client *c = start_client(port, &ce, "require-v2");
    int ci = 0;
    int k = wait_error(&ce, &ci);
    CHECK(k >= 0 && ce.events[k].error_code == IRIS_ERR_AUTH);
    CHECK(k >= 0 && ce.events[k].error_message &&
          strstr(ce.events[k].error_message, "require-v2"));
    if (k >= 0) fprintf(stderr, "client error: %s\n", ce.events[k].error_message);
    CHECK(!iris_client_is_connected(c));
    CHECK(!has_connect(&ce));
    char line[LINE];
    legacy_send(&p, "{\"cmd\":\"connected\"}");
    CHECK(legacy_wait(&p, "\"ev\":\"connected\"", line, sizeof line, WAIT) == 0);
    CHECK(strstr(line, "\"value\":false") != NULL);
    iris_client_free(c);
    legacy_stop(&p);
    collector_destroy(&ce);
}

/* A require-v2 server refuses the legacy package's client, and says why. */
static void test_require_server_legacy_package(void) {
    collector se;
    collector_init(&se, 0);
    iris_server *s = start_server(&se, "require-v2");
    if (!s) return;
    legacy_peer p;
    memset(&p, 0, sizeof p);
    char fields[512];
    snprintf(fields, sizeof fields,
             "\"role\":\"client\",\"auth\":\"%s\",\"address\":\"127.0.0.1:%u\",\"cipher\":%s,"
             "\"uuid\":\"legacy-client-uuid\"",
             SECRET, (unsigned)iris_server_port(s), cipher_on ? "true" : "false");
    if (legacy_start(&p, fields) == 0) {
        int si = 0;
        int k = wait_error(&se, &si);
        CHECK(k >= 0 && se.events[k].error_code == IRIS_ERR_AUTH);
        CHECK(k >= 0 && se.events[k].error_message &&
              strstr(se.events[k].error_message, "require-v2"));
        if (k >= 0) fprintf(stderr, "server error: %s\n", se.events[k].error_message);
        CHECK(!iris_server_is_connected(s));
        CHECK(!has_connect(&se));
        char line[LINE];
        legacy_send(&p, "{\"cmd\":\"connected\"}");
        CHECK(legacy_wait(&p, "\"ev\":\"connected\"", line, sizeof line, WAIT) == 0);
        CHECK(strstr(line, "\"value\":false") != NULL);
        legacy_stop(&p);
    } else {
        CHECK(!"legacy client started");
    }
    iris_server_free(s);
    collector_destroy(&se);
}

int main(void) {
    make_certificates();
    for (cipher_on = 1; cipher_on >= 0; cipher_on--) {
        const char *suffix = cipher_on ? " (cipher on)" : " (cipher off)";
        char name[160];
#define RUN(title, fn)                                                   \
    do {                                                                 \
        snprintf(name, sizeof name, "security: %s%s", title, suffix);    \
        run_test(name, fn);                                              \
    } while (0)
        RUN("default client and server speak v2", test_v2_default);
        RUN("prefer-v2 server, require-v2 client speak v2", test_v2_explicit);
        RUN("legacy on both sides", test_legacy_both);
        RUN("prefer-v2 server, legacy client fall back", test_prefer_server_legacy_client);
        RUN("legacy server, prefer-v2 client fall back", test_legacy_server_prefer_client);
        RUN("require-v2 server refuses a legacy client", test_require_server_legacy_client);
        RUN("require-v2 client never connects to a legacy server",
            test_legacy_server_require_client);
        RUN("default client with the legacy package's server", test_default_client_legacy_package);
        RUN("require-v2 client never connects to the legacy package",
            test_require_client_legacy_package);
        RUN("require-v2 server refuses the legacy package's client",
            test_require_server_legacy_package);
#undef RUN
    }
    cipher_on = 1;
    run_test("security: a bad value is a configuration error", test_bad_value);
    free_certificates();
    return total_failed_tests ? 1 : 0;
}
