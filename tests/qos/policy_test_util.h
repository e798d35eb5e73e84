// Policies for tests: a valid base policy per fabric kind, with helpers to
// replace or insert lines so each test's error sits on a known line.
#pragma once

#include <string>
#include <vector>

#include <dualpath/qos/policy_loader.h>

namespace dualpath::qos::testing {

// Line numbers below are part of the tests' expectations: edit with care.
inline const char* const kInfinibandPolicy =
    "format = 1\n"                                    // 1
    "[fabric]\n"                                      // 2
    "kind = \"infiniband\"\n"                         // 3
    "max_vls = 4\n"                                   // 4
    "high_limit = 240\n"                              // 5
    "vlarb_high = \"0:192,1:192,2:0,3:192\"\n"        // 6
    "vlarb_low = \"0:192,1:192,2:64,3:192\"\n"        // 7
    "sl2vl = [0,1,2,3, 0,1,2,3, 0,1,2,3, 0,1,2,3]\n"  // 8
    "\n"                                              // 9
    "[[class]]\n"                                     // 10
    "name = \"collective\"\n"                         // 11
    "role = \"collectives\"\n"                        // 12
    "priority = \"high\"\n"                           // 13
    "default = true\n"                                // 14
    "nccl_traffic_classes = [0]\n"                    // 15
    "ib_sl = 0\n"                                     // 16
    "\n"                                              // 17
    "[[class]]\n"                                     // 18
    "name = \"kv\"\n"                                 // 19
    "role = \"kv\"\n"                                 // 20
    "priority = \"low\"\n"                            // 21
    "nccl_traffic_classes = [2]\n"                    // 22
    "ib_sl = 2\n";                                    // 23

inline const char* const kRocePolicy =
    "[fabric]\n"                 // 1
    "kind = \"roce\"\n"          // 2
    "pfc_priorities = [2, 3]\n"  // 3
    "[[class]]\n"                // 4
    "name = \"collective\"\n"    // 5
    "role = \"collectives\"\n"   // 6
    "priority = \"high\"\n"      // 7
    "default = true\n"           // 8
    "dscp = 26\n"                // 9
    "roce_priority = 3\n"        // 10
    "[[class]]\n"                // 11
    "name = \"kv\"\n"            // 12
    "role = \"kv\"\n"            // 13
    "priority = \"low\"\n"       // 14
    "dscp = 10\n"                // 15
    "roce_priority = 2\n";       // 16

inline const char* const kEthernetPolicy =
    "[fabric]\n"                      // 1
    "kind = \"ethernet\"\n"           // 2
    "link_rate = \"200mbit\"\n"       // 3
    "[[class]]\n"                     // 4
    "name = \"collective\"\n"         // 5
    "role = \"collectives\"\n"        // 6
    "priority = \"high\"\n"           // 7
    "default = true\n"                // 8
    "tcp_ports = \"24576-25599\"\n"   // 9
    "[[class]]\n"                     // 10
    "name = \"kv\"\n"                 // 11
    "role = \"kv\"\n"                 // 12
    "priority = \"low\"\n"            // 13
    "tcp_ports = \"25600-26623\"\n";  // 14

// `base` with its 1-based line `line` replaced by `text` (which may hold
// several lines, or be empty to delete the line).
std::string replaceLine(const std::string& base, int line, const std::string& text);
// `base` with `text` appended as new lines.
std::string appendLines(const std::string& base, const std::string& text);

// Every diagnostic as "file:line:column: severity: field: message".
std::vector<std::string> diagnosticTexts(const LoadedPolicy& loaded);

LoadedPolicy loadTestPolicy(const std::string& text);  // source name "policy.toml"

}  // namespace dualpath::qos::testing
