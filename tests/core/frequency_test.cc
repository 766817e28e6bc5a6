#include "syncsched/frequency.h"
#include "core/names.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace syncsched {
namespace {

using std::chrono::milliseconds;

constexpr int64_t kS = 1000;
constexpr int64_t kM = 60 * kS;
constexpr int64_t kH = 60 * kM;
constexpr int64_t kD = 24 * kH;
constexpr int64_t kW = 7 * kD;

// Bounds that accept everything positive: grammar tests are not about the range.
const FrequencyBounds kWide{milliseconds(1), milliseconds(std::numeric_limits<int64_t>::max())};

const std::string kGrammarTail =
    " is not understood: expected \"every N unit\" with N a number and unit one of ms, s, m, h, "
    "d, w (or their long forms), or every hour|day|week|month|half day|half hour|quarter hour";

// The input quoted as every core message quotes it (control characters escaped; tested with
// core::Quote itself).
std::string NotUnderstood(const std::string& input) {
  return "frequency " + core::Quote(input) + kGrammarTail;
}

struct Good {
  std::string text;
  int64_t ms;
};

void ExpectParses(const std::vector<Good>& cases, const FrequencyBounds& bounds = kWide) {
  for (const Good& c : cases) {
    Result<milliseconds> r = ParseFrequency(c.text, bounds);
    ASSERT_TRUE(r.ok()) << "\"" << c.text << "\": " << r.status();
    EXPECT_EQ(r->count(), c.ms) << "\"" << c.text << "\"";
  }
}

TEST(ParseFrequencyTest, EveryUnitSpelling) {
  const std::vector<std::pair<std::vector<std::string>, int64_t>> units = {
      {{"ms"}, 1},
      {{"s", "sec", "secs", "second", "seconds"}, kS},
      {{"m", "min", "mins", "minute", "minutes"}, kM},
      {{"h", "hr", "hrs", "hour", "hours"}, kH},
      {{"d", "day", "days"}, kD},
      {{"w", "week", "weeks"}, kW},
  };
  std::vector<Good> cases;
  for (const auto& [spellings, ms] : units) {
    for (const std::string& unit : spellings) {
      for (const std::string prefix : {"", "every "}) {
        cases.push_back({prefix + "3" + unit, 3 * ms});
        cases.push_back({prefix + "3 " + unit, 3 * ms});
        cases.push_back({prefix + "1" + unit, ms});
        cases.push_back({prefix + "1 " + unit, ms});
      }
    }
  }
  ExpectParses(cases);
}

TEST(ParseFrequencyTest, Aliases) {
  ExpectParses({
      {"every hour", kH},
      {"every day", kD},
      {"every week", kW},
      {"every month", 30 * kD},
      {"every half day", 12 * kH},
      {"every half hour", 30 * kM},
      {"every quarter hour", 15 * kM},
      {"EVERY Half Hour", 30 * kM},
      {"  every   quarter \t hour  ", 15 * kM},
  });
}

TEST(ParseFrequencyTest, CaseInsensitive) {
  ExpectParses({
      {"5M", 5 * kM},
      {"5MS", 5},
      {"5Ms", 5},
      {"EVERY 2 HOURS", 2 * kH},
      {"Every 1 Week", kW},
      {"3 SeCoNdS", 3 * kS},
      {"every DAY", kD},
  });
}

TEST(ParseFrequencyTest, WhiteSpace) {
  ExpectParses({
      {"  5m  ", 5 * kM},
      {"\t5m\n", 5 * kM},
      {"every    5m", 5 * kM},
      {"every 5    m", 5 * kM},
      {"   every   5   minutes   ", 5 * kM},
      {"every\t5\tm", 5 * kM},
      {"\r\n every 1 d \f\v", kD},
  });
}

TEST(ParseFrequencyTest, DecimalsAndRounding) {
  ExpectParses({
      {"1.5h", 90 * kM},
      {"1.5 hours", 90 * kM},
      {"every 0.5d", 12 * kH},
      {".5h", 30 * kM},
      {"0.25m", 15 * kS},
      {"2.0s", 2 * kS},
      {"1.000000000000000000000000000001s", kS},  // many digits: no overflow, rounds down
      {"0.0015s", 2},                             // 1.5 ms: half rounds up
      {"0.0014999s", 1},                          // just below half rounds down
      {"0.0005s", 1},                             // 0.5 ms rounds up to 1
      {"1.5ms", 2},
      {"1.4999ms", 1},
      {"1.49999999999999999999999999ms", 1},
      {"0.9999999999999999999999s", kS},  // rounds up to a whole second
      {"1.1w", 665280000},                // 1.1 * 604800000 exactly
      {"0.3333333s", 333},
      {"0.6666667s", 667},
      {"007m", 7 * kM},  // leading zeros
      {"00.5s", 500},
  });
}

TEST(ParseFrequencyTest, DefaultBoundsAreInclusive) {
  ExpectParses({{"30s", 30 * kS}, {"31d", 31 * kD}, {"0.5m", 30 * kS}, {"every month", 30 * kD}},
               FrequencyBounds{});
  const FrequencyBounds defaults;
  EXPECT_EQ(defaults.min, std::chrono::seconds(30));
  EXPECT_EQ(defaults.max, std::chrono::hours(24 * 31));
}

TEST(ParseFrequencyTest, CustomBoundsAreInclusive) {
  const FrequencyBounds b{milliseconds(5 * kM), milliseconds(2 * kH)};
  ExpectParses({{"5m", 5 * kM}, {"300s", 5 * kM}, {"2h", 2 * kH}, {"120 minutes", 2 * kH}}, b);
  for (const std::string text : {"299999ms", "7200001ms", "4m", "3h", "every day"}) {
    Result<milliseconds> r = ParseFrequency(text, b);
    ASSERT_FALSE(r.ok()) << text;
    EXPECT_EQ(r.status(), Status::InvalidArgument("frequency \"" + text +
                                                  "\" is out of range: must be between 5m and 2h"));
  }
}

TEST(ParseFrequencyTest, OutOfDefaultRange) {
  const std::vector<std::string> cases = {
      "5s",
      "29s",
      "29999ms",
      "29.999s",
      "0.49m",
      "32d",
      "5w",
      "2678400001ms",
      "31.00001d",
      "every 5 weeks",
      "0s",
      "0ms",
      "0.0001s",
      "0 days",
      "000m",
      "99999999999999999999999999s",  // would overflow int64
      "9223372036854775807ms",        // int64 max
      "9223372036854775808ms",        // int64 max + 1
      "9223372036854775807w",         // fits in int64 units, not in ms
      "15250284452.4716w",            // just above int64 max ms
  };
  for (const std::string& text : cases) {
    Result<milliseconds> r = ParseFrequency(text);
    ASSERT_FALSE(r.ok()) << text;
    EXPECT_EQ(r.status(),
              Status::InvalidArgument("frequency \"" + text +
                                      "\" is out of range: must be between 30s and 31d"))
        << text;
  }
}

TEST(ParseFrequencyTest, ZeroIsRejectedEvenWithZeroMinimum) {
  const FrequencyBounds b{milliseconds(0), milliseconds(kD)};
  for (const std::string text : {"0s", "0.0001s", "0.4ms"}) {
    Result<milliseconds> r = ParseFrequency(text, b);
    ASSERT_FALSE(r.ok()) << text;
    EXPECT_TRUE(r.status().IsInvalidArgument());
    EXPECT_EQ(r.status().message(),
              "frequency \"" + text + "\" is out of range: must be between 1ms and 1d");
  }
}

TEST(ParseFrequencyTest, Int64Extremes) {
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  ExpectParses({{"9223372036854775807ms", kMax},
                {"9223372036854775.807s", kMax},
                {"15250284452w", 15250284452 * kW}});
  for (const std::string text :
       {"9223372036854775808ms", "9223372036854775.8075s", "15250284453w",
        "100000000000000000000000000000000000000000000000000000000000000000000000.5 ms"}) {
    Result<milliseconds> r = ParseFrequency(text, kWide);
    ASSERT_FALSE(r.ok()) << text;
    EXPECT_EQ(r.status().message(),
              "frequency \"" + text +
                  "\" is out of range: must be between 1ms and 9223372036854775807ms");
  }
}

TEST(ParseFrequencyTest, RejectsWhatIsNotTheGrammar) {
  const std::vector<std::string> cases = {
      "",
      "   ",
      "\t\n",
      "every",
      "every ",
      "every every 5m",
      "every5m",
      "5",  // no unit
      "every 5",
      "m",  // no number
      "every m",
      "every minutes",
      "hour",  // aliases need "every"
      "half hour",
      "quarter hour",
      "month",
      "every half",
      "every quarter",
      "every quarter day",
      "every half week",
      "every hours",
      "every 1 month",  // month is an alias, not a unit
      "1 year",
      "1y",
      "every 5 fortnights",
      "5 msec",
      "5 millisecond",
      "5 milliseconds",
      "5 hs",
      "5 ds",
      "5 wk",
      "5 mn",
      "-5m",  // negative
      "- 5m",
      "every -1h",
      "+5m",
      "5m junk",  // trailing junk
      "5m5s",
      "5m 5s",
      "5 m s",
      "5m.",
      "5m!",
      "5 5m",
      "5m every",
      "1e3s",  // exponent
      "1E3s",
      "1e+3 s",
      "1.5e2m",
      "0x10s",  // hex
      "0x1Am",
      "nan s",  // NaN and infinity
      "nans",
      "NaNm",
      "inf s",
      "infm",
      "infinity h",
      "5.m",  // malformed decimals
      "5. m",
      ".m",
      ". m",
      "1.2.3s",
      "1..2s",
      "1,5h",  // no locale: comma is not a decimal point
      "1 000s",
      "1_000s",
      "1'000s",
      "\xd9\xa5m",   // Arabic-Indic digit five
      "5\xc2\xa0m",  // no-break space is not white space here
      "\"5m\"",
  };
  for (const std::string& text : cases) {
    Result<milliseconds> r = ParseFrequency(text, kWide);
    ASSERT_FALSE(r.ok()) << "\"" << text << "\" parsed as " << r->count();
    EXPECT_EQ(r.status(), Status::InvalidArgument(NotUnderstood(text))) << text;
  }
}

TEST(ParseFrequencyTest, EmbeddedNulIsRejectedAndQuoted) {
  const std::string text("5m\0x", 4);
  Result<milliseconds> r = ParseFrequency(text, kWide);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), NotUnderstood(text));
  EXPECT_NE(r.status().message().find("frequency \"5m\\x00x\""), std::string::npos)
      << "the NUL escaped, the message one line";
}

TEST(ParseFrequencyTest, MessagesQuoteTheInputExactly) {
  Result<milliseconds> r = ParseFrequency("every 5 fortnights");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().ToString(),
            "INVALID_ARGUMENT: frequency \"every 5 fortnights\" is not understood: expected "
            "\"every N unit\" with N a number and unit one of ms, s, m, h, d, w (or their long "
            "forms), or every hour|day|week|month|half day|half hour|quarter hour");
  r = ParseFrequency("5s");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().ToString(),
            "INVALID_ARGUMENT: frequency \"5s\" is out of range: must be between 30s and 31d");
  // Surrounding white space and case are kept in the quote.
  r = ParseFrequency("  Every 5 S ");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(),
            "frequency \"  Every 5 S \" is out of range: must be between 30s and 31d");
  r = ParseFrequency(" 5 Parsecs ");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), NotUnderstood(" 5 Parsecs "));
}

TEST(ParseFrequencyTest, HugeInputDoesNotMisbehave) {
  const std::string digits(100000, '9');
  Result<milliseconds> r = ParseFrequency(digits + "s", kWide);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("out of range"), std::string::npos);
  r = ParseFrequency("1." + digits + "s", kWide);  // rounds up to exactly 2 s
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->count(), 2 * kS);
}

TEST(FormatFrequencyTest, Canonical) {
  const std::vector<Good> cases = {
      {"1ms", 1},
      {"999ms", 999},
      {"1500ms", 1500},
      {"1s", kS},
      {"30s", 30 * kS},
      {"90s", 90 * kS},
      {"1m", kM},
      {"15m", 15 * kM},
      {"90m", 90 * kM},
      {"1h", kH},
      {"2h", 2 * kH},
      {"12h", 12 * kH},
      {"25h", 25 * kH},
      {"1d", kD},
      {"6d", 6 * kD},
      {"1w", kW},
      {"2w", 14 * kD},
      {"30d", 30 * kD},
      {"31d", 31 * kD},
      {"8d", 8 * kD},
      {"52w", 52 * kW},
      {"3601s", kH + kS},
      {"86400001ms", kD + 1},
      {"9223372036854775807ms", std::numeric_limits<int64_t>::max()},
  };
  for (const Good& c : cases) EXPECT_EQ(FormatFrequency(milliseconds(c.ms)), c.text) << c.ms;
}

TEST(FormatFrequencyTest, ZeroAndNegative) {
  EXPECT_EQ(FormatFrequency(milliseconds(0)), "0ms");
  EXPECT_EQ(FormatFrequency(milliseconds(-1)), "0ms");
  EXPECT_EQ(FormatFrequency(milliseconds(-kW)), "0ms");
  EXPECT_EQ(FormatFrequency(milliseconds(std::numeric_limits<int64_t>::min())), "0ms");
}

TEST(FormatFrequencyTest, AliasesFormatCanonically) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"every hour", "1h"},          {"every day", "1d"},       {"every week", "1w"},
      {"every month", "30d"},        {"every half day", "12h"}, {"every half hour", "30m"},
      {"every quarter hour", "15m"}, {"1.5h", "90m"},           {"every 7 days", "1w"},
  };
  for (const auto& [in, out] : cases) {
    Result<milliseconds> r = ParseFrequency(in);
    ASSERT_TRUE(r.ok()) << in;
    EXPECT_EQ(FormatFrequency(*r), out) << in;
  }
}

constexpr int64_t kTenYears = 3653 * kD;
const FrequencyBounds kRoundTrip{milliseconds(1), milliseconds(kTenYears)};

void ExpectRoundTrip(int64_t ms) {
  const std::string text = FormatFrequency(milliseconds(ms));
  Result<milliseconds> r = ParseFrequency(text, kRoundTrip);
  ASSERT_TRUE(r.ok()) << ms << " -> \"" << text << "\": " << r.status();
  ASSERT_EQ(r->count(), ms) << "\"" << text << "\"";
}

TEST(FrequencyRoundTripTest, RandomDurations) {
  std::mt19937_64 rng(20240521);
  // A mix of scales so that every canonical unit is exercised.
  const std::vector<int64_t> scales = {1, kS, kM, kH, kD, kW};
  std::uniform_int_distribution<int64_t> any(1, kTenYears);
  for (int i = 0; i < 20000; ++i) ExpectRoundTrip(any(rng));
  for (int64_t scale : scales) {
    std::uniform_int_distribution<int64_t> count(1, kTenYears / scale);
    for (int i = 0; i < 5000; ++i) ExpectRoundTrip(count(rng) * scale);
  }
}

TEST(FrequencyRoundTripTest, Edges) {
  for (int64_t ms = 1; ms <= 5000; ++ms) ExpectRoundTrip(ms);
  for (int64_t ms : {kS, kM, kH, kD, kW, 30 * kD, 31 * kD, kTenYears, kTenYears - 1}) {
    ExpectRoundTrip(ms);
  }
  const std::string max = FormatFrequency(milliseconds(std::numeric_limits<int64_t>::max()));
  Result<milliseconds> r = ParseFrequency(max, kWide);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->count(), std::numeric_limits<int64_t>::max());
}

TEST(FrequencyRoundTripTest, DefaultBoundsEnds) {
  for (milliseconds f : {FrequencyBounds{}.min, FrequencyBounds{}.max}) {
    Result<milliseconds> r = ParseFrequency(FormatFrequency(f));
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(*r, f);
  }
}

}  // namespace
}  // namespace syncsched
