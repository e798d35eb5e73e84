// dualpath-bench interference --nccl: the same collectives run by NCCL itself
// on GPUs (ncclAllGather, ncclReduceScatter, ncclAlltoAll), with NCCL carrying
// every byte between ranks through libnccl-net-dualpath.so. The KV puts beside
// them then share the plugin's engine and arbiter, as in an inference engine.
//
// Rank r drives GPU r % (visible GPUs), and each rank gets its own
// NCCL_HOSTID, so NCCL treats the ranks as separate hosts and moves data
// through the net plugin even when they share a machine (and allows several
// ranks per GPU). The ranks are the benchmark's: forked on one host, or one
// per host with --rendezvous.
//
// Built only when the CUDA toolkit and NCCL are found at configure time
// (DUALPATH_HAVE_NCCL); runs only where a GPU is. On our CI machines it is
// compiled, and a test checks that it refuses to run without a GPU.
//
// Threading: one NcclCollectives per rank process, used from one thread.
#pragma once

#include <memory>
#include <string>

#include <dualpath/common/status.h>

#include "collective_data.h"
#include "rank_launcher.h"

namespace dualpath::bench {

class NcclCollectives {
 public:
  // Collective over the bootstrap's ranks. Sets NCCL_NET_PLUGIN to
  // `plugin_path`, NCCL_NET=DualPath (unless set) and this rank's
  // NCCL_HOSTID, then creates the communicator with ncclConfig_t.trafficClass
  // = `traffic_class`, non-blocking, bounded by the bootstrap's deadline.
  // unsupported without a CUDA device.
  static Result<std::unique_ptr<NcclCollectives>> create(Bootstrap& bootstrap,
                                                         const std::string& plugin_path,
                                                         int traffic_class);
  ~NcclCollectives();
  NcclCollectives(const NcclCollectives&) = delete;
  NcclCollectives& operator=(const NcclCollectives&) = delete;

  std::unique_ptr<SizeRun> sizeRun(const std::string& op, std::size_t bytes);

  struct Impl;

 private:
  explicit NcclCollectives(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace dualpath::bench
