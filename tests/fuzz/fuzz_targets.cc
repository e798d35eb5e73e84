#include "fuzz_targets.h"

#include <string>
#include <string_view>

#include <dualpath/qos/arbiter.h>
#include <dualpath/qos/fabric_check.h>
#include <dualpath/qos/policy_loader.h>
#include <dualpath/qos/render.h>

namespace dualpath::fuzz {

void fuzzPolicy(const std::uint8_t* data, std::size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  qos::LoadedPolicy loaded = qos::loadPolicyText(text, "fuzz.toml");
  for (const qos::Diagnostic& d : loaded.diagnostics) (void)d.toString();
  if (!loaded.policy) return;
  const qos::Policy& policy = *loaded.policy;
  (void)qos::explainText(policy);
  (void)qos::explainJson(policy);
  (void)qos::renderOpenSm(policy);
  (void)qos::renderRoce(policy, "eth0", qos::RoceTool::mlnx_qos);
  (void)qos::renderRoce(policy, "eth0", qos::RoceTool::dcb);
  (void)qos::renderTc(policy, "eth0", BitsPerSecond{10'000'000'000});
  (void)qos::renderEnv(policy, "/etc/dualpath/policy.toml");
  for (const qos::TrafficClass& cls : policy.classes) {
    (void)qos::ucxSettingsFor(policy, cls, true);
  }
  (void)policy.selectByNcclTrafficClass(-1);
  (void)policy.selectByNcclTrafficClass(7);
  auto arbiter = qos::LinkArbiter::create(qos::ArbiterConfig::fromPolicy(policy));
  if (arbiter) {
    for (qos::ClassIndex c = 0; c < policy.classes.size(); ++c) {
      if ((*arbiter)->tryAcquire(c, 4096, 0).isOk()) (*arbiter)->release(c, 4096);
    }
  }
}

void fuzzSmpquery(const std::uint8_t* data, std::size_t size) {
  static const qos::Policy paper = [] {
    // The paper's settings, inline so the target needs no files.
    return *qos::loadPolicyText(R"(
[fabric]
kind = "infiniband"
max_vls = 4
high_limit = 240
vlarb_high = "0:192,1:192,2:0,3:192"
vlarb_low = "0:192,1:192,2:64,3:192"
sl2vl = [0,1,2,3, 0,1,2,3, 0,1,2,3, 0,1,2,3]
[[class]]
name = "collective"
role = "collectives"
priority = "high"
default = true
ib_sl = 0
[[class]]
name = "kv"
role = "kv"
priority = "low"
ib_sl = 2
)",
                                "paper.toml")
                .policy;
  }();
  std::string text(reinterpret_cast<const char*>(data), size);
  qos::FabricCheckRequest request;
  request.sl2vl = qos::CapturedOutput{"sl2vl.txt", text};
  (void)qos::checkFabric(paper, request);
  request = {};
  request.vlarb = qos::CapturedOutput{"vlarb.txt", text};
  (void)qos::checkFabric(paper, request);
  request = {};
  request.portinfo = qos::CapturedOutput{"portinfo.txt", text};
  (void)qos::checkFabric(paper, request);
}

}  // namespace dualpath::fuzz
