// The ctest fixture's server: `syncsched_pg_server start DIRFILE` starts a throwaway PostgreSQL
// server (support/pg_server.h) and writes its directory to DIRFILE; `stop DIRFILE` stops it and
// removes its directory. For tests outside C++ (the Nango client test): `createdb DIRFILE` creates
// a fresh database on that server and prints its name and its URI on one line; `dropdb DIRFILE
// NAME` drops it.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>

#include "support/pg_server.h"

int main(int argc, char** argv) {
  using syncsched::testing::PgServer;
  if (argc != 3 && !(argc == 4 && std::string(argv[1]) == "dropdb")) {
    std::cerr << "usage: syncsched_pg_server start|stop|createdb DIRFILE | dropdb DIRFILE NAME\n";
    return 2;
  }
  std::string command = argv[1], dir_file = argv[2];
  if (command == "createdb" || command == "dropdb") {
    std::string dir;
    std::ifstream(dir_file) >> dir;
    if (dir.empty()) {
      std::cerr << "no PostgreSQL test server named in " << dir_file << "\n";
      return 1;
    }
    auto server = PgServer::Attach(dir);
    if (command == "dropdb") {
      syncsched::Status s = server->DropDatabase(argv[3]);
      if (!s.ok()) std::cerr << s.message() << "\n";
      return s.ok() ? 0 : 1;
    }
    std::string name;
    auto uri = server->CreateDatabase(&name);
    if (!uri.ok()) {
      std::cerr << uri.status().message() << "\n";
      return 1;
    }
    std::cout << name << " " << *uri << "\n";
    return 0;
  }
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
