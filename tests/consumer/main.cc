// Uses only installed headers: opens an engine in virtual time and runs a sync for a day.
#include <syncsched/syncsched.h>

#include <boost/asio/io_context.hpp>
#include <iostream>

int main() {
  boost::asio::io_context io;
  syncsched::VirtualClock clock;
  syncsched::Options o;
  o.clock = &clock;
  o.executor = io.get_executor();
  o.run_executor = io.get_executor();
  auto engine = syncsched::Engine::Open(o);
  if (!engine.ok()) return 1;
  int runs = 0;
  (void)(*engine)->RegisterCallback("crm", "contacts", [&](const syncsched::RunContext&) {
    ++runs;
    return syncsched::RunReport::Success();
  });
  syncsched::SyncDefinition def;
  def.name = "contacts";
  def.frequency = "every hour";
  if (!(*engine)->DefineSync("crm", def).ok()) return 2;
  if (!(*engine)->AddConnection("crm", "c1").ok()) return 3;
  clock.RunFor(io, std::chrono::hours(24));
  std::cout << runs << " runs\n";
  return runs == 25 ? 0 : 4;
}
