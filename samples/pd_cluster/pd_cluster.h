// The miniature PD cluster: a prefill node and a decode node as two
// processes on one machine, sharing a storage directory, replaying an
// agentic trace with the real loader, scheduler and transport.
//
//   launcher (this process)      writes the sessions' history into the storage
//                                directory, forks the nodes, gathers their reports
//   PE node (process)            the global scheduler; K prefill engines, each a
//                                PrefillLoader over both read paths, a host
//                                layerwise copy engine, emulated layerwise prefill
//                                compute, and a HandoffSender for the miss-token KV
//   DE node (process)            K RelayServers (the DE read path) and K
//                                HandoffReceivers (write-back of new blocks), and
//                                K decode engines with emulated decode steps
//
// A session's next turn is scheduled only once its previous turn's decode has
// finished and every block it filled is written back, so each turn reads what
// the cluster itself stored. Every load's device bytes are checked against
// the synthetic KV of its blocks (bench/workload/agentic_trace.h).
//
// Emulated (and labelled so in every report): the storage NICs (a token
// bucket per node on storage reads; with a network that has storage links,
// real veths shaped by tc instead, to a storage process), the GPUs' compute
// (prefill time from the model's FLOPs, decode as fixed-time steps), and
// device memory (host memory). Real: the storage directory and its files,
// the KV relay and the handoff (UCX through the transport, class `kv`), the
// processes and the scheduler; with `network`, the compute link too (veth,
// the kernel's TCP and HTB).
//
// Threading: runPdCluster forks; call it before this process starts threads
// or loads UCX. It blocks until both nodes end (bounded by `timeout`).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include <dualpath/common/status.h>

#include "agentic_trace.h"

namespace dualpath::bench {
class NetnsCluster;
}

namespace dualpath::samples {

enum class LoadMode : std::uint8_t {
  basic,     // PE path only (the scheduler's pe-only policy)
  dualpath,  // both read paths (shorter-queue)
  oracle,    // no KV I/O at all: the prefix is assumed in device memory
};
std::string_view loadModeName(LoadMode mode) noexcept;

struct PdClusterOptions {
  std::string model = "deepseek-v3.2";
  std::uint32_t engines = 2;  // prefill engines on the PE node, decode engines on the DE node
  bench::AgenticTraceShape trace{.sessions = 8,
                                 .turns = 4,
                                 .initial_blocks_min = 16,
                                 .initial_blocks_max = 32,
                                 .new_tokens_min = 16,
                                 .new_tokens_max = 64,
                                 .seed = 1};
  double snic_mbps = 200;       // each node's emulated storage NIC, MB/s (10^6 B/s)
  double gpu_tflops = 400;      // one emulated GPU's achieved prefill FLOP/s, in 10^12
  double tpot_ms = 2;           // one emulated decode step (every running request gains a token)
  std::uint32_t relay_put_kib = 1024;  // RelayServerOptions::max_put_bytes
  std::string storage_dir;      // required: a directory this run owns (emptied first)
  // The nodes' network. Null: loopback. Otherwise a cluster of two nodes
  // (node 0 the PE node, node 1 the DE node): each node process enters its
  // network namespace and the transport runs over UCX tcp on its veth, which
  // the kernel shapes and classifies (by the policy's TCP port ranges).
  // Its tc script is applied again before each mode (the counters restart).
  bench::NetnsCluster* network = nullptr;
  std::string policy_path;  // the QoS policy both nodes load; empty: the built-in one
                            // (required with a network: makePdClusterNetwork gives it)
  std::chrono::seconds request_timeout{60};  // each load's and handoff's deadline
  std::chrono::seconds timeout{300};         // the whole mode, both nodes
};

struct PdClusterReport {
  LoadMode mode = LoadMode::basic;
  double seconds = 0;  // first request scheduled to the last decode finished
  std::uint64_t requests = 0, prefill_tokens = 0, cached_tokens = 0, generated_tokens = 0;
  std::uint64_t pe_snic_bytes = 0, de_snic_bytes = 0;  // storage reads per node
  std::uint64_t blocks_pe_path = 0, blocks_de_path = 0, blocks_fallback = 0;
  std::uint64_t relay_bytes = 0, handoff_bytes = 0;
  std::uint64_t blocks_written_after_prefill = 0, blocks_written_after_decode = 0;
  std::uint64_t loads_verified = 0;  // loads whose device bytes matched their blocks
  double snic_bytes_per_s = 0;       // each node's storage NIC rate
  std::string snic_description;      // "emulated storage NIC (...)", or the storage link
  bool snic_emulated = true;         // false over storage links (a network with them)
  std::uint64_t storage_server_bytes = 0;  // over storage links: what the server sent
  std::string network_description;   // the compute link: loopback, or the veth and its rate
  // With a network: bytes each HTB class of the policy sent during the mode,
  // over both nodes' veths, from the kernel (tc -s class show).
  std::vector<std::pair<std::string, std::uint64_t>> kernel_class_bytes;
  nlohmann::json toJson() const;
};

// Progress: requests finished so far, of the trace's total.
using PdClusterProgress = std::function<void(std::uint64_t done, std::uint64_t total)>;

// A two-node network for PdClusterOptions::network (needs root and
// iproute2): the nodes in network namespaces on veth links that the kernel
// shapes to `compute_gbps` each way with the tc script rendered from the
// cluster's policy (collectives high priority, KV low on its own TCP port
// range), which is written to `work_dir`/pd-cluster-policy.toml; and storage
// links: a storage namespace where a storage process serves the storage
// directory (loader::BlockServer), reached from each node over a second veth
// (its storage NIC) shaped by tc to `storage_mbps` MB/s each way. Pass the
// same rate as PdClusterOptions::snic_mbps.
struct PdClusterNetwork {
  std::unique_ptr<bench::NetnsCluster> cluster;  // removed when this goes
  std::string policy_path;                       // for PdClusterOptions::policy_path
  PdClusterNetwork();
  PdClusterNetwork(PdClusterNetwork&&) noexcept;
  PdClusterNetwork& operator=(PdClusterNetwork&&) noexcept;
  ~PdClusterNetwork();
};
// unsupported naming what this machine lacks (root, ip, tc); io naming the
// command that failed.
Result<PdClusterNetwork> makePdClusterNetwork(const std::string& work_dir, double compute_gbps,
                                              double storage_mbps);

// Runs one mode on a fresh copy of the sessions' history. invalid_argument
// for options out of range (naming the option); a node's error, naming the
// node, the request and the block, when anything fails or a byte differs.
Result<PdClusterReport> runPdCluster(const PdClusterOptions& options, LoadMode mode,
                                     const PdClusterProgress& progress = {});

}  // namespace dualpath::samples
