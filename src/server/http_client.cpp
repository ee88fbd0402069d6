#include "server/http_client.h"

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cstdint>
#include <limits>
#include <optional>

#include "core/error.h"

namespace apus::server {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;

struct HttpClient::Impl {
  std::string host, port, prefix, api_key;
  std::chrono::milliseconds timeout;
  net::io_context ioc;
  std::optional<beast::tcp_stream> stream;
  beast::flat_buffer buf;

  // Runs one asynchronous operation to its end. The blocking calls are made of asynchronous ones
  // because only these honour the stream's expiry (expires_after): a server that goes silent
  // fails the request after `timeout` instead of hanging the caller for ever.
  template <typename Start>
  beast::error_code wait(Start&& start) {
    beast::error_code result;
    ioc.restart();
    start([&result](beast::error_code ec, auto&&...) { result = ec; });
    ioc.run();
    return result;
  }

  // Runs one asynchronous operation to completion: beast::tcp_stream's timeouts only apply to
  // asynchronous operations, and a client that can wait forever is no use in tests or benches.
  template <class Start>
  beast::error_code run(Start start) {
    beast::error_code result = net::error::would_block;
    start([&result](beast::error_code ec, auto&&...) { result = ec; });
    ioc.restart();
    ioc.run();
    return result;
  }

  std::string why(beast::error_code ec) const {
    if (ec == beast::error::timeout) return fmt::format("no answer within {:g} s", double(timeout.count()) / 1000);
    return ec.message();
  }

  void connect() {
    if (stream) return;
    tcp::resolver resolver(ioc);
    beast::error_code ec;
    auto results = resolver.resolve(host, port, ec);
    APUS_CHECK(!ec, "cannot resolve {}:{}: {}", host, port, ec.message());
    stream.emplace(ioc);
    stream->expires_after(timeout);
    ec = wait([&](auto handler) { stream->async_connect(results, std::move(handler)); });
    if (ec) {
      stream.reset();
      fail("cannot connect to {}:{}: {}", host, port, why(ec));
    }
    buf.clear();
  }

  http::request<http::string_body> make(http::verb verb, const std::string& path, const std::string& body) {
    http::request<http::string_body> req{verb, prefix + path, 11};
    req.set(http::field::host, host + ":" + port);
    req.set(http::field::user_agent, "apus-client");
    if (!api_key.empty()) req.set(http::field::authorization, "Bearer " + api_key);
    if (verb == http::verb::post) {
      req.set(http::field::content_type, "application/json");
      req.body() = body;
      req.prepare_payload();
    }
    return req;
  }

  // Sends `req` (retrying once on a fresh connection if a kept-alive one was closed meanwhile)
  // and reads the response header.
  using Parser = http::response_parser<http::buffer_body>;
  void send(http::request<http::string_body>& req, std::optional<Parser>& parser) {
    for (int attempt = 0;; ++attempt) {
      const bool fresh = !stream;
      connect();
      parser.emplace();
      // No limit. Not boost::none: Boost 1.74 compares the length with the optional itself, and
      // any length is "greater" than an empty optional, so every body would exceed it.
      parser->body_limit(std::numeric_limits<std::uint64_t>::max());
      stream->expires_after(timeout);
      beast::error_code ec = wait([&](auto handler) { http::async_write(*stream, req, std::move(handler)); });
      if (!ec) ec = wait([&](auto handler) { http::async_read_header(*stream, buf, *parser, std::move(handler)); });
      if (!ec) return;
      stream.reset();
      // A kept-alive connection the server closed meanwhile is retried once; a timeout is not
      // (the server may be working on the request).
      if (fresh || attempt > 0 || ec == beast::error::timeout)
        fail("request to {}:{}{} failed: {}", host, port, std::string(req.target()), why(ec));
    }
  }

  // Reads the body in pieces; `sink` returning false stops early (the connection is dropped).
  void read_body(Parser& parser, const std::function<bool(const char*, size_t)>& sink) {
    char tmp[16384];
    while (!parser.is_done()) {
      parser.get().body().data = tmp;
      parser.get().body().size = sizeof tmp;
      stream->expires_after(timeout);
      beast::error_code ec = wait([&](auto handler) { http::async_read_some(*stream, buf, parser, std::move(handler)); });
      if (ec == http::error::need_buffer) ec = {};
      if (ec) {
        stream.reset();
        fail("reading the response from {}:{} failed: {}", host, port, why(ec));
      }
      const size_t n = sizeof tmp - parser.get().body().size;
      if (n > 0 && !sink(tmp, n)) {
        stream.reset();
        return;
      }
    }
    if (!parser.get().keep_alive()) stream.reset();
  }

  ClientResponse exchange(http::verb verb, const std::string& path, const std::string& body,
                          const std::function<bool(const std::string&)>* on_event) {
    auto req = make(verb, path, body);
    std::optional<Parser> slot;
    send(req, slot);
    Parser& parser = *slot;
    ClientResponse out;
    out.status = int(parser.get().result_int());
    const bool sse = on_event && out.status == 200 &&
                     std::string(parser.get()[http::field::content_type]).rfind("text/event-stream", 0) == 0;
    if (!sse) {
      read_body(parser, [&](const char* p, size_t n) {
        out.body.append(p, n);
        return true;
      });
      return out;
    }
    std::string pending;
    read_body(parser, [&](const char* p, size_t n) {
      pending.append(p, n);
      for (size_t end; (end = pending.find("\n\n")) != std::string::npos;) {
        const std::string event = pending.substr(0, end);
        pending.erase(0, end + 2);
        std::string data;
        size_t pos = 0;
        while (pos < event.size()) {
          size_t nl = event.find('\n', pos);
          if (nl == std::string::npos) nl = event.size();
          std::string_view line(event.data() + pos, nl - pos);
          if (line.rfind("data:", 0) == 0) {
            line.remove_prefix(5);
            if (!line.empty() && line[0] == ' ') line.remove_prefix(1);
            if (!data.empty()) data += '\n';
            data += line;
          }
          pos = nl + 1;
        }
        if (!(*on_event)(data)) return false;
      }
      return true;
    });
    return out;
  }
};

HttpClient::HttpClient(const std::string& base_url, std::string api_key, double timeout_s) : impl_(std::make_unique<Impl>()) {
  std::string rest = base_url;
  if (rest.rfind("http://", 0) == 0) rest = rest.substr(7);
  else APUS_CHECK(rest.find("://") == std::string::npos, "{}: only http:// URLs are supported", base_url);
  const size_t slash = rest.find('/');
  std::string hostport = rest.substr(0, slash);
  impl_->prefix = slash == std::string::npos ? "" : rest.substr(slash);
  while (!impl_->prefix.empty() && impl_->prefix.back() == '/') impl_->prefix.pop_back();
  const size_t colon = hostport.rfind(':');
  impl_->host = colon == std::string::npos ? hostport : hostport.substr(0, colon);
  impl_->port = colon == std::string::npos ? "80" : hostport.substr(colon + 1);
  APUS_CHECK(!impl_->host.empty(), "{}: no host in the URL", base_url);
  impl_->api_key = std::move(api_key);
  impl_->timeout = std::chrono::milliseconds(int64_t(timeout_s * 1000));
}

HttpClient::~HttpClient() = default;

ClientResponse HttpClient::get(const std::string& path) { return impl_->exchange(http::verb::get, path, "", nullptr); }

ClientResponse HttpClient::post(const std::string& path, const std::string& body) {
  return impl_->exchange(http::verb::post, path, body, nullptr);
}

ClientResponse HttpClient::post_stream(const std::string& path, const std::string& body,
                                       const std::function<bool(const std::string&)>& on_event) {
  return impl_->exchange(http::verb::post, path, body, &on_event);
}

void HttpClient::close() { impl_->stream.reset(); }

}  // namespace apus::server
