/* The C conventions themselves: NULL, invalid UTF-8 and invalid JSON give error codes,
 * outputs are written only on success, _free(NULL) does nothing, the last error message is
 * per thread, options are checked as they are set, and destroy runs exactly once. */
#include "common.h"

static void test_free_null_and_texts(void) {
    iris_string_free(NULL);
    iris_options_free(NULL);
    iris_client_free(NULL);
    iris_server_free(NULL);
    iris_event_free(NULL);
    iris_request_free(NULL);
    CHECK(strcmp(iris_result_text(IRIS_OK), "ok") == 0);
    CHECK(strcmp(iris_result_text(IRIS_ERR_TIMEOUT), "timeout") == 0);
    CHECK(strcmp(iris_result_text(IRIS_ERR_NOT_CONNECTED), "not_connected") == 0);
    CHECK(strcmp(iris_result_text(12345), "unknown") == 0);
    CHECK(iris_version() && strlen(iris_version()) > 0);
    /* Stable numbers. */
    CHECK(IRIS_ERR_NULL_ARGUMENT == 1 && IRIS_ERR_INVALID_JSON == 3 && IRIS_ERR_CONFIG == 100);
    CHECK(IRIS_ERR_AUTH == 103 && IRIS_ERR_REMOTE == 110 && IRIS_ERR_CANCELLED == 111);
    CHECK(IRIS_EVENT_CONNECT == 1 && IRIS_EVENT_LISTEN == 6);
    /* Accessors on NULL give NULL / 0. */
    CHECK(iris_event_get_kind(NULL) == 0 && iris_event_uuid(NULL) == NULL);
    CHECK(iris_event_json(NULL, NULL) == NULL && iris_event_error_code(NULL) == IRIS_OK);
    CHECK(iris_request_json(NULL, NULL) == NULL && iris_request_op(NULL) == NULL);
    CHECK(iris_client_uuid(NULL) == NULL && !iris_client_is_connected(NULL));
    CHECK(iris_server_port(NULL) == 0);
}

static void test_null_arguments(void) {
    iris_options *o = (iris_options *)0x1; /* must stay untouched on failure */
    CHECK_RES(iris_options_new(NULL, &o), IRIS_ERR_NULL_ARGUMENT);
    CHECK(o == (iris_options *)0x1);
    CHECK_RES(iris_options_new("s", NULL), IRIS_ERR_NULL_ARGUMENT);
    CHECK(strstr(iris_last_error_message(), "NULL") != NULL);
    CHECK_RES(iris_options_from_json(NULL, 0, &o), IRIS_ERR_NULL_ARGUMENT);
    CHECK_RES(iris_options_set_string(NULL, "uuid", "u"), IRIS_ERR_NULL_ARGUMENT);
    CHECK_RES(iris_client_connect(NULL, NULL, NULL, NULL, NULL), IRIS_ERR_NULL_ARGUMENT);
    CHECK_RES(iris_server_bind(NULL, NULL, NULL, NULL, NULL), IRIS_ERR_NULL_ARGUMENT);
    CHECK_RES(iris_client_dispatch(NULL, "{}", 0, NULL), IRIS_ERR_NULL_ARGUMENT);
    CHECK_RES(iris_client_request(NULL, NULL, "{}", 0, on_response, NULL, NULL),
              IRIS_ERR_NULL_ARGUMENT);
    CHECK_RES(iris_server_next_event(NULL, 0, NULL), IRIS_ERR_NULL_ARGUMENT);
    CHECK_RES(iris_request_respond(NULL, NULL, "1"), IRIS_ERR_NULL_ARGUMENT);
    CHECK_RES(iris_event_take_request(NULL, NULL), IRIS_ERR_NULL_ARGUMENT);
    CHECK_RES(iris_self_signed_pem(NULL, NULL), IRIS_ERR_NULL_ARGUMENT);
    CHECK_RES(iris_client_close(NULL), IRIS_ERR_NULL_ARGUMENT);
}

static void test_invalid_text(void) {
    iris_options *o = NULL;
    CHECK_RES(iris_options_new("bad \xff utf8", &o), IRIS_ERR_INVALID_UTF8);
    CHECK_RES(iris_options_from_json("{\"auth\":", 0, &o), IRIS_ERR_INVALID_JSON);
    CHECK_RES(iris_options_from_json("[1,2]", 0, &o), IRIS_ERR_INVALID_JSON);
    /* Length-delimited text: only `len` bytes are read (no NUL needed). */
    const char buf[] = {'{', '"', 'a', 'u', 't', 'h', '"', ':', '"', 's', '"', '}', 'X', 'X'};
    CHECK_OK(iris_options_from_json(buf, 12, &o));
    char *json = NULL;
    CHECK_OK(iris_options_to_json(o, &json));
    CHECK(json && strcmp(json, "{\"auth\":\"s\"}") == 0);
    iris_string_free(json);
    CHECK_RES(iris_options_set_json(o, "timeout", "not json"), IRIS_ERR_INVALID_JSON);
    CHECK_RES(iris_options_set_string(o, "uuid", "\xc3\x28"), IRIS_ERR_INVALID_UTF8);
    iris_options_free(o);
}

static void test_options_checked_when_set(void) {
    iris_options *o = NULL;
    CHECK_OK(iris_options_new("secret", &o));
    CHECK_RES(iris_options_set_string(o, "port", "a:b:c"), IRIS_ERR_CONFIG);
    CHECK_RES(iris_options_set_string(o, "cipher", "des"), IRIS_ERR_CONFIG);
    CHECK_RES(iris_options_set_string(o, "timeout", "soon"), IRIS_ERR_CONFIG);
    CHECK_OK(iris_options_set_int(o, "timeout", 1500));
    CHECK_OK(iris_options_set_bool(o, "rejectUnauthorized", false));
    CHECK_OK(iris_options_set_json(o, "routes", "[\"u1\",\"u2\"]"));
    CHECK_OK(iris_options_add_address(o, "127.0.0.1:1"));
    CHECK_OK(iris_options_add_address(o, "127.0.0.1:2"));
    char *json = NULL;
    CHECK_OK(iris_options_to_json(o, &json));
    /* A refused value left the options as they were. */
    CHECK(json && !strstr(json, "a:b:c") && !strstr(json, "des") && strstr(json, "\"timeout\":1500"));
    CHECK(json && strstr(json, "\"address\":[\"127.0.0.1:1\",\"127.0.0.1:2\"]"));
    iris_string_free(json);
    iris_options_free(o);
    /* Secret left out, set later. */
    CHECK_OK(iris_options_from_json("{\"cipher\":false}", 0, &o));
    CHECK_OK(iris_options_set_string(o, "secret", "later"));
    iris_options_free(o);
}

static int destroyed;
static void count_destroy(void *ud) {
    (void)ud;
    destroyed++;
}

static void test_creation_failures(void) {
    iris_options *o = NULL;
    iris_server *s = (iris_server *)0x1;
    iris_client *c = (iris_client *)0x1;
    CHECK_OK(iris_options_new("secret", &o));
    /* No certificates, no port: the server refuses; destroy still runs once. */
    destroyed = 0;
    CHECK_RES(iris_server_bind(o, NULL, NULL, count_destroy, &s), IRIS_ERR_CONFIG);
    CHECK(s == (iris_server *)0x1 && destroyed == 1);
    CHECK(strstr(iris_last_error_message(), "port") || strstr(iris_last_error_message(), "certif"));
    /* No address: the client refuses. */
    destroyed = 0;
    CHECK_RES(iris_client_connect(o, collect_event, NULL, count_destroy, &c), IRIS_ERR_CONFIG);
    CHECK(c == (iris_client *)0x1 && destroyed == 1);
    /* Unreadable certificate files. */
    CHECK_OK(iris_options_set_string(o, "port", "127.0.0.1:0"));
    CHECK_OK(iris_options_set_certificates(o, "/nonexistent/key.pem", "/nonexistent/cert.pem", NULL));
    destroyed = 0;
    CHECK_RES(iris_server_bind(o, NULL, NULL, count_destroy, &s), IRIS_ERR_CONFIG);
    CHECK(destroyed == 1 && strstr(iris_last_error_message(), "/nonexistent/"));
    /* Garbage PEM text. */
    CHECK_OK(iris_options_set_certificates(o, "-----BEGIN PRIVATE KEY-----\nxx\n", cert_pem, NULL));
    CHECK(iris_server_bind(o, NULL, NULL, NULL, &s) != IRIS_OK);
    iris_options_free(o);
}

/* Certificates from files (paths instead of PEM text), and a server/client doing nothing. */
static void test_certificate_files(void) {
    char dir[] = "/tmp/iris-c-test-XXXXXX";
    if (!mkdtemp(dir)) {
        CHECK(!"mkdtemp");
        return;
    }
    char key_path[128], cert_path[128];
    snprintf(key_path, sizeof key_path, "%s/key.pem", dir);
    snprintf(cert_path, sizeof cert_path, "%s/cert.pem", dir);
    FILE *f = fopen(key_path, "w");
    if (f) {
        fputs(key_pem, f);
        fclose(f);
    }
    f = fopen(cert_path, "w");
    if (f) {
        fputs(cert_pem, f);
        fclose(f);
    }
    iris_options *o = NULL;
    iris_server *s = NULL;
    CHECK_OK(iris_options_new("secret", &o));
    CHECK_OK(iris_options_set_string(o, "port", "127.0.0.1:0"));
    CHECK_OK(iris_options_set_certificates(o, key_path, cert_path, NULL));
    CHECK_OK(iris_server_bind(o, NULL, NULL, NULL, &s));
    iris_options_free(o);
    CHECK(iris_server_port(s) != 0);
    char *addr = NULL;
    CHECK_OK(iris_server_address(s, &addr));
    CHECK(addr && strncmp(addr, "127.0.0.1:", 10) == 0);
    iris_string_free(addr);
    char *peers = NULL;
    CHECK_OK(iris_server_peers(s, &peers));
    CHECK(peers && strcmp(peers, "[]") == 0);
    iris_string_free(peers);
    /* Nothing connected: sends fail cleanly. */
    CHECK_RES(iris_server_dispatch(s, "{\"op\":\"x\"}", 0, NULL), IRIS_ERR_NOT_CONNECTED);
    CHECK_RES(iris_server_dispatch(s, "[1]", 0, NULL), IRIS_ERR_INVALID_JSON);
    CHECK_RES(iris_server_dispatch(s, "{\"op\":", 0, NULL), IRIS_ERR_INVALID_JSON);
    CHECK_RES(iris_server_set_ping_data(s, "{oops"), IRIS_ERR_INVALID_JSON);
    char *resp = (char *)0x1;
    CHECK_RES(iris_server_request_wait(s, NULL, "{\"op\":\"x\"}", 0, &resp, NULL),
              IRIS_ERR_NOT_CONNECTED);
    CHECK(resp == (char *)0x1);
    CHECK(strstr(iris_last_error_message(), "\"disconnected\":true") != NULL);
    /* Pull mode: the listen event, then nothing. */
    iris_event *ev = NULL;
    CHECK_OK(iris_server_next_event(s, 20000, &ev));
    CHECK(iris_event_get_kind(ev) == IRIS_EVENT_LISTEN && iris_event_uuid(ev) == NULL);
    iris_event_free(ev);
    ev = NULL;
    CHECK_RES(iris_server_next_event(s, 20, &ev), IRIS_ERR_TIMEOUT);
    CHECK(ev == NULL);
    iris_server_free(s);
    unlink(key_path);
    unlink(cert_path);
    rmdir(dir);
}

static void test_pull_refused_in_callback_mode(void) {
    collector col;
    collector_init(&col, 0);
    iris_options *o = NULL;
    iris_server *s = NULL;
    CHECK_OK(iris_options_new("secret", &o));
    CHECK_OK(iris_options_set_string(o, "port", "127.0.0.1:0"));
    CHECK_OK(iris_options_set_certificates(o, key_pem, cert_pem, NULL));
    CHECK_OK(iris_server_bind(o, collect_event, &col, collector_destroyed, &s));
    iris_options_free(o);
    iris_event *ev = NULL;
    CHECK_RES(iris_server_next_event(s, 10, &ev), IRIS_ERR_INVALID_STATE);
    CHECK(ev == NULL);
    int i = 0;
    CHECK(collector_wait(&col, IRIS_EVENT_LISTEN, NULL, &i, 20000) == 0);
    iris_server_free(s);
    CHECK(col.destroyed == 1);
    collector_destroy(&col);
}

static void *other_thread(void *arg) {
    (void)arg;
    iris_options *o = NULL;
    iris_options_new(NULL, &o); /* fails on this thread only */
    return NULL;
}

static void test_last_error_is_per_thread(void) {
    iris_options *o = NULL;
    CHECK_RES(iris_options_from_json("{", 0, &o), IRIS_ERR_INVALID_JSON);
    const char *mine = iris_last_error_message();
    char copy[256];
    snprintf(copy, sizeof copy, "%s", mine);
    pthread_t t;
    pthread_create(&t, NULL, other_thread, NULL);
    pthread_join(t, NULL);
    CHECK(strcmp(iris_last_error_message(), copy) == 0);
    CHECK(strstr(copy, "JSON") != NULL);
}

int main(void) {
    make_certificates();
    run_test("api: free(NULL), result texts, stable numbers", test_free_null_and_texts);
    run_test("api: NULL arguments", test_null_arguments);
    run_test("api: invalid UTF-8 and JSON", test_invalid_text);
    run_test("api: options checked when set", test_options_checked_when_set);
    run_test("api: creation failures call destroy once", test_creation_failures);
    run_test("api: certificate files, nothing connected", test_certificate_files);
    run_test("api: pulling refused in callback mode", test_pull_refused_in_callback_mode);
    run_test("api: last error is per thread", test_last_error_is_per_thread);
    free_certificates();
    return total_failed_tests ? 1 : 0;
}
