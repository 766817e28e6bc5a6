// The route table (src/daemon/api.cc) against docs/http-api.md's route list, and the routing,
// 405s and scopes that come from it.
#include <gtest/gtest.h>

#include <fstream>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "daemon/api.h"
#include "daemon/auth.h"

namespace syncsched::daemon {
namespace {

struct DocRoute {
  std::string method, pattern, scope, takes;
};

std::string_view TakesName(Api::Takes t) {
  switch (t) {
    case Api::Takes::kBody:
      return "body";
    case Api::Takes::kQuery:
      return "query";
    case Api::Takes::kNone:
      break;
  }
  return "none";
}

std::string Trim(std::string s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '`')) s.erase(s.begin());
  while (!s.empty() && (s.back() == ' ' || s.back() == '`')) s.pop_back();
  return s;
}

// The rows of the first table of docs/http-api.md: "| `METHOD /pattern` | scope | takes | ...".
std::vector<DocRoute> DocRoutes() {
  std::string path = SYNCSCHED_SOURCE_DIR;
  path += "/docs/http-api.md";  // (not string + literal: GCC 12's -Warray-bounds misfires on it)
  std::ifstream in(path);
  EXPECT_TRUE(in) << "docs/http-api.md not found";
  std::vector<DocRoute> out;
  std::string line;
  bool in_table = false;
  while (std::getline(in, line)) {
    if (line.rfind("| method and route |", 0) == 0) {
      in_table = true;
      continue;
    }
    if (!in_table) continue;
    if (line.rfind("|---", 0) == 0) continue;
    if (line.empty() || line[0] != '|') break;
    std::vector<std::string> cells;
    std::stringstream row(line.substr(1));
    std::string cell;
    while (std::getline(row, cell, '|')) cells.push_back(Trim(cell));
    if (cells.size() < 3) continue;
    DocRoute r;
    std::size_t space = cells[0].find(' ');
    r.method = cells[0].substr(0, space);
    r.pattern = space == std::string::npos ? "" : cells[0].substr(space + 1);
    r.scope = cells[1] == "none" ? "" : cells[1];
    const std::string& t = cells[2];
    r.takes = t.rfind("?", 0) == 0 ? "query" : (t == "—" || t.empty()) ? "none" : "body";
    out.push_back(r);
  }
  return out;
}

TEST(RouteTable, DocsListEveryRouteAsTheTableDeclaresIt) {
  std::vector<DocRoute> docs = DocRoutes();
  std::vector<Api::RouteInfo> routes = Api::Routes();
  ASSERT_EQ(docs.size(), routes.size()) << "docs/http-api.md's route table and api.cc's differ";
  for (std::size_t i = 0; i < routes.size(); ++i) {
    const Api::RouteInfo& r = routes[i];
    SCOPED_TRACE(std::string(r.method) + " " + std::string(r.pattern));
    EXPECT_EQ(docs[i].method, r.method);
    EXPECT_EQ(docs[i].pattern, r.pattern);
    EXPECT_EQ(docs[i].scope, r.scope);
    EXPECT_EQ(docs[i].takes, TakesName(r.takes));
  }
}

TEST(RouteTable, EachMethodAndPatternOnceAndEveryScopeKnown) {
  std::set<std::pair<std::string_view, std::string_view>> seen;
  const std::set<std::string_view> scopes = {"", kScopeSyncsRead, kScopeSyncsExecute,
                                             kScopeSyncsUpdate, kScopeConnectionsWrite};
  for (const Api::RouteInfo& r : Api::Routes()) {
    EXPECT_TRUE(seen.insert({r.method, r.pattern}).second) << r.method << " " << r.pattern;
    EXPECT_TRUE(scopes.count(r.scope)) << r.scope;
    EXPECT_EQ(r.pattern.front(), '/') << r.pattern;
    // Only GET /health needs no key.
    EXPECT_EQ(r.scope.empty(), r.pattern == "/health") << r.pattern;
  }
}

}  // namespace
}  // namespace syncsched::daemon
