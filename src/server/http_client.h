// A small blocking HTTP/1.1 client for `apus client`, `apus bench serve` and the server tests:
// one connection per object, JSON bodies, and Server-Sent Events read as they arrive.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace apus::server {

struct ClientResponse {
  int status = 0;
  std::string body;
};

class HttpClient {
 public:
  // `base_url`: http://HOST:PORT (a path after the port is prefixed to every request).
  // Connects lazily; reconnects when the server closed the connection.
  explicit HttpClient(const std::string& base_url, std::string api_key = {}, double timeout_s = 600.0);
  ~HttpClient();

  ClientResponse get(const std::string& path);
  ClientResponse post(const std::string& path, const std::string& json_body);
  // POSTs and reads the answer as it arrives. With a 200 text/event-stream answer, calls on_event
  // with each event's data ("[DONE]" included) and returns the status with an empty body;
  // on_event returning false hangs up at once (the server should cancel the request). Other
  // answers are returned whole.
  ClientResponse post_stream(const std::string& path, const std::string& json_body,
                             const std::function<bool(const std::string& data)>& on_event);
  // Drops the connection (the next request opens a new one).
  void close();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace apus::server
