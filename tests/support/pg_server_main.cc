// The ctest fixture's server: `syncsched_pg_server start DIRFILE` starts a throwaway PostgreSQL
// server (support/pg_server.h) and writes its directory to DIRFILE; `stop DIRFILE` stops it and
// removes its directory.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>

#include "support/pg_server.h"

int main(int argc, char** argv) {
  using syncsched::testing::PgServer;
  if (argc != 3) {
    std::cerr << "usage: syncsched_pg_server start|stop DIRFILE\n";
    return 2;
  }
  std::string command = argv[1], dir_file = argv[2];
  if (command == "start") {
    auto server = PgServer::Start();
    if (!server.ok()) {
      std::cerr << server.status().message() << "\n";
      return 1;
    }
    std::ofstream(dir_file) << (*server)->dir();
    std::cout << "PostgreSQL test server in " << (*server)->dir() << "\n";
    (*server)->Detach();
    return 0;
  }
  if (command == "stop") {
    std::string dir;
    std::ifstream(dir_file) >> dir;
    if (dir.empty()) return 0;
    auto server = PgServer::Attach(dir);
    server->Adopt();  // stopped and removed by its destructor
    std::remove(dir_file.c_str());
    return 0;
  }
  std::cerr << "unknown command " << command << "\n";
  return 2;
}
