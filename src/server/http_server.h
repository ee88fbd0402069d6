// A small asynchronous HTTP/1.1 server (Boost.Beast over Asio, optional TLS) for the OpenAI API.
//
// A few threads run every connection: nothing blocks on a client, so thousands of open SSE
// streams cost memory, not threads. A handler gets each request with an Exchange and answers it
// from any thread, now or later (the engine's loop thread answers streams token by token). While
// a request is being answered the connection keeps reading, so a client that goes away is noticed
// at once, not at the next write: the Exchange's on_close callback then runs, and the handler
// cancels the work.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace apus::server {

struct HttpRequest {
  std::string method;  // "GET", "POST", ...
  std::string path;    // without the query string
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string header(std::string_view name) const;  // case-insensitive; "" when absent
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
};

// One request being answered. Every method may be called from any thread; calls after the
// exchange ended (answered, or the client went away) are ignored.
class Exchange {
 public:
  virtual ~Exchange() = default;
  // A complete response.
  virtual void respond(HttpResponse response) = 0;
  // A streamed response (chunked transfer encoding): begin, any number of sends, end.
  virtual void begin_stream(int status, std::string content_type) = 0;
  virtual void send(std::string data) = 0;
  virtual void end_stream() = 0;
  // Runs once, on the connection's thread, when the client goes away before the answer ended.
  // Set it before starting work that should be cancelled then.
  virtual void on_close(std::function<void()> callback) = 0;
};

using Handler = std::function<void(const HttpRequest&, std::shared_ptr<Exchange>)>;

struct HttpOptions {
  std::string host = "127.0.0.1";
  int port = 8000;  // 0: any free port (see HttpServer::port())
  size_t max_body_bytes = size_t(32) << 20;  // larger bodies get 413
  int threads = 2;
  std::string ssl_certfile, ssl_keyfile;  // both set: HTTPS
  int idle_timeout_s = 300;               // a connection with no request in flight is closed after this
};

class HttpServer {
 public:
  // Binds and listens at once (throws apus::Error when the address is taken or the TLS files are
  // unusable); serves once run() is called.
  HttpServer(HttpOptions options, Handler handler);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  int port() const;
  // Serves on options.threads threads (the caller's among them) until stop().
  void run();
  // Stops accepting; requests in flight continue (see drain()).
  void stop_accepting();
  // Ends run(): every connection is closed.
  void stop();
  // Requests being answered now.
  size_t in_flight() const;
  size_t open_connections() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace apus::server
