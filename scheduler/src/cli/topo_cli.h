// `dualpath-topo`: the GPU server's PCIe topology as DualPath sees it.
//
//   dualpath-topo [--xml FILE] [--config FILE] [--json]
//
// Prints each GPU's compute NIC (CNIC) and its distance class, the storage
// NICs (SNICs), NUMA placement, every NIC with its role (and why a NIC is
// excluded or unused), NVMe devices and warnings; --json prints the same for
// tools. Without --xml it reads the live machine. Exit 0 on success, a
// machine without GPU included; 2 on bad input, with
// "dualpath-topo: <file>: <reason>" on stderr.
//
// The command lives here, not in main(), so tests run it in-process.
// Threading: run() is reentrant; it writes only to the streams it is given.
#pragma once

#include <iosfwd>

namespace dualpath::scheduler::topo::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitInvalid = 2;  // bad arguments, unreadable or invalid input

int run(int argc, const char* const* argv, std::ostream& out, std::ostream& err);

}  // namespace dualpath::scheduler::topo::cli
