#include <iostream>

#include "qos_cli.h"

int main(int argc, char** argv) {
  return dualpath::qos::cli::run(argc, argv, std::cout, std::cerr);
}
