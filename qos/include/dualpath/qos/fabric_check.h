// Compares a policy with what an InfiniBand port is really programmed with,
// from captured `smpquery sl2vl`, `smpquery vlarb` and `smpquery portinfo`
// output (infiniband-diags, rdma-core). Admins run it after OpenSM has swept
// to prove the fabric carries the policy.
//
// Threading: pure functions.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <dualpath/common/status.h>
#include <dualpath/qos/policy.h>

namespace dualpath::qos {

// One captured command output and the name to cite it by (its file path).
struct CapturedOutput {
  std::string name;
  std::string text;
};

struct FabricCheckRequest {
  IbPortType port_type = IbPortType::ca;   // which of the policy's settings apply
  std::optional<CapturedOutput> sl2vl;     // `smpquery sl2vl <lid> [port]`
  std::optional<CapturedOutput> vlarb;     // `smpquery vlarb <lid> [port]`
  std::optional<CapturedOutput> portinfo;  // `smpquery portinfo <lid> [port]`
};

struct FabricCheckReport {
  std::vector<std::string> mismatches;  // one line each, naming table, entry, both values
  std::vector<std::string> checked;     // what was compared, for the summary
};

// Fails with invalid_argument when the policy is not for InfiniBand or a
// capture cannot be read (the message names the file and line). Differences
// between fabric and policy are the report's mismatches, not errors.
Result<FabricCheckReport> checkFabric(const Policy& policy, const FabricCheckRequest& request);

}  // namespace dualpath::qos
