// A cluster of nodes on one machine over a real network stack: each node in
// its own network namespace, its veth's egress shaped by the tc script that
// `dualpath-qos render --format tc` makes from a QoS policy, the nodes joined
// by a bridge in a hub namespace. scripts/netns-cluster.sh builds and removes
// it (one implementation for people and programs); NetnsCluster runs that
// script and owns what it made. A forked rank calls enterNetnsNode() first,
// before it loads the plugin or UCX. See docs/bench.md ("Over network
// namespaces").
//
// Needs root and iproute2; netnsAvailable() says why not. Uses only addresses
// inside the namespaces it creates; never touches the host namespace's links.
//
// Threading: NetnsCluster's members run the script and wait for it (each run
// bounded by the command timeout); use one cluster from one thread. Its
// member functions fork, so call them where forking is safe (before UCX or
// threads in this process, as runRanks requires). enterNetnsNode changes the
// calling process's network and mount namespaces: call it in a
// single-threaded child.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <dualpath/common/status.h>

namespace dualpath::bench {

// ok when this process can build a cluster; unsupported naming what is
// missing (root, `ip`, `tc`, the script or dualpath-qos) otherwise.
Status netnsAvailable(const std::string& script, const std::string& qos_binary);

// The script and dualpath-qos of this build tree (compiled in).
std::string defaultNetnsScript();
std::string defaultQosBinary();

// tc's rate for a link of `gbps` Gbit/s ("1000000kbit"; kbit keeps
// sub-Mbit/s links exact enough).
std::string tcRate(double gbps);

struct NetnsOptions {
  std::string script;      // scripts/netns-cluster.sh
  std::string qos_binary;  // dualpath-qos, which renders the tc script
  int nodes = 2;
  std::string policy_path;  // the policy whose tc script shapes every node
  std::string rate;         // each node's link, in tc's units ("200mbit")
  // With a rate (tc's units): storage links too, a storage namespace and on
  // each node a storage NIC shaped to it (scripts/netns-cluster.sh).
  std::string storage_rate;
  std::chrono::milliseconds command_timeout{60'000};  // bounds every script run
};

struct NetnsNode {
  int index = 0;
  std::string ns;       // network namespace (/run/netns/<ns>)
  std::string device;   // the node's veth, its only link besides lo
  std::string address;  // IPv4 address of `device`
  // With storage links: the node's storage NIC and its address (for the
  // storage namespace's entry: its bridge and the server's address).
  std::string storage_device;
  std::string storage_address;
};

// Bytes and packets one HTB class sent on one node's egress (tc -s class show).
struct KernelClassCounters {
  std::string name;     // the policy's class name
  std::string classid;  // "1:11"
  std::uint64_t bytes = 0;
  std::uint64_t packets = 0;
};

class NetnsCluster {
 public:
  // Runs `script up`. io or unsupported naming the failing command and what
  // it printed; the script removes a partly built cluster itself.
  static Result<std::unique_ptr<NetnsCluster>> up(const NetnsOptions& options);
  // Runs `script down`; a failure is logged (with the id to remove by hand).
  ~NetnsCluster();
  NetnsCluster(const NetnsCluster&) = delete;
  NetnsCluster& operator=(const NetnsCluster&) = delete;

  const std::string& id() const noexcept { return id_; }
  const std::string& subnet() const noexcept { return subnet_; }
  const std::string& rate() const noexcept { return options_.rate; }
  const std::vector<NetnsNode>& nodes() const noexcept { return nodes_; }
  // The storage namespace (device: its bridge; address: where a storage
  // server listens), or null without storage links. enterNetnsNode() enters it.
  const NetnsNode* storage() const noexcept { return storage_ ? &*storage_ : nullptr; }

  // Renders and applies `policy_path` on every node again (`script shape`);
  // the kernel's class counters restart from zero.
  Status shape(const std::string& policy_path);

  // Every HTB class of the current policy on node `index`, from
  // `tc -s class show`. internal when a class has no counters.
  Result<std::vector<KernelClassCounters>> classCounters(int index) const;

  // Bytes the storage namespace sent to node `index` over its storage link
  // (the tbf on the link's storage end, `tc -s qdisc show`): what the node
  // read, plus headers. invalid_usage without storage links.
  Result<std::uint64_t> storageLinkBytesToNode(int index) const;

 private:
  explicit NetnsCluster(NetnsOptions options, std::string id)
      : options_(std::move(options)), id_(std::move(id)) {}
  Status parseListing(const std::string& listing, bool with_nodes);

  NetnsOptions options_;
  std::string id_;
  std::string subnet_;
  std::vector<NetnsNode> nodes_;
  std::optional<NetnsNode> storage_;
  std::vector<std::pair<std::string, std::string>> classes_;  // (name, classid)
  bool up_ = false;
};

// In a forked rank, before the plugin or UCX is loaded: joins `node`'s
// network namespace, then a private mount namespace with a sysfs of that
// network namespace mounted on /sys (UCX and the transport list devices in
// /sys/class/net, which shows the namespace of whoever mounted it; `ip netns
// exec` does the same), and sets DUALPATH_NET_DEVICES to the node's veth.
// io naming the namespace and the call that failed.
Status enterNetnsNode(const NetnsNode& node);

}  // namespace dualpath::bench
