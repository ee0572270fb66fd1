/* A C router in a cluster of routers (docs/CLUSTER.md): a nats-server and an `iris-rpc router
 * --cluster` run as child processes, the C router joins them with
 * iris_router_start_clustered; a C client on the C router's frontend and a legacy Node client
 * (its own process) on the CLI router's backend exchange addressed events, broadcasts and
 * requests both ways, each seeing the other's uuid as the sender. Also: the cluster options'
 * checks and NATS unreachable at start, which need no nats-server.
 *
 * IRIS_RPC_BIN names the iris-rpc executable (scripts/test-c builds it); without nats-server
 * (tests/cluster/nats-server.sh installs it) the cluster test is skipped with a message. */
#include "common.h"

#define SECRET "c-cluster-secret"
#define WAIT 20000 /* generous: the C side runs under valgrind */
#define LINE 8192

/* Ends a child that does not read stdin: SIGTERM, then SIGKILL if it lingers. */
static void child_kill(legacy_peer *p) {
    if (p->pid > 0) kill(p->pid, SIGTERM);
    child_end(p);
}

static const char *nats_bin(void) {
    return getenv("NATS_SERVER") ? getenv("NATS_SERVER") : "nats-server";
}

/* Whether `nats-server --version` runs. */
static int nats_installed(void) {
    char *argv[] = {(char *)nats_bin(), "--version", NULL};
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    pid_t pid;
    int rc = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    int status = 1;
    if (rc == 0) waitpid(pid, &status, 0);
    return rc == 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

static int port_open(int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons((uint16_t)port);
    int ok = fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    if (fd >= 0) close(fd);
    return ok;
}

static iris_options *side_options(const char *port, const char *uuid) {
    iris_options *o = NULL;
    CHECK_OK(iris_options_new(SECRET, &o));
    CHECK_OK(iris_options_set_string(o, "port", port));
    CHECK_OK(iris_options_set_string(o, "uuid", uuid));
    CHECK_OK(iris_options_set_certificates(o, key_pem, cert_pem, NULL));
    return o;
}

/* The C router: frontend and backend servers on free ports, in the cluster `servers`. */
static iris_result start_c_router(const char *servers, const char *token, iris_router **out) {
    iris_cluster_options *c = NULL;
    iris_result r = iris_cluster_options_new(servers, &c);
    if (r != IRIS_OK) return r;
    if (token) CHECK_OK(iris_cluster_options_set_token(c, token));
    iris_options *f = side_options("127.0.0.1:0", "c-router-f");
    iris_options *b = side_options("127.0.0.1:0", "c-router-b");
    r = iris_router_start_clustered(f, b, true, c, NULL, NULL, NULL, out);
    iris_options_free(f);
    iris_options_free(b);
    iris_cluster_options_free(c);
    return r;
}

static void test_options(void) {
    iris_cluster_options *c = NULL;
    CHECK_RES(iris_cluster_options_new(NULL, &c), IRIS_ERR_NULL_ARGUMENT);
    CHECK_RES(iris_cluster_options_new("nats://127.0.0.1:4222", NULL), IRIS_ERR_NULL_ARGUMENT);
    CHECK_RES(iris_cluster_options_new(" , ", &c), IRIS_ERR_CONFIG);
    CHECK(c == NULL);
    CHECK_OK(iris_cluster_options_new("nats://127.0.0.1:4222,nats://127.0.0.1:4223", &c));
    CHECK_RES(iris_cluster_options_set_name(c, "no spaces"), IRIS_ERR_CONFIG);
    CHECK_OK(iris_cluster_options_set_name(c, "c-test"));
    CHECK_OK(iris_cluster_options_set_token(c, "t0ken"));
    /* One credential: a second kind is refused and the first stays. */
    CHECK_RES(iris_cluster_options_set_user_password(c, "u", "p"), IRIS_ERR_CONFIG);
    CHECK_RES(iris_cluster_options_set_nkey_seed(c, "SUA"), IRIS_ERR_CONFIG);
    CHECK_RES(iris_cluster_options_set_credentials_file(c, "x.creds"), IRIS_ERR_CONFIG);
    CHECK(strstr(iris_last_error_message(), "t0ken") == NULL);
    CHECK_RES(iris_cluster_options_set_user_password(c, "u", NULL), IRIS_ERR_NULL_ARGUMENT);
    CHECK_OK(iris_cluster_options_set_require_tls(c, false));
    CHECK_OK(iris_cluster_options_set_ca_file(c, "ca.pem"));
    CHECK_RES(iris_cluster_options_set_token(NULL, "t"), IRIS_ERR_NULL_ARGUMENT);
    iris_cluster_options_free(c);
    iris_cluster_options_free(NULL);

    c = NULL;
    CHECK_OK(iris_cluster_options_from_json("\"nats://127.0.0.1:4222\"", 0, &c));
    iris_cluster_options_free(c);
    c = NULL;
    CHECK_OK(iris_cluster_options_from_json(
        "{\"servers\":[\"nats://127.0.0.1:4222\"],\"user\":\"u\",\"password\":\"pw\"}", 0, &c));
    iris_cluster_options_free(c);
    c = NULL;
    CHECK_RES(iris_cluster_options_from_json("{\"servers\":\"nats://h:1\",\"tokn\":\"x\"}", 0, &c),
              IRIS_ERR_CONFIG);
    CHECK(strstr(iris_last_error_message(), "tokn") != NULL);
    CHECK_RES(iris_cluster_options_from_json("{\"servers\":\"nats://h:1\",\"user\":\"u\"}", 0, &c),
              IRIS_ERR_CONFIG);
    CHECK_RES(iris_cluster_options_from_json("nats://h:1", 0, &c), IRIS_ERR_INVALID_JSON);
    CHECK_RES(iris_cluster_options_from_json("[1]", 0, &c), IRIS_ERR_INVALID_JSON);
    CHECK(c == NULL);

    /* A NULL cluster is refused, and destroy still runs exactly once. */
    collector ev;
    collector_init(&ev, 0);
    iris_options *f = side_options("127.0.0.1:0", "f");
    iris_options *b = side_options("127.0.0.1:0", "b");
    iris_router *r = NULL;
    CHECK_RES(iris_router_start_clustered(f, b, true, NULL, collect_event, &ev,
                                          collector_destroyed, &r),
              IRIS_ERR_NULL_ARGUMENT);
    CHECK(r == NULL && ev.destroyed == 1);
    iris_options_free(f);
    iris_options_free(b);
    collector_destroy(&ev);

    /* NATS unreachable at start: a clear error naming the address, never the token. */
    char servers[64];
    snprintf(servers, sizeof servers, "nats://127.0.0.1:%d", free_port());
    CHECK_RES(start_c_router(servers, "s3cret-token", &r), IRIS_ERR_IO);
    CHECK(r == NULL);
    CHECK(strstr(iris_last_error_message(), "NATS unreachable") != NULL);
    CHECK(strstr(iris_last_error_message(), servers) != NULL);
    CHECK(strstr(iris_last_error_message(), "s3cret-token") == NULL);
}

/* The C client's callback: answers {"op":"mul"} at once, then collects the event. */
static void answer_mul(void *user_data, const iris_event *ev) {
    const char *json = iris_event_json(ev, NULL);
    iris_request *req = NULL;
    if (iris_event_get_kind(ev) == IRIS_EVENT_REQUEST && json && strstr(json, "\"op\":\"mul\"") &&
        iris_event_take_request(ev, &req) == IRIS_OK) {
        CHECK_OK(iris_request_respond(req, NULL, "{\"product\":6}"));
        iris_request_free(req);
    }
    collect_event(user_data, ev);
}

/* Sends `msg` from `peer` (legacy) as request `id`, `id + 1`, ... until the answer is not
 * "no peer" (the far router's subscription may still be on its way); 0 with the response
 * line in `line` once answered. */
static int legacy_request_routed(legacy_peer *peer, const char *msg, char *line, int id) {
    char cmd[512];
    long long deadline = now_ms() + WAIT;
    for (; now_ms() < deadline; id++) {
        snprintf(cmd, sizeof cmd, "{\"cmd\":\"request\",\"id\":%d,\"msg\":%s}", id, msg);
        legacy_send(peer, cmd);
        char needle[32];
        snprintf(needle, sizeof needle, "\"id\":%d,", id);
        if (legacy_wait(peer, needle, line, LINE, WAIT) != 0) return -1;
        if (!strstr(line, "no peer") && !strstr(line, "no route")) return 0;
        usleep(100000);
    }
    return -1;
}

static void test_cluster(void) {
    const char *iris = getenv("IRIS_RPC_BIN");
    CHECK(iris != NULL && access(iris, X_OK) == 0);
    if (!iris || access(iris, X_OK) != 0) return;

    legacy_peer nats = {0}, cli = {0}, lw = {0};
    char port[16], servers[64], front[32], back[32], line[LINE];
    int nats_port = free_port();
    snprintf(port, sizeof port, "%d", nats_port);
    snprintf(servers, sizeof servers, "nats://127.0.0.1:%d", nats_port);
    char *nats_argv[] = {(char *)nats_bin(), "-a", "127.0.0.1", "-p", port, NULL};
    CHECK(child_spawn(&nats, nats_argv) == 0);
    long long deadline = now_ms() + WAIT;
    while (!port_open(nats_port) && now_ms() < deadline) usleep(20000);
    CHECK(port_open(nats_port));

    /* The CLI router, a legacy worker on its backend. */
    int back_port = free_port();
    snprintf(front, sizeof front, "127.0.0.1:%d", free_port());
    snprintf(back, sizeof back, "127.0.0.1:%d", back_port);
    char *cli_argv[] = {(char *)iris, "router", "--auth", SECRET, "--port", front,
                        "--backend-port", back, "--cluster", servers, NULL};
    CHECK(child_spawn(&cli, cli_argv) == 0);
    CHECK(legacy_wait(&cli, "\"event\":\"listen\"", line, sizeof line, WAIT) == 0);
    char fields[256];
    snprintf(fields, sizeof fields,
             "\"role\":\"client\",\"auth\":\"%s\",\"address\":\"%s\",\"uuid\":\"lw\"", SECRET,
             back);
    CHECK(legacy_start(&lw, fields) == 0);
    CHECK(legacy_wait(&lw, "\"ev\":\"connect\"", line, sizeof line, WAIT) == 0);

    /* The C router and a C client on its frontend. */
    iris_router *router = NULL;
    CHECK_OK(start_c_router(servers, NULL, &router));
    collector ce;
    collector_init(&ce, 0);
    iris_client *c = NULL;
    if (router) {
        snprintf(front, sizeof front, "127.0.0.1:%u", iris_router_port(router));
        iris_options *o = NULL;
        CHECK_OK(iris_options_new(SECRET, &o));
        CHECK_OK(iris_options_add_address(o, front));
        CHECK_OK(iris_options_set_string(o, "uuid", "cpeer"));
        CHECK_OK(iris_client_connect(o, answer_mul, &ce, collector_destroyed, &c));
        iris_options_free(o);
    }
    int ci = 0;
    CHECK(c && iris_client_wait_connected(c, WAIT) == IRIS_OK);
    if (!c) goto done;

    /* C -> legacy request, once the route to "lw" (on the other router) is known. */
    {
        int answered = 0;
        for (long long dl = now_ms() + WAIT; !answered && now_ms() < dl;) {
            outcome o;
            outcome_init(&o);
            if (iris_client_request(c, "lw", "{\"op\":\"add\",\"a\":2,\"b\":3}", 0, on_response,
                                    &o, NULL) == IRIS_OK &&
                outcome_wait(&o, WAIT) == 1) {
                answered = o.result == IRIS_OK;
                CHECK(o.result == IRIS_OK || o.result == IRIS_ERR_NOT_CONNECTED ||
                      o.result == IRIS_ERR_DISCONNECTED);
                if (answered) CHECK(o.json && strstr(o.json, "\"sum\":5"));
            }
            outcome_destroy(&o);
            if (!answered) usleep(100000);
        }
        CHECK(answered);
    }
    /* C -> legacy addressed event: the legacy worker sees the C client as its sender. */
    CHECK_OK(iris_client_dispatch_to(c, "lw", "{\"op\":\"note\",\"text\":\"to-lw\"}", 0));
    CHECK(legacy_wait(&lw, "to-lw", line, sizeof line, WAIT) == 0);
    CHECK(strstr(line, "\"uuid\":\"cpeer\""));

    /* legacy -> C request, answered by the C client (answer_mul), from "lw". */
    CHECK(legacy_request_routed(&lw, "{\"op\":\"mul\",\"a\":2,\"b\":3,\"_uuid\":\"cpeer\"}",
                                line, 1) == 0);
    CHECK(strstr(line, "\"err\":null") && strstr(line, "\"product\":6"));
    int k = collector_wait(&ce, IRIS_EVENT_REQUEST, "\"op\":\"mul\"", &ci, WAIT);
    CHECK(k >= 0 && strcmp(ce.events[k].uuid, "lw") == 0);
    /* legacy -> C addressed event, from "lw". */
    legacy_send(&lw, "{\"cmd\":\"dispatch\",\"msg\":{\"op\":\"note\",\"text\":\"to-c\","
                     "\"_uuid\":\"cpeer\"}}");
    k = collector_wait(&ce, IRIS_EVENT_MESSAGE, "to-c", &ci, WAIT);
    CHECK(k >= 0 && strcmp(ce.events[k].uuid, "lw") == 0);

    /* Broadcasts both ways: no address, the other side's peers on every router. */
    CHECK_OK(iris_client_dispatch(c, "{\"op\":\"note\",\"text\":\"all-from-c\"}", 0, NULL));
    CHECK(legacy_wait(&lw, "all-from-c", line, sizeof line, WAIT) == 0);
    CHECK(strstr(line, "\"uuid\":\"cpeer\""));
    legacy_send(&lw, "{\"cmd\":\"dispatch\",\"msg\":{\"op\":\"note\",\"text\":\"all-from-lw\"}}");
    int from = 0;
    k = collector_wait(&ce, IRIS_EVENT_MESSAGE, "all-from-lw", &from, WAIT);
    CHECK(k >= 0 && strcmp(ce.events[k].uuid, "lw") == 0);

done:
    iris_client_free(c);
    iris_router_free(router);
    collector_destroy(&ce);
    legacy_stop(&lw);
    child_kill(&cli);
    child_kill(&nats);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    make_certificates();
    run_test("cluster options are checked; NATS unreachable is a clear error", test_options);
    const char *name = "C and legacy peers on two routers of one cluster meet";
    if (nats_installed()) {
        run_test(name, test_cluster);
    } else {
        printf("ok %s # SKIP nats-server is not installed (tests/cluster/nats-server.sh)\n", name);
        fprintf(stderr, "%s: skipped, nats-server is not installed\n", name);
    }
    free_certificates();
    return total_failed_tests ? 1 : 0;
}
