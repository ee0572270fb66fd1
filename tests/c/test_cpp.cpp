// The header in C++: compiled with c++ and linked against the shared library. A server and a
// client with RAII ownership; the server answers from a callback, the client waits for the
// answer and uses an async request whose callback fulfils a std::promise.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <future>
#include <memory>
#include <string>

#include "iris_rpc.h"

namespace {

struct Deleter {
    void operator()(iris_options *o) const { iris_options_free(o); }
    void operator()(iris_server *s) const { iris_server_free(s); }
    void operator()(iris_client *c) const { iris_client_free(c); }
    void operator()(char *s) const { iris_string_free(s); }
};
template <typename T> using Owned = std::unique_ptr<T, Deleter>;

int failures = 0;

void check(bool ok, const char *what) {
    if (!ok) {
        std::fprintf(stderr, "check failed: %s (last error: %s)\n", what, iris_last_error_message());
        failures++;
    }
}

// Answers {"op":"greet","name":N} with {"hello":N}, from inside the event callback.
extern "C" void on_server_event(void *, const iris_event *event) {
    if (iris_event_get_kind(event) != IRIS_EVENT_REQUEST) return;
    iris_request *raw = nullptr;
    if (iris_event_take_request(event, &raw) != IRIS_OK) return;
    std::unique_ptr<iris_request, void (*)(iris_request *)> req(raw, iris_request_free);
    std::string body = iris_request_json(req.get(), nullptr);
    auto at = body.find("\"name\":");
    std::string name = at == std::string::npos ? "null" : body.substr(at + 7);
    if (!name.empty() && name.back() == '}') name.pop_back();
    std::string resp = "{\"hello\":" + name + "}";
    iris_request_respond(req.get(), nullptr, resp.c_str());
}

extern "C" void on_answer(void *user_data, iris_result result, const char *json, size_t len) {
    auto *p = static_cast<std::promise<std::pair<iris_result, std::string>> *>(user_data);
    p->set_value({result, std::string(json, len)});
}

}  // namespace

int main() {
    char *key = nullptr, *cert = nullptr;
    check(iris_self_signed_pem(&key, &cert) == IRIS_OK, "self-signed certificate");
    Owned<char> key_owned(key), cert_owned(cert);

    iris_options *raw_opts = nullptr;
    check(iris_options_new("cpp-secret", &raw_opts) == IRIS_OK, "options");
    Owned<iris_options> opts(raw_opts);
    iris_options_set_string(opts.get(), "port", "127.0.0.1:0");
    iris_options_set_certificates(opts.get(), key, cert, nullptr);
    iris_server *raw_server = nullptr;
    check(iris_server_bind(opts.get(), on_server_event, nullptr, nullptr, &raw_server) == IRIS_OK,
          "bind");
    Owned<iris_server> server(raw_server);
    if (!server) return 1;

    std::string address = "127.0.0.1:" + std::to_string(iris_server_port(server.get()));
    iris_options *raw_copts = nullptr;
    check(iris_options_from_json("{\"auth\":\"cpp-secret\",\"cipher\":true}", 0, &raw_copts) ==
              IRIS_OK,
          "client options");
    Owned<iris_options> copts(raw_copts);
    iris_options_add_address(copts.get(), address.c_str());
    iris_client *raw_client = nullptr;
    check(iris_client_connect(copts.get(), nullptr, nullptr, nullptr, &raw_client) == IRIS_OK,
          "connect");
    Owned<iris_client> client(raw_client);
    check(iris_client_wait_connected(client.get(), 20000) == IRIS_OK, "connected");

    char *resp = nullptr;
    check(iris_client_request_wait(client.get(), nullptr, "{\"op\":\"greet\",\"name\":\"c++\"}", 0,
                                   &resp, nullptr) == IRIS_OK,
          "request_wait");
    Owned<char> resp_owned(resp);
    check(resp && std::strcmp(resp, "{\"hello\":\"c++\"}") == 0, "answer text");

    std::promise<std::pair<iris_result, std::string>> answer;
    auto got = answer.get_future();
    const std::string msg = "{\"op\":\"greet\",\"name\":42}";
    check(iris_client_request(client.get(), nullptr, msg.data(), msg.size(), on_answer, &answer,
                              nullptr) == IRIS_OK,
          "request");
    check(got.wait_for(std::chrono::seconds(20)) == std::future_status::ready, "answer in time");
    auto value = got.get();
    check(value.first == IRIS_OK && value.second == "{\"hello\":42}", "async answer");

    client.reset();
    server.reset();
    std::printf(failures ? "not ok c++: header, RAII, requests\n" : "ok c++: header, RAII, requests\n");
    return failures ? 1 : 0;
}
