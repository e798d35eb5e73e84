// dualpath-bench interference: how much KV traffic slows the model's
// collectives, with and without QoS, on ranks that are processes connected
// through the NCCL net plugin.
//
// One invocation runs three cases on the same ranks' sizes:
//   alone        the collectives only;
//   kv, qos off  KV traffic beside them, both classes at high priority (the
//                arbiter shares the link evenly: no protection);
//   kv, qos on   KV traffic on the policy's low-priority `kv` class.
// KV traffic is each rank putting Layer Blocks into a region of the next
// rank at an offered rate, one-sided, on the `kv` class of the process's
// transport engine: the engine the plugin's communicators use, so one
// arbiter per rank sees both classes, as in an inference engine whose loader
// relays KV beside NCCL. Every landed byte is checked.
//
// On loopback the link is never the bottleneck, so every case's policy sets
// the arbiter's link_rate: each rank's egress is shaped to an emulated NIC of
// `link_gbps`. The report says so.
//
// With `netns` the ranks run on a NetnsCluster (netns.h): each rank in its own
// network namespace, UCX over TCP on its veth, whose egress the kernel shapes
// with the tc script rendered from each case's policy (HTB at `link_gbps`,
// classes told apart by TCP port). The kernel's link is then the real limit;
// the arbiter's link_rate is left unset unless `netns_arbiter_shaping` (the
// arbiter still orders the classes inside each rank). The kernel's per-class
// counters of every case are reported, so the classification is proven.
//
// With `rendezvous`, each host runs one rank: rank 0's host listens at the
// rendezvous address and relays the bootstrap, every other host's rank
// connects to it, and only rank 0 returns rows (the others return none once
// their rank has done every case).
//
// Threading: runInterference forks the ranks; call it before this process
// starts threads or loads UCX.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <dualpath/common/status.h>

namespace dualpath::bench {

struct InterferenceOptions {
  int ranks = 2;                                  // 2 to 8 processes
  std::vector<std::string> ops = {"all_gather", "reduce_scatter", "alltoall"};
  std::size_t min_bytes = 256 * 1024;             // nccl-tests -b
  std::size_t max_bytes = 4 * 1024 * 1024;        // -e
  std::size_t factor = 4;                         // -f
  int warmup = 2;
  int iters = 8;              // at least this many timed iterations...
  double min_seconds = 0.5;   // ...and at least this long, so the KV stream is measured
  double link_gbps = 1.0;                         // the emulated NIC, per rank
  double kv_load = 0.5;                           // offered KV, as a fraction of the link
  std::size_t kv_message_bytes = 41984;           // a DeepSeek-V3.2 Layer Block
  std::string low_max_inflight;  // the policy's arbiter.low_max_inflight (empty: its default)
  std::string plugin = "dualpath";                // NCCL_NET_PLUGIN's value, or a path
  // --rendezvous HOST:PORT --rank R: one rank per host, every host running
  // the same command; rank 0 listens there, relays the bootstrap and prints
  // the report (rank_launcher.h, runHostRank). Empty: every rank forked here.
  std::string rendezvous;
  int rank = -1;
  // --nccl: NCCL runs the collectives on GPUs, through the plugin
  // (nccl_collectives.h); only in builds with CUDA and NCCL, and with a GPU.
  bool nccl = false;
  std::string work_dir;                           // where the cases' policies are written
  std::chrono::seconds timeout{300};
  // --netns: ranks in network namespaces on veth links shaped by tc (root).
  bool netns = false;
  bool netns_arbiter_shaping = false;  // also set the arbiter's link_rate in netns mode
  std::string netns_script;            // empty: defaultNetnsScript()
  std::string qos_binary;              // empty: defaultQosBinary()
};

// One case at one size: the slowest rank's time per iteration.
struct CaseFigures {
  double time_us = 0;
  double algbw_gbs = 0;  // GB/s, as nccl-tests
  double busbw_gbs = 0;
  std::uint64_t wrong = 0;   // elements that differed from the expected result
  double kv_gbs = 0;         // KV delivered per rank while the collective ran, GB/s
  double collective_gbs = 0; // bytes a rank sent for the collective, per second
};

struct InterferenceRow {
  std::string op;
  std::size_t bytes = 0;  // nccl-tests' size: the whole buffer
  std::size_t count = 0;  // elements (float for reduce_scatter, byte otherwise) per rank chunk
  CaseFigures alone;
  CaseFigures qos_off;
  CaseFigures qos_on;
};

// What the kernel counted in netns mode: bytes each HTB class sent, summed
// over every node's veth egress, during each case.
struct KernelClassBytes {
  std::string name;     // the policy's class ("collective", "kv")
  std::string classid;  // tc's ("1:11")
  std::uint64_t bytes = 0;
  std::uint64_t packets = 0;
};
struct NetnsReport {
  std::string cluster_id;  // the namespaces were dpns-<id>-*
  std::string subnet;
  std::string rate;  // tc's rate of every node's link ("1000000kbit")
  std::vector<KernelClassBytes> alone;
  std::vector<KernelClassBytes> qos_off;
  std::vector<KernelClassBytes> qos_on;
};

// invalid_argument for options out of range (naming the option); a rank's
// error (naming the rank and case) when one fails. With options.netns:
// unsupported when namespaces cannot be made here (not root, no iproute2),
// io naming the command when building them fails; `netns_report` (if given)
// receives the kernel's counters.
Result<std::vector<InterferenceRow>> runInterference(const InterferenceOptions& options,
                                                     NetnsReport* netns_report = nullptr);

// nccl-tests' bus bandwidth factor for `op` on `ranks` ranks.
double busFactor(const std::string& op, int ranks);

}  // namespace dualpath::bench
