// Renderers: from one validated Policy to the configuration of each layer.
//
//   opensm  the QoS lines of opensm.conf (InfiniBand)
//   roce    mlnx_qos or iproute2 dcb commands for one RoCE interface
//   tc      a shell script of tc commands (HTB) for one Linux link
//   env     the environment a job needs to load the plugin with this policy
//   explain a table for humans, or JSON for tools
//
// Output is deterministic (a test compares it byte for byte). A renderer that
// cannot express the policy fails with invalid_argument and says why.
//
// Threading: pure functions.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include <dualpath/common/status.h>
#include <dualpath/common/units.h>
#include <dualpath/qos/policy.h>

namespace dualpath::qos {

enum class RoceTool : std::uint8_t { mlnx_qos, dcb };

Result<std::string> renderOpenSm(const Policy& policy);
Result<std::string> renderRoce(const Policy& policy, std::string_view interface, RoceTool tool);
// `rate` is the link's rate, else fabric.link_rate on Ethernet; tc needs it to
// size HTB classes. (arbiter.link_rate is a shaping rate, not the link's.)
// Fails when tc could not tell two classes apart by port or DSCP.
Result<std::string> renderTc(const Policy& policy, std::string_view device,
                             std::optional<BitsPerSecond> rate);
// `policy_path` is what DUALPATH_QOS_POLICY should hold (absolute); empty for
// the built-in policy.
std::string renderEnv(const Policy& policy, std::string_view policy_path);
std::string explainText(const Policy& policy);
std::string explainJson(const Policy& policy);

// IPv4 u32 matches covering a port range: (value, mask) pairs, fewest first.
std::vector<std::pair<std::uint16_t, std::uint16_t>> portRangeMasks(PortRange range);

}  // namespace dualpath::qos
