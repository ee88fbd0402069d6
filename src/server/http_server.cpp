#include "server/http_server.h"

#include <sys/resource.h>

#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <deque>
#include <iostream>
#include <optional>
#include <thread>

#include "core/error.h"

namespace apus::server {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;
using boost::system::error_code;

std::string HttpRequest::header(std::string_view name) const {
  for (const auto& [k, v] : headers)
    if (beast::iequals(k, beast::string_view(name.data(), name.size()))) return v;
  return {};
}

namespace {

constexpr size_t kHeaderLimit = 64 * 1024;

std::string status_line(int status) {
  return "HTTP/1.1 " + std::to_string(status) + " " +
         std::string(http::obsolete_reason(static_cast<http::status>(status))) + "\r\n";
}

std::string error_json(const std::string& message, const std::string& type, const std::string& code) {
  // Built by hand: this layer knows nothing of JSON libraries, and these messages are fixed ASCII.
  return R"({"error": {"message": ")" + message + R"(", "type": ")" + type + R"(", "param": null, "code": ")" + code +
         "\"}}";
}

class SessionBase : public std::enable_shared_from_this<SessionBase> {
 public:
  virtual ~SessionBase() = default;
  virtual net::any_io_executor executor() = 0;
  virtual void do_respond(uint64_t seq, HttpResponse r) = 0;
  virtual void do_begin(uint64_t seq, int status, std::string content_type) = 0;
  virtual void do_send(uint64_t seq, std::string data) = 0;
  virtual void do_end(uint64_t seq) = 0;
  virtual void do_on_close(uint64_t seq, std::function<void()> cb) = 0;
};

// The handler's view of one request; every call hops onto the connection's strand.
class ExchangeImpl final : public Exchange {
 public:
  ExchangeImpl(std::shared_ptr<SessionBase> s, uint64_t seq) : s_(std::move(s)), seq_(seq) {}
  void respond(HttpResponse r) override {
    net::post(s_->executor(), [s = s_, seq = seq_, r = std::move(r)]() mutable { s->do_respond(seq, std::move(r)); });
  }
  void begin_stream(int status, std::string ct) override {
    net::post(s_->executor(), [s = s_, seq = seq_, status, ct = std::move(ct)]() mutable { s->do_begin(seq, status, std::move(ct)); });
  }
  void send(std::string data) override {
    net::post(s_->executor(), [s = s_, seq = seq_, d = std::move(data)]() mutable { s->do_send(seq, std::move(d)); });
  }
  void end_stream() override {
    net::post(s_->executor(), [s = s_, seq = seq_] { s->do_end(seq); });
  }
  void on_close(std::function<void()> cb) override {
    // dispatch: a handler calls this on the connection's strand, before any disconnect can be seen.
    net::dispatch(s_->executor(), [s = s_, seq = seq_, cb = std::move(cb)]() mutable { s->do_on_close(seq, std::move(cb)); });
  }

 private:
  std::shared_ptr<SessionBase> s_;
  uint64_t seq_;
};

}  // namespace

// Sessions refer to the counters and the TLS context until the io_context destroys them, so
// those are declared (and outlive) it.
struct HttpServer::Impl {
  HttpOptions opt;
  Handler handler;
  std::atomic<size_t> in_flight{0}, connections{0};
  std::atomic<bool> accepting{true};
  std::optional<net::ssl::context> ssl;
  net::io_context ioc;
  tcp::acceptor acceptor{ioc};
  net::steady_timer accept_retry{ioc};

  void accept();
};

namespace {

template <class Stream>
class Session final : public SessionBase {
 public:
  static constexpr bool kTls = !std::is_same_v<Stream, beast::tcp_stream>;

  Session(HttpServer::Impl& srv, Stream stream) : srv_(srv), stream_(std::move(stream)) { ++srv_.connections; }
  ~Session() override { --srv_.connections; }

  void start() {
    if constexpr (kTls) {
      lowest().expires_after(std::chrono::seconds(30));
      stream_.async_handshake(net::ssl::stream_base::server, [self = self()](error_code ec) {
        if (ec) return self->close();
        self->read_header();
      });
    } else {
      read_header();
    }
  }

  net::any_io_executor executor() override { return stream_.get_executor(); }

  void do_respond(uint64_t seq, HttpResponse r) override {
    if (!current(seq) || streaming_) return;
    std::string out = status_line(r.status);
    out += "Content-Type: " + r.content_type + "\r\nContent-Length: " + std::to_string(r.body.size()) + "\r\n";
    for (const auto& [k, v] : r.headers) out += k + ": " + v + "\r\n";
    if (!keep_alive_) out += "Connection: close\r\n";
    out += "\r\n";
    out += r.body;
    ended_ = true;
    queue(std::move(out), true);
  }

  void do_begin(uint64_t seq, int status, std::string content_type) override {
    if (!current(seq) || streaming_) return;
    streaming_ = true;
    std::string out = status_line(status);
    out += "Content-Type: " + content_type + "\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n";
    if (!keep_alive_) out += "Connection: close\r\n";
    out += "\r\n";
    queue(std::move(out), false);
  }

  void do_send(uint64_t seq, std::string data) override {
    if (!current(seq) || !streaming_ || data.empty()) return;
    char size[32];
    std::snprintf(size, sizeof size, "%zx\r\n", data.size());
    queue(size + data + "\r\n", false);
  }

  void do_end(uint64_t seq) override {
    if (!current(seq) || !streaming_) return;
    ended_ = true;
    queue("0\r\n\r\n", true);
  }

  void do_on_close(uint64_t seq, std::function<void()> cb) override {
    if (seq != seq_) return;
    if (gone_) {
      if (abandoned_ && cb) cb();  // the client left before the handler asked
      return;
    }
    on_close_ = std::move(cb);
  }

 private:
  std::shared_ptr<Session> self() { return std::static_pointer_cast<Session>(shared_from_this()); }
  beast::tcp_stream& lowest() { return beast::get_lowest_layer(stream_); }
  bool current(uint64_t seq) const { return seq == seq_ && busy_ && !ended_ && !gone_; }

  void read_header() {
    if (gone_ || reading_) return;
    parser_.emplace();
    parser_->header_limit(kHeaderLimit);
    parser_->body_limit(srv_.opt.max_body_bytes);
    lowest().expires_after(std::chrono::seconds(srv_.opt.idle_timeout_s));
    reading_ = true;
    http::async_read_header(stream_, buf_, *parser_, [self = self()](error_code ec, size_t) { self->on_header(ec); });
  }

  void on_header(error_code ec) {
    reading_ = false;
    if (ec) return read_failed(ec);
    auto& req = parser_->get();
    if (const auto len = parser_->content_length(); len && *len > srv_.opt.max_body_bytes)
      return reject(413, "request body is larger than the server's limit", "request_too_large");
    if (beast::iequals(req[http::field::expect], "100-continue")) queue("HTTP/1.1 100 Continue\r\n\r\n", false);
    reading_ = true;
    http::async_read(stream_, buf_, *parser_, [self = self()](error_code e, size_t) { self->on_body(e); });
  }

  void on_body(error_code ec) {
    reading_ = false;
    if (ec) return read_failed(ec);
    auto msg = parser_->release();
    HttpRequest req;
    req.method = std::string(msg.method_string());
    const std::string target(msg.target().data(), msg.target().size());
    req.path = target.substr(0, target.find('?'));
    req.body = std::move(msg.body());
    for (const auto& f : msg) req.headers.emplace_back(std::string(f.name_string()), std::string(f.value()));
    keep_alive_ = msg.keep_alive() && srv_.accepting;
    ++seq_;
    busy_ = true;
    streaming_ = ended_ = false;
    ++srv_.in_flight;
    lowest().expires_never();
    watch();
    try {
      srv_.handler(req, std::make_shared<ExchangeImpl>(shared_from_this(), seq_));
    } catch (const std::exception& e) {
      std::cerr << "apus: handler failed: " << e.what() << "\n";
      do_respond(seq_, {500, "application/json", error_json("internal server error", "server_error", "internal_error"), {}});
    }
  }

  // A request that could not be read: answer what is worth answering, then close.
  void read_failed(error_code ec) {
    if (ec == http::error::body_limit) return reject(413, "request body is larger than the server's limit", "request_too_large");
    if (ec == http::error::header_limit) return reject(431, "request headers are too large", "headers_too_large");
    if (ec.category() == http::make_error_code(http::error::bad_target).category() && ec != http::error::end_of_stream &&
        ec != http::error::partial_message)
      return reject(400, "malformed HTTP request", "bad_request");
    close();  // the client closed, timed out, or the server is stopping
  }

  void reject(int status, const std::string& message, const std::string& code) {
    keep_alive_ = false;
    ++seq_;
    busy_ = true;
    streaming_ = ended_ = false;
    ++srv_.in_flight;
    do_respond(seq_, {status, "application/json", error_json(message, "invalid_request_error", code), {}});
  }

  // While a request is answered, keep a read pending: it completes with an error when the client
  // goes away, or with the first bytes of the next request (kept in buf_ for read_header).
  void watch() {
    if (gone_ || reading_ || buf_.size() > 0) return;  // bytes of the next request are here already
    reading_ = true;
    stream_.async_read_some(buf_.prepare(16384), [self = self()](error_code ec, size_t n) {
      self->reading_ = false;
      if (ec) return self->client_gone();
      self->buf_.commit(n);
      // The next (pipelined) request has begun: answered() reads it. Until then a disconnect
      // shows as a failed write.
      if (!self->busy_) self->read_header();
    });
  }

  void queue(std::string data, bool last) {
    out_.push_back({std::move(data), last});
    write();
  }

  void write() {
    if (writing_ || out_.empty() || gone_) return;
    writing_ = true;
    batch_.clear();
    for (const auto& o : out_) batch_.push_back(net::buffer(o.data));
    net::async_write(stream_, batch_, [self = self(), n = out_.size()](error_code ec, size_t) {
      self->writing_ = false;
      if (ec) return self->client_gone();
      bool last = false;
      for (size_t i = 0; i < n; ++i) {
        last = last || self->out_.front().last;
        self->out_.pop_front();
      }
      if (last) self->answered();
      self->write();
    });
  }

  // The whole answer is on the wire.
  void answered() {
    if (!busy_) return;  // the client left first (its read error came before this write's completion)
    busy_ = false;
    on_close_ = nullptr;
    --srv_.in_flight;
    if (!keep_alive_ || !srv_.accepting) return close();
    if (!reading_) read_header();
  }

  void client_gone() {
    if (gone_) return;
    gone_ = true;
    if (busy_) {
      busy_ = false;
      abandoned_ = true;
      --srv_.in_flight;
      if (auto cb = std::move(on_close_)) cb();
    }
    close();
  }

  void close() {
    gone_ = true;
    error_code ec;
    lowest().socket().shutdown(tcp::socket::shutdown_both, ec);
    lowest().close();
  }

  struct Out {
    std::string data;
    bool last;
  };
  HttpServer::Impl& srv_;
  Stream stream_;
  beast::flat_buffer buf_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::deque<Out> out_;
  std::vector<net::const_buffer> batch_;
  std::function<void()> on_close_;
  uint64_t seq_ = 0;
  bool reading_ = false, writing_ = false, busy_ = false, streaming_ = false, ended_ = false, gone_ = false;
  bool keep_alive_ = true;
  bool abandoned_ = false;  // the client left while request seq_ was being answered
};

}  // namespace

void HttpServer::Impl::accept() {
  if (!accepting) return;
  acceptor.async_accept(net::make_strand(ioc), [this](error_code ec, tcp::socket socket) {
    if (!accepting) return;
    if (ec) {
      // Out of file descriptors and the like: back off instead of spinning.
      std::cerr << "apus: accept failed: " << ec.message() << "\n";
      accept_retry.expires_after(std::chrono::milliseconds(100));
      accept_retry.async_wait([this](error_code) { accept(); });
      return;
    }
    socket.set_option(tcp::no_delay(true), ec);
    if (ssl) {
      using S = beast::ssl_stream<beast::tcp_stream>;
      std::make_shared<Session<S>>(*this, S(beast::tcp_stream(std::move(socket)), *ssl))->start();
    } else {
      std::make_shared<Session<beast::tcp_stream>>(*this, beast::tcp_stream(std::move(socket)))->start();
    }
    accept();
  });
}

HttpServer::HttpServer(HttpOptions options, Handler handler) : impl_(std::make_unique<Impl>()) {
  // Every open stream holds a descriptor: take the hard limit rather than the usual 1024.
  if (rlimit rl{}; getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  Impl& s = *impl_;
  s.opt = std::move(options);
  s.handler = std::move(handler);
  APUS_CHECK(s.opt.ssl_certfile.empty() == s.opt.ssl_keyfile.empty(), "--ssl_certfile and --ssl_keyfile go together");
  if (!s.opt.ssl_certfile.empty()) {
    s.ssl.emplace(net::ssl::context::tls_server);
    try {
      s.ssl->set_options(net::ssl::context::default_workarounds | net::ssl::context::no_sslv2 | net::ssl::context::no_sslv3);
      s.ssl->use_certificate_chain_file(s.opt.ssl_certfile);
    } catch (const std::exception& e) {
      fail("{}: not a usable certificate chain: {}", s.opt.ssl_certfile, e.what());
    }
    try {
      s.ssl->use_private_key_file(s.opt.ssl_keyfile, net::ssl::context::pem);
    } catch (const std::exception& e) {
      fail("{}: not a usable private key for {}: {}", s.opt.ssl_keyfile, s.opt.ssl_certfile, e.what());
    }
  }
  error_code ec;
  const auto addr = net::ip::make_address(s.opt.host, ec);
  APUS_CHECK(!ec, "--host {}: not an IP address ({})", s.opt.host, ec.message());
  const tcp::endpoint ep(addr, static_cast<unsigned short>(s.opt.port));
  s.acceptor.open(ep.protocol(), ec);
  if (!ec) s.acceptor.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) s.acceptor.bind(ep, ec);
  if (!ec) s.acceptor.listen(net::socket_base::max_listen_connections, ec);
  APUS_CHECK(!ec, "cannot listen on {}:{}: {}", s.opt.host, s.opt.port, ec.message());
  s.accept();
}

HttpServer::~HttpServer() {
  impl_->ioc.stop();
}

int HttpServer::port() const { return impl_->acceptor.local_endpoint().port(); }

void HttpServer::run() {
  std::vector<std::thread> extra;
  for (int i = 1; i < impl_->opt.threads; ++i) extra.emplace_back([this] { impl_->ioc.run(); });
  impl_->ioc.run();
  for (auto& t : extra) t.join();
}

void HttpServer::stop_accepting() {
  net::post(impl_->ioc, [this] {
    impl_->accepting = false;
    error_code ec;
    impl_->acceptor.close(ec);
    impl_->accept_retry.cancel();
  });
}

void HttpServer::stop() { impl_->ioc.stop(); }

size_t HttpServer::in_flight() const { return impl_->in_flight; }
size_t HttpServer::open_connections() const { return impl_->connections; }

}  // namespace apus::server
