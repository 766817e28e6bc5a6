// Request targets: path segments and queries, percent-decoded.
#include "codec/url.h"

#include <gtest/gtest.h>

namespace syncsched::codec {
namespace {

TEST(SplitTarget, PathAndQuery) {
  auto t = SplitTarget("/sync/status?a=1&b=2");
  EXPECT_EQ(t.path, "/sync/status");
  EXPECT_EQ(t.query, "a=1&b=2");
  auto bare = SplitTarget("/health");
  EXPECT_EQ(bare.path, "/health");
  EXPECT_EQ(bare.query, "");
}

TEST(PercentDecode, EscapesAndPlus) {
  EXPECT_EQ(PercentDecode("a%20b%2Fc", false).value(), "a b/c");
  EXPECT_EQ(PercentDecode("a+b", false).value(), "a+b");
  EXPECT_EQ(PercentDecode("a+b", true).value(), "a b");
  EXPECT_EQ(PercentDecode("%e2%82%ac", true).value(), "\xe2\x82\xac");
  EXPECT_FALSE(PercentDecode("%", true).ok());
  EXPECT_FALSE(PercentDecode("%4", true).ok());
  EXPECT_FALSE(PercentDecode("%zz", true).ok());
  EXPECT_FALSE(PercentDecode("%00", true).ok());
  EXPECT_EQ(PercentDecode("%zz", true).error().code, "bad_request");
}

TEST(SplitPath, Segments) {
  EXPECT_EQ(SplitPath("/").value(), std::vector<std::string>{});
  EXPECT_EQ(SplitPath("/sync/start").value(), (std::vector<std::string>{"sync", "start"}));
  EXPECT_EQ(SplitPath("/sync/start/").value(), (std::vector<std::string>{"sync", "start"}));
  EXPECT_EQ(SplitPath("/connections/acme%20corp").value(),
            (std::vector<std::string>{"connections", "acme corp"}));
  // An encoded slash stays inside its segment.
  EXPECT_EQ(SplitPath("/connections/a%2Fb").value(),
            (std::vector<std::string>{"connections", "a/b"}));
  EXPECT_EQ(SplitPath("/a//b").value(), (std::vector<std::string>{"a", "", "b"}));
  EXPECT_FALSE(SplitPath("sync/start").ok());
  EXPECT_FALSE(SplitPath("/connections/%").ok());
}

// Found by fuzzing: Boost.URL reads "/./" as one empty segment (it hides the "/." prefix), which
// "//" does not give. Dot segments, escaped or not, are refused with 400 naming the segment.
TEST(SplitPath, DotSegmentsAreRefused) {
  for (std::string_view path : {"/./", "/.//", "/.", "/..", "/a/./b", "/a/../b", "/sync/%2e",
                                "/sync/%2E%2e/start", "/a/.%2E", "/a/b/.."}) {
    auto segments = SplitPath(path);
    ASSERT_FALSE(segments.ok()) << path;
    EXPECT_EQ(segments.error().http_status, 400) << path;
    EXPECT_NE(segments.error().message.find("dot segment"), std::string::npos)
        << segments.error().message;
  }
  // Dots inside a segment are names like any other.
  EXPECT_EQ(SplitPath("/a/.b/c.").value(), (std::vector<std::string>{"a", ".b", "c."}));
  EXPECT_EQ(SplitPath("/a/.../b").value(), (std::vector<std::string>{"a", "...", "b"}));
}

TEST(ParseQuery, Pairs) {
  auto q = ParseQuery("a=1&b=&c&&d=x%3Dy+z");
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(q.value(), (QueryParams{{"a", "1"}, {"b", ""}, {"c", ""}, {"d", "x=y z"}}));
  EXPECT_TRUE(ParseQuery("").value().empty());
  auto dup = ParseQuery("a=1&a=2");
  ASSERT_FALSE(dup.ok());
  EXPECT_EQ(dup.error().field, "a");
  EXPECT_FALSE(ParseQuery("a=%G0").ok());
  EXPECT_EQ(ParseQuery("a=%G0").error().code, "bad_request");
  auto nul = ParseQuery("a=1&b=x%00");
  ASSERT_FALSE(nul.ok());
  EXPECT_EQ(nul.error().http_status, 400u);
  EXPECT_EQ(nul.error().code, "bad_request");
  EXPECT_EQ(nul.error().field, "b");
  EXPECT_EQ(ParseQuery("=x").value(), (QueryParams{{"", "x"}}));
  EXPECT_EQ(ParseQuery("a=b=c&d=?/").value(), (QueryParams{{"a", "b=c"}, {"d", "?/"}}));
}

// Bytes the HTTP parser lets through though RFC 3986 wants them escaped are taken as escaped.
TEST(ParseQuery, StrayBytesAreTakenAsEscaped) {
  EXPECT_EQ(ParseQuery("connection_id=\xc3\xa9t\xc3\xa9&x=\"{|}\"").value(),
            (QueryParams{{"connection_id", "\xc3\xa9t\xc3\xa9"}, {"x", "\"{|}\""}}));
  EXPECT_EQ(ParseQuery("a=%C3%A9").value(), ParseQuery("a=\xc3\xa9").value());
}

TEST(SplitPath, StrayBytesAreTakenAsEscaped) {
  EXPECT_EQ(SplitPath("/connections/\xc3\xa9t\xc3\xa9").value(),
            (std::vector<std::string>{"connections", "\xc3\xa9t\xc3\xa9"}));
  EXPECT_EQ(SplitPath("/a/%7Bb%7D").value(), SplitPath("/a/{b}").value());
  EXPECT_FALSE(SplitPath("/a/%00").ok());
  EXPECT_EQ(SplitPath("//").value(), std::vector<std::string>{});
}

}  // namespace
}  // namespace syncsched::codec
