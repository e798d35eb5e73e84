#include <gtest/gtest.h>

#include <dualpath/common/status.h>

namespace dualpath {
namespace {

Result<int> half(int value) {
  if (value % 2 != 0) return Status(StatusCode::invalid_argument, "odd");
  return value / 2;
}

Result<int> quarter(int value) {
  DP_TRY_ASSIGN(int h, half(value));
  DP_TRY_ASSIGN(int q, half(h));
  return q;
}

Status checkEven(int value) {
  DP_TRY(half(value).status());
  return Status::ok();
}

TEST(StatusTest, OkCarriesNoMessage) {
  Status ok;
  EXPECT_TRUE(ok.isOk());
  EXPECT_EQ(ok.code(), StatusCode::ok);
  EXPECT_EQ(ok.toString(), "ok");
}

TEST(StatusTest, ContextPrefixesTheMessage) {
  Status error = Status(StatusCode::io, "read failed").withContext("loading block 3f2a");
  EXPECT_EQ(error.toString(), "io: loading block 3f2a: read failed");
}

TEST(StatusTest, TryAssignPropagatesTheFirstError) {
  EXPECT_EQ(*quarter(8), 2);
  Result<int> failed = quarter(6);  // 6 -> 3 -> odd
  ASSERT_FALSE(failed.hasValue());
  EXPECT_EQ(failed.status().code(), StatusCode::invalid_argument);
  EXPECT_EQ(failed.status().message(), "odd");
  EXPECT_TRUE(checkEven(4).isOk());
  EXPECT_EQ(checkEven(5).code(), StatusCode::invalid_argument);
}

TEST(StatusTest, ResultFromOkStatusIsAnInternalError) {
  Result<int> broken{Status::ok()};
  EXPECT_FALSE(broken.hasValue());
  EXPECT_EQ(broken.status().code(), StatusCode::internal);
}

}  // namespace
}  // namespace dualpath
