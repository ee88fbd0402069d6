// Start-up of a tensor-parallel group that spans several processes (nodes), over TCP: node 0
// listens on --master_addr:--master_port and hands the NCCL unique id to every other node, which
// connects to it. The connections then stay open as a liveness signal: when a node's process dies,
// its peers see the connection close and stop the group at once instead of waiting in NCCL; and
// each watching node sends a byte every half second, so that a node that goes silent (killed but
// not yet torn down — a process with GPU work can take long to exit and close its sockets — or
// frozen) is noticed too.
// (All data moves through NCCL; this carries 128 bytes per node at start-up.)
#pragma once
#include <array>
#include <atomic>
#include <functional>
#include <string>
#include <thread>
#include <vector>

namespace apus {

class Rendezvous {
 public:
  using Id = std::array<char, 128>;  // the NCCL unique id (NcclId)
  // Node 0 sends `*id` to nnodes - 1 peers; another node connects (retrying for `timeout_s`) and
  // receives it into `*id`.
  Rendezvous(const std::string& master_addr, int master_port, int nnodes, int node_rank, Id* id, double timeout_s);
  ~Rendezvous();
  Rendezvous(const Rendezvous&) = delete;
  Rendezvous& operator=(const Rendezvous&) = delete;
  // Watches the connections from now on, and sends this node's heartbeat on them; calls `on_lost`
  // (from its own thread, once) when one closes before close() was called, or when its peer has
  // sent nothing for `silence_s` seconds.
  void watch(std::function<void(const std::string&)> on_lost, double silence_s);
  // From now on a connection that closes is no failure (an orderly end is under way).
  void expect_close() { closing_ = true; }
  // expect_close(), then closes the connections.
  void close();
  // Shuts the connections down at once (any thread), so that the other nodes stop their ranks.
  void hang_up();

 private:
  static constexpr int kBeatMs = 500;
  std::vector<int> fds_;  // node 0: one per other node; others: the one to node 0
  std::vector<int> peer_;  // the node at the other end of each
  std::atomic<bool> closing_{false};
  std::thread watcher_;
};

}  // namespace apus
