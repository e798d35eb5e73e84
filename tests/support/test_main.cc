// main() of every DualPath test binary.
#include <gtest/gtest.h>

#include "log_capture.h"

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  dualpath::testing::installUnexpectedLogGuard();
  return RUN_ALL_TESTS();
}
