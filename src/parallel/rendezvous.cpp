#include "parallel/rendezvous.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <optional>

#include "core/error.h"

namespace apus {

namespace {

void send_all(int fd, const void* p, size_t n, const char* what) {
  const char* c = static_cast<const char*>(p);
  while (n > 0) {
    const ssize_t k = ::send(fd, c, n, MSG_NOSIGNAL);
    APUS_CHECK(k > 0, "tensor parallel rendezvous: sending {} failed: {}", what, std::strerror(errno));
    c += k, n -= size_t(k);
  }
}

void recv_all(int fd, void* p, size_t n, const char* what) {
  char* c = static_cast<char*>(p);
  while (n > 0) {
    const ssize_t k = ::recv(fd, c, n, 0);
    APUS_CHECK(k > 0, "tensor parallel rendezvous: receiving {} failed: {}", what,
               k == 0 ? "the peer closed the connection" : std::strerror(errno));
    c += k, n -= size_t(k);
  }
}

// Moves a connection to a high descriptor number. Seen on the GPU machine: node 0's connection was
// closed under it while NCCL set up (a library closing a stale descriptor number that accept() had
// reused is the likely cause); descriptors from 1000 up are out of the way of such reuse.
int out_of_the_way(int fd) {
  const int high = ::fcntl(fd, F_DUPFD_CLOEXEC, 1000);
  if (high < 0) return fd;
  ::close(fd);
  return high;
}

bool wait_readable(int fd, double seconds) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, int(seconds * 1000)) > 0;
}

addrinfo* resolve(const std::string& addr, int port, bool passive) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  if (passive) hints.ai_flags = AI_PASSIVE;
  addrinfo* res = nullptr;
  const int rc = ::getaddrinfo(addr.c_str(), std::to_string(port).c_str(), &hints, &res);
  APUS_CHECK(rc == 0 && res != nullptr, "tensor parallel rendezvous: cannot resolve --master_addr {}: {}", addr,
             gai_strerror(rc));
  return res;
}

}  // namespace

Rendezvous::Rendezvous(const std::string& master_addr, int master_port, int nnodes, int node_rank, Id* id,
                       double timeout_s) {
  APUS_CHECK(master_port > 0 && master_port < 65536, "--master_port {} is not a port", master_port);
  addrinfo* res = resolve(master_addr, master_port, node_rank == 0);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  if (node_rank == 0) {
    const int ls = ::socket(res->ai_family, SOCK_STREAM, 0);
    const int one = 1;
    ::setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    const bool bound = ::bind(ls, res->ai_addr, res->ai_addrlen) == 0 && ::listen(ls, nnodes) == 0;
    const std::string err = std::strerror(errno);
    freeaddrinfo(res);
    if (!bound) {
      ::close(ls);
      fail("tensor parallel rendezvous: cannot listen on {}:{}: {}", master_addr, master_port, err);
    }
    while (int(fds_.size()) < nnodes - 1) {
      const double left = std::chrono::duration<double>(deadline - std::chrono::steady_clock::now()).count();
      if (left <= 0 || !wait_readable(ls, left)) {
        ::close(ls);
        fail("tensor parallel rendezvous: {} of {} other nodes connected to {}:{} within {:.0f} s", fds_.size(),
             nnodes - 1, master_addr, master_port, timeout_s);
      }
      int fd = ::accept(ls, nullptr, nullptr);
      if (fd < 0) continue;
      fd = out_of_the_way(fd);
      int32_t peer = -1;
      recv_all(fd, &peer, sizeof(peer), "a node's rank");
      send_all(fd, id->data(), id->size(), "the NCCL id");
      fds_.push_back(fd);
      peer_.push_back(peer);
    }
    ::close(ls);
  } else {
    int fd = -1;
    for (;;) {  // node 0 may not be listening yet
      fd = ::socket(res->ai_family, SOCK_STREAM, 0);
      if (::connect(fd, res->ai_addr, res->ai_addrlen) == 0) break;
      ::close(fd);
      fd = -1;
      if (std::chrono::steady_clock::now() > deadline) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    freeaddrinfo(res);
    APUS_CHECK(fd >= 0, "tensor parallel rendezvous: node {} could not connect to {}:{} within {:.0f} s", node_rank,
               master_addr, master_port, timeout_s);
    fd = out_of_the_way(fd);
    const int32_t me = node_rank;
    send_all(fd, &me, sizeof(me), "this node's rank");
    recv_all(fd, id->data(), id->size(), "the NCCL id");
    fds_.push_back(fd);
    peer_.push_back(0);
  }
}

Rendezvous::~Rendezvous() { close(); }

void Rendezvous::watch(std::function<void(const std::string&)> on_lost, double silence_s) {
  watcher_ = std::thread([this, on_lost = std::move(on_lost), silence_s] {
    using Clock = std::chrono::steady_clock;
    std::vector<pollfd> p;
    for (int fd : fds_) p.push_back(pollfd{fd, POLLIN, 0});
    // When each peer was last heard from; its silence counts only once it has been heard (node 0
    // starts watching only when every node has connected, which can be long after the first).
    std::vector<std::optional<Clock::time_point>> heard(p.size());
    Clock::time_point beat{};
    auto lost = [&](size_t i, const std::string& how) {
      if (!closing_.load()) on_lost(fmt::format("node {} {}", peer_[i], how));
    };
    while (!closing_.load()) {
      const auto now = Clock::now();
      if (now - beat >= std::chrono::milliseconds(kBeatMs)) {  // "alive", for the peers' watchers
        beat = now;
        const char c = 1;
        for (int fd : fds_) (void)::send(fd, &c, 1, MSG_NOSIGNAL | MSG_DONTWAIT);
      }
      for (size_t i = 0; i < p.size(); ++i)
        if (heard[i] && std::chrono::duration<double>(now - *heard[i]).count() > silence_s)
          return lost(i, fmt::format("sent nothing for {:.0f} s (its process was killed or is frozen)", silence_s));
      if (::poll(p.data(), p.size(), kBeatMs / 2) <= 0) continue;
      for (size_t i = 0; i < p.size(); ++i) {
        if (p[i].revents == 0) continue;
        char buf[64];
        const ssize_t n = ::recv(p[i].fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (n > 0) heard[i] = Clock::now();
        if (n > 0 || (n < 0 && (errno == EAGAIN || errno == EINTR))) continue;
        return lost(i, fmt::format("closed its connection (its process ended; poll events {:#x}, {})", p[i].revents,
                                   n == 0 ? "end of stream" : std::strerror(errno)));
      }
    }
  });
}

void Rendezvous::hang_up() {
  for (int fd : fds_) ::shutdown(fd, SHUT_RDWR);
}

void Rendezvous::close() {
  closing_ = true;
  if (watcher_.joinable()) watcher_.join();
  for (int fd : fds_) ::close(fd);
  fds_.clear();
}

}  // namespace apus
