#include <dualpath/scheduler/path_policy.h>

#include <algorithm>
#include <array>
#include <cmath>

#include <fmt/format.h>

#include <dualpath/common/text.h>

namespace dualpath::scheduler {
namespace {

constexpr std::array<std::string_view, 4> kPolicyNames = {"shorter-queue", "pe-only", "de-only",
                                                          "split"};

ReadPlan allViaDecode(const PathChoice& choice) {
  return ReadPlan{.de_path_blocks = choice.cached_blocks};
}
ReadPlan allViaPrefill(const PathChoice& choice) {
  return ReadPlan{.pe_path_blocks = choice.cached_blocks};
}

template <class Policy>
Result<std::unique_ptr<PathPolicy>> makePolicy() {
  return std::unique_ptr<PathPolicy>(std::make_unique<Policy>());
}

}  // namespace

double PathChoice::prefillPathFreeBytesPerS() const noexcept {
  return prefillNode().snicFreeBytesPerS();
}

double PathChoice::decodePathFreeBytesPerS() const noexcept {
  return std::min({decodeNode().snicFreeBytesPerS(), cluster.cnicFreeBytesPerS(decode_engine),
                   cluster.cnicFreeBytesPerS(prefill_engine)});
}

ReadPlan ShorterReadQueuePolicy::choose(const PathChoice& choice) const noexcept {
  return choice.decodeNode().read_queue_tokens < choice.prefillNode().read_queue_tokens
             ? allViaDecode(choice)
             : allViaPrefill(choice);
}

ReadPlan PrefillPathOnlyPolicy::choose(const PathChoice& choice) const noexcept {
  return allViaPrefill(choice);
}

ReadPlan DecodePathOnlyPolicy::choose(const PathChoice& choice) const noexcept {
  return allViaDecode(choice);
}

ReadPlan BandwidthSplitPolicy::choose(const PathChoice& choice) const noexcept {
  const double prefill_free = choice.prefillPathFreeBytesPerS();
  const double decode_free = choice.decodePathFreeBytesPerS();
  if (!(prefill_free + decode_free > 0)) return ShorterReadQueuePolicy().choose(choice);
  const double share = decode_free / (prefill_free + decode_free);
  const auto via_decode = static_cast<std::uint32_t>(
      std::lround(share * static_cast<double>(choice.cached_blocks)));
  return ReadPlan{.de_path_blocks = via_decode,
                  .pe_path_blocks = choice.cached_blocks - via_decode};
}

Result<std::unique_ptr<PathPolicy>> makePathPolicy(std::string_view name) {
  if (name == "shorter-queue") return makePolicy<ShorterReadQueuePolicy>();
  if (name == "pe-only") return makePolicy<PrefillPathOnlyPolicy>();
  if (name == "de-only") return makePolicy<DecodePathOnlyPolicy>();
  if (name == "split") return makePolicy<BandwidthSplitPolicy>();
  return Status(StatusCode::invalid_argument,
                fmt::format("unknown read-path policy '{}': expected {}", name,
                            joinAlternatives(kPolicyNames)));
}

std::span<const std::string_view> pathPolicyNames() noexcept { return kPolicyNames; }

}  // namespace dualpath::scheduler
