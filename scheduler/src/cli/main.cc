#include <exception>
#include <iostream>

#include "topo_cli.h"

int main(int argc, char** argv) {
  // Our code reports through Status; this catches what a library may still
  // throw (std::bad_alloc) so the admin gets a message, not std::terminate.
  try {
    return dualpath::scheduler::topo::cli::run(argc, argv, std::cout, std::cerr);
  } catch (const std::exception& e) {
    std::cerr << "dualpath-topo: internal error: " << e.what() << '\n';
  } catch (...) {
    std::cerr << "dualpath-topo: internal error\n";
  }
  return dualpath::scheduler::topo::cli::kExitInvalid;
}
