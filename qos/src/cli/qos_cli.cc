#include "qos_cli.h"

#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <tuple>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <fmt/ostream.h>

#include <dualpath/common/params.h>
#include <dualpath/common/text.h>
#include <dualpath/qos/fabric_check.h>
#include <dualpath/qos/policy_loader.h>
#include <dualpath/qos/render.h>

namespace dualpath::qos::cli {
namespace {

struct Streams {
  std::ostream& out;
  std::ostream& err;
};

// Which file a command reads: the POLICY argument, else DUALPATH_QOS_POLICY,
// else the built-in policy (path empty).
Result<std::string> resolvePolicyPath(const std::string& argument) {
  if (!argument.empty()) return argument;
  DP_TRY_ASSIGN(const params::Snapshot* snapshot, params::global());
  return snapshot->qos_policy;
}

void printDiagnostics(const LoadedPolicy& loaded, bool strict, std::ostream& err) {
  for (const Diagnostic& d : loaded.diagnostics) {
    Diagnostic shown = d;
    if (strict) shown.severity = Severity::error;
    err << shown.toString() << '\n';
  }
}

// Loads a policy for a command that needs a valid one; prints its diagnostics.
std::optional<Policy> loadForCommand(const std::string& argument, bool strict, Streams io) {
  Result<std::string> path = resolvePolicyPath(argument);
  if (!path) {
    io.err << "dualpath-qos: " << path.status().message() << '\n';
    return std::nullopt;
  }
  LoadedPolicy loaded = loadPolicy(*path);
  printDiagnostics(loaded, strict, io.err);
  if (!loaded.policy || (strict && loaded.warningCount() > 0)) {
    io.err << fmt::format("dualpath-qos: {}: not a valid policy ({} error{}{})\n",
                          path->empty() ? std::string(kBuiltinPolicyName) : *path,
                          loaded.errorCount(), loaded.errorCount() == 1 ? "" : "s",
                          strict && loaded.warningCount() > 0
                              ? fmt::format(", {} warning{} under --strict", loaded.warningCount(),
                                            loaded.warningCount() == 1 ? "" : "s")
                              : "");
    return std::nullopt;
  }
  return std::move(loaded.policy);
}

std::optional<CapturedOutput> readCapture(const std::string& path, Streams io, bool& failed) {
  if (path.empty()) return std::nullopt;
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    io.err << fmt::format("dualpath-qos: {}: cannot open: {}\n", path, std::strerror(errno));
    failed = true;
    return std::nullopt;
  }
  std::ostringstream text;
  text << in.rdbuf();
  return CapturedOutput{path, text.str()};
}

// ---------------------------------------------------------------- commands

int runValidate(const std::string& argument, bool strict, Streams io) {
  Result<std::string> path = resolvePolicyPath(argument);
  if (!path) {
    io.err << "dualpath-qos: " << path.status().message() << '\n';
    return kExitInvalid;
  }
  LoadedPolicy loaded = loadPolicy(*path);
  printDiagnostics(loaded, strict, io.err);
  const std::string name = path->empty() ? std::string(kBuiltinPolicyName) : *path;
  std::size_t errors = loaded.errorCount() + (strict ? loaded.warningCount() : 0);
  std::size_t warnings = strict ? 0 : loaded.warningCount();
  if (errors > 0) {
    io.out << fmt::format("{}: invalid: {} error{}\n", name, errors, errors == 1 ? "" : "s");
    return kExitInvalid;
  }
  io.out << fmt::format("{}: valid ({} warning{})\n", name, warnings, warnings == 1 ? "" : "s");
  return kExitOk;
}

struct RenderArgs {
  std::string policy;
  std::string format;
  std::string iface;
  std::string dev;
  std::string rate;
  std::string tool = "mlnx_qos";
  bool strict = false;
};

int runRender(const RenderArgs& args, Streams io) {
  std::optional<BitsPerSecond> rate;
  for (auto [flag, value, format] :
       {std::tuple{"--rate", &args.rate, "tc"}, std::tuple{"--dev", &args.dev, "tc"},
        std::tuple{"--iface", &args.iface, "roce"}}) {
    if (!value->empty() && args.format != format) {
      io.err << fmt::format("dualpath-qos: {} applies to --format {} only\n", flag, format);
      return kExitInvalid;
    }
  }
  if (!args.rate.empty()) {
    Result<BitsPerSecond> parsed = parseBitRate(args.rate);
    if (!parsed) {
      io.err << "dualpath-qos: --rate: " << parsed.status().message() << '\n';
      return kExitInvalid;
    }
    rate = *parsed;
  }
  if (args.format == "roce" && args.iface.empty()) {
    io.err << "dualpath-qos: --format roce needs --iface IF (the RoCE netdev, e.g. eth2)\n";
    return kExitInvalid;
  }
  if (args.format == "tc" && args.dev.empty()) {
    io.err << "dualpath-qos: --format tc needs --dev DEV (the Linux link to shape)\n";
    return kExitInvalid;
  }
  std::optional<Policy> policy = loadForCommand(args.policy, args.strict, io);
  if (!policy) return kExitInvalid;

  Result<std::string> text = Status(StatusCode::internal, "unknown format");
  if (args.format == "opensm") {
    text = renderOpenSm(*policy);
  } else if (args.format == "roce") {
    text = renderRoce(*policy, args.iface, args.tool == "dcb" ? RoceTool::dcb : RoceTool::mlnx_qos);
  } else if (args.format == "tc") {
    text = renderTc(*policy, args.dev, rate);
  } else if (args.format == "env") {
    std::string absolute;
    if (Result<std::string> path = resolvePolicyPath(args.policy); path && !path->empty()) {
      std::error_code ec;
      absolute = std::filesystem::absolute(*path, ec).lexically_normal().string();
      if (ec) absolute = *path;
    }
    text = renderEnv(*policy, absolute);
  }
  if (!text) {
    io.err << "dualpath-qos: " << text.status().message() << '\n';
    return kExitInvalid;
  }
  io.out << *text;
  return kExitOk;
}

int runExplain(const std::string& argument, bool json, bool strict, Streams io) {
  std::optional<Policy> policy = loadForCommand(argument, strict, io);
  if (!policy) return kExitInvalid;
  io.out << (json ? explainJson(*policy) : explainText(*policy));
  return kExitOk;
}

struct CheckArgs {
  std::string policy;
  std::string sl2vl;
  std::string vlarb;
  std::string portinfo;
  std::string port_type = "ca";
  bool strict = false;
};

int runCheck(const CheckArgs& args, Streams io) {
  static const std::map<std::string, IbPortType> kPortTypes{
      {"ca", IbPortType::ca},
      {"switch_external", IbPortType::switch_external},
      {"switch_port0", IbPortType::switch_port0},
      {"router", IbPortType::router}};
  std::optional<Policy> policy = loadForCommand(args.policy, args.strict, io);
  if (!policy) return kExitInvalid;
  FabricCheckRequest request;
  request.port_type = kPortTypes.at(args.port_type);
  bool failed = false;
  request.sl2vl = readCapture(args.sl2vl, io, failed);
  request.vlarb = readCapture(args.vlarb, io, failed);
  request.portinfo = readCapture(args.portinfo, io, failed);
  if (failed) return kExitInvalid;
  Result<FabricCheckReport> report = checkFabric(*policy, request);
  if (!report) {
    io.err << "dualpath-qos: " << report.status().message() << '\n';
    return kExitInvalid;
  }
  for (const std::string& mismatch : report->mismatches) io.out << "mismatch: " << mismatch << '\n';
  std::string checked = fmt::format("{}", fmt::join(report->checked, ", "));
  if (report->mismatches.empty()) {
    io.out << fmt::format("fabric matches {} (port type {}): {}\n", policy->source_name,
                          args.port_type, checked);
    return kExitOk;
  }
  io.out << fmt::format("{} mismatch{} between the fabric and {} (port type {}); checked {}\n",
                        report->mismatches.size(), report->mismatches.size() == 1 ? "" : "es",
                        policy->source_name, args.port_type, checked);
  return kExitMismatch;
}

int runParams(Streams io) {
  Result<const params::Snapshot*> snapshot = params::global();
  TextTable table({"variable", "value", "default", "accepts"});
  for (const params::Spec& spec : params::registry()) {
    const char* value = std::getenv(std::string(spec.env_name).c_str());
    table.addRow({std::string(spec.env_name), value != nullptr ? value : "(unset)",
                  spec.default_text.empty() ? "(empty)" : std::string(spec.default_text),
                  std::string(spec.form)});
  }
  io.out << table.render();
  io.out << "\n";
  for (const params::Spec& spec : params::registry()) {
    io.out << fmt::format("{}\n    {}\n", spec.env_name, spec.help);
  }
  if (!snapshot) {
    io.err << "dualpath-qos: " << snapshot.status().message() << '\n';
    return kExitInvalid;
  }
  return kExitOk;
}

}  // namespace

int run(int argc, const char* const* argv, std::ostream& out, std::ostream& err) {
  Streams io{out, err};
  CLI::App app{
      "dualpath-qos: validate, render, explain and check DualPath QoS policies.\n"
      "POLICY defaults to $DUALPATH_QOS_POLICY, else the built-in policy.",
      "dualpath-qos"};
  app.require_subcommand(1);

  std::string policy_help = "Policy file (TOML)";

  std::string validate_policy;
  bool validate_strict = false;
  auto* validate = app.add_subcommand("validate", "Check a policy: exit 0 valid, 2 errors");
  validate->add_option("POLICY", validate_policy, policy_help);
  validate->add_flag("--strict", validate_strict, "Treat warnings as errors");

  RenderArgs render_args;
  auto* render = app.add_subcommand("render", "Write fabric or job configuration from a policy");
  render->add_option("POLICY", render_args.policy, policy_help);
  render->add_option("--format", render_args.format, "What to write")
      ->required()
      ->check(CLI::IsMember({"opensm", "roce", "tc", "env"}));
  render->add_option("--iface", render_args.iface, "RoCE interface (--format roce)");
  render->add_option("--tool", render_args.tool, "RoCE tool (--format roce)")
      ->check(CLI::IsMember({"mlnx_qos", "dcb"}));
  render->add_option("--dev", render_args.dev, "Linux link to shape (--format tc)");
  render->add_option("--rate", render_args.rate,
                     "Link rate for --format tc, in tc units (e.g. 10gbit)");
  render->add_flag("--strict", render_args.strict, "Treat warnings as errors");

  std::string explain_policy;
  bool explain_json = false;
  bool explain_strict = false;
  auto* explain = app.add_subcommand("explain", "Show what a policy does");
  explain->add_option("POLICY", explain_policy, policy_help);
  explain->add_flag("--json", explain_json, "Machine-readable output");
  explain->add_flag("--strict", explain_strict, "Treat warnings as errors");

  CheckArgs check_args;
  auto* check = app.add_subcommand(
      "check", "Compare captured smpquery output with the policy: exit 0 match, 1 mismatch");
  check->add_option("POLICY", check_args.policy, policy_help);
  check->add_option("--sl2vl", check_args.sl2vl, "Output of `smpquery sl2vl <lid> [port]`");
  check->add_option("--vlarb", check_args.vlarb, "Output of `smpquery vlarb <lid> [port]`");
  check->add_option("--portinfo", check_args.portinfo,
                    "Output of `smpquery portinfo <lid> [port]`");
  check->add_option("--port-type", check_args.port_type, "Which port type's settings apply")
      ->check(CLI::IsMember({"ca", "switch_external", "switch_port0", "router"}));
  check->add_flag("--strict", check_args.strict, "Treat warnings as errors");

  auto* params_command =
      app.add_subcommand("params", "List DualPath's environment variables and their values");
  auto* builtin = app.add_subcommand("builtin", "Print the built-in policy");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // CLI11 reports through exceptions; they end here.
    int code = app.exit(e, out, err);
    return code == 0 ? kExitOk : kExitInvalid;
  }

  // The environment is parsed once, up front: a bad DUALPATH_* value fails
  // every command loudly (`params` reports it itself, after the listing).
  if (!params_command->parsed()) {
    if (Result<const params::Snapshot*> snapshot = params::global(); !snapshot) {
      err << "dualpath-qos: " << snapshot.status().message() << '\n';
      return kExitInvalid;
    }
  }
  if (validate->parsed()) return runValidate(validate_policy, validate_strict, io);
  if (render->parsed()) return runRender(render_args, io);
  if (explain->parsed()) return runExplain(explain_policy, explain_json, explain_strict, io);
  if (check->parsed()) return runCheck(check_args, io);
  if (params_command->parsed()) return runParams(io);
  if (builtin->parsed()) {
    out << builtinPolicyText();
    return kExitOk;
  }
  return kExitInvalid;
}

}  // namespace dualpath::qos::cli
