// The native uWebSockets (C++) peer of surge-bench (system `uws-cpp`): one program, two roles.
//
//   uws-cpp-server echo    --port P [--deflate off|no-context|context] [--workers N]
//   uws-cpp-server pubsub  --port P [--workers N]
//
// echo: every message is sent back as received (binary stays binary), uncompressed, as uWS's own
// EchoServer example does. --deflate picks what is negotiated: off (uWS::DISABLED), no-context
// (uWS::SHARED_COMPRESSOR | SHARED_DECOMPRESSOR: no context takeover either way) or context
// (uWS::DEDICATED_DECOMPRESSOR: a zlib inflate stream per connection, what browsers' context
// takeover needs).
// pubsub: connections to /sub subscribe to one topic on open; each binary message received on /pub
// is published to it with app.publish (framed once, shared by every subscriber).
// One thread (one uWS::App, one event loop): compare it with surge at --workers 1; --workers other
// than 1 is ignored with a line on stderr. Prints `listening on 127.0.0.1:P` (pubsub: 0.0.0.0:P)
// once listening, and exits with status 1 when it cannot listen. Built by build.sh in this folder.
#include "App.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace {

struct Args {
    std::string role;
    int port = 9001;
    std::string deflate = "off";
};

Args parse(int argc, char **argv) {
    Args a;
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s echo|pubsub --port P [--deflate MODE]\n", argv[0]);
        std::exit(2);
    }
    a.role = argv[1];
    for (int i = 2; i + 1 < argc; i += 2) {
        std::string flag = argv[i], value = argv[i + 1];
        if (flag == "--port") {
            a.port = std::atoi(value.c_str());
        } else if (flag == "--deflate") {
            a.deflate = value;
        } else if (flag == "--workers") {
            if (value != "1") {
                std::fprintf(stderr, "uws-cpp: --workers %s ignored, one thread\n", value.c_str());
            }
        } else if (flag == "--backend" || flag == "--busy-poll-us" || flag == "--uring-recv") {
            // surge-only flags
        } else {
            std::fprintf(stderr, "uws-cpp: unknown flag %s\n", flag.c_str());
            std::exit(2);
        }
    }
    return a;
}

uWS::CompressOptions compression(const std::string &mode) {
    if (mode == "off") return uWS::DISABLED;
    if (mode == "no-context") return uWS::CompressOptions(uWS::SHARED_COMPRESSOR | uWS::SHARED_DECOMPRESSOR);
    if (mode == "context") return uWS::DEDICATED_DECOMPRESSOR;
    std::fprintf(stderr, "uws-cpp: --deflate off|no-context|context\n");
    std::exit(2);
}

struct PerSocket {};

// surge's defaults: 16 MiB messages, 1 MiB of backpressure, no idle timeout.
template <class Behavior>
void limits(Behavior &b) {
    b.maxPayloadLength = 16 * 1024 * 1024;
    b.maxBackpressure = 1024 * 1024;
    b.idleTimeout = 0;
    b.sendPingsAutomatically = false;
}

void listening(us_listen_socket_t *token, const char *host, int port) {
    if (!token) {
        std::fprintf(stderr, "uws-cpp: cannot listen on %s:%d\n", host, port);
        std::exit(1);
    }
    std::printf("listening on %s:%d\n", host, port);
    std::fflush(stdout);
}

}  // namespace

int main(int argc, char **argv) {
    Args a = parse(argc, argv);
    if (a.role == "echo") {
        uWS::App::WebSocketBehavior<PerSocket> b = {};
        limits(b);
        b.compression = compression(a.deflate);
        b.message = [](auto *ws, std::string_view message, uWS::OpCode op) { ws->send(message, op, false); };
        uWS::App().ws<PerSocket>("/*", std::move(b)).listen("127.0.0.1", a.port, [&](auto *t) {
            listening(t, "127.0.0.1", a.port);
        }).run();
    } else if (a.role == "pubsub") {
        uWS::App app;
        uWS::App::WebSocketBehavior<PerSocket> sub = {};
        limits(sub);
        sub.open = [](auto *ws) { ws->subscribe("all"); };
        uWS::App::WebSocketBehavior<PerSocket> pub = {};
        limits(pub);
        pub.message = [&app](auto *, std::string_view message, uWS::OpCode op) {
            if (op == uWS::OpCode::BINARY) app.publish("all", message, op, false);
        };
        app.ws<PerSocket>("/sub", std::move(sub)).ws<PerSocket>("/pub", std::move(pub))
            .listen("0.0.0.0", a.port, [&](auto *t) { listening(t, "0.0.0.0", a.port); })
            .run();
    } else {
        std::fprintf(stderr, "uws-cpp: role echo|pubsub, not %s\n", a.role.c_str());
        return 2;
    }
    return 0;
}
