// The launcher's environment read into a WorldPlacement, and a free port for local launches.
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <cstring>

#include "dedpo/error.hpp"
#include "dedpo/host/distributed.hpp"

namespace dedpo {

namespace {

std::string required(const EnvironmentLookup& environment, const std::string& name,
                     const std::string& why) {
  std::optional<std::string> value = environment(name);
  if (!value || value->empty()) {
    throw Error("environment variable " + name + " is not set (" + why + ")");
  }
  return *value;
}

int integer(const std::string& name, const std::string& text) {
  int value = 0;
  const char* end = text.data() + text.size();
  const auto [stop, failure] = std::from_chars(text.data(), end, value);
  if (failure != std::errc() || stop != end) {
    throw Error("environment variable " + name + "=\"" + text + "\": expected an integer");
  }
  return value;
}

int port_number(const std::string& name, const std::string& text) {
  const int port = integer(name, text);
  if (port < 1 || port > 65535) {
    throw Error("environment variable " + name + "=" + text + ": expected a TCP port in [1, 65535]");
  }
  return port;
}

// A launcher's names for the rank, the number of processes and the local rank.
struct RankVariables {
  const char* launcher;
  const char* rank;
  const char* world_size;
  const char* local_rank;
  const char* why;  // why they are needed, for the error of a missing one
};

// The rank, world size and local rank from `names`, checked against each other.
WorldPlacement read_ranks(const EnvironmentLookup& environment, const RankVariables& names) {
  const auto read = [&](const char* name) { return integer(name, required(environment, name, names.why)); };
  WorldPlacement world;
  world.launcher = names.launcher;
  world.rank = read(names.rank);
  world.world_size = read(names.world_size);
  world.local_rank = read(names.local_rank);
  const std::string size_name = names.world_size;
  if (world.world_size < 1) {
    throw Error("environment variable " + size_name + "=" + std::to_string(world.world_size) +
                ": expected at least 1 process");
  }
  const std::string range = "[0, " + size_name + ") = [0, " + std::to_string(world.world_size) + ")";
  if (world.rank < 0 || world.rank >= world.world_size) {
    throw Error("environment variable " + std::string(names.rank) + "=" +
                std::to_string(world.rank) + ": expected a rank in " + range);
  }
  if (world.local_rank < 0 || world.local_rank >= world.world_size) {
    throw Error("environment variable " + std::string(names.local_rank) + "=" +
                std::to_string(world.local_rank) + ": expected a local rank in " + range);
  }
  return world;
}

WorldPlacement from_torchrun(const EnvironmentLookup& environment) {
  const char* why = "RANK is set, so dedpo runs as one worker of a torchrun-style launch";
  WorldPlacement world =
      read_ranks(environment, {"torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK", why});
  world.master_addr = required(environment, "MASTER_ADDR", why);
  world.master_port = port_number("MASTER_PORT", required(environment, "MASTER_PORT", why));
  return world;
}

WorldPlacement from_slurm(const EnvironmentLookup& environment) {
  WorldPlacement world =
      read_ranks(environment, {"slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID",
                          "SLURM_PROCID is set, so dedpo runs as one task of an srun launch"});
  if (!world.distributed()) return world;  // one task (a grid's run): no rendezvous
  std::optional<std::string> address = environment("MASTER_ADDR");
  world.master_addr = address && !address->empty()
                          ? *address
                          : first_slurm_host(required(environment, "SLURM_JOB_NODELIST",
                                                      "the first node hosts the rendezvous "
                                                      "unless MASTER_ADDR is set"));
  std::optional<std::string> port = environment("MASTER_PORT");
  world.master_port = port && !port->empty() ? port_number("MASTER_PORT", *port) : kDefaultMasterPort;
  return world;
}

}  // namespace

std::string first_slurm_host(const std::string& node_list) {
  const auto malformed = [&](const std::string& what) {
    return Error("SLURM_JOB_NODELIST=\"" + node_list + "\": " + what +
                 " (expected hosts like \"gpu[07-09,12],cpu1\")");
  };
  const std::size_t bracket = node_list.find('[');
  const std::size_t comma = node_list.find(',');
  if (bracket == std::string::npos || (comma != std::string::npos && comma < bracket)) {
    const std::string host = node_list.substr(0, comma);
    if (host.empty()) throw malformed("no host");
    return host;
  }
  const std::size_t close = node_list.find(']', bracket);
  if (close == std::string::npos) throw malformed("a '[' without its ']'");
  const std::string ranges = node_list.substr(bracket + 1, close - bracket - 1);
  // The first number of the first range keeps its zero padding: "gpu[07-09]" -> "gpu07".
  const std::string first = ranges.substr(0, ranges.find_first_of(",-"));
  if (first.empty() || first.find_first_not_of("0123456789") != std::string::npos) {
    throw malformed("\"[" + ranges + "]\" does not start with a number");
  }
  return node_list.substr(0, bracket) + first;
}

WorldPlacement read_world_placement(const EnvironmentLookup& environment) {
  if (environment("RANK")) return from_torchrun(environment);
  if (environment("SLURM_PROCID")) return from_slurm(environment);
  WorldPlacement alone;
  alone.launcher = "single";
  return alone;
}

WorldPlacement read_world_placement() {
  return read_world_placement([](const std::string& name) -> std::optional<std::string> {
    const char* value = std::getenv(name.c_str());
    if (value == nullptr) return std::nullopt;
    return std::string(value);
  });
}

int free_local_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw Error(std::string("cannot open a socket: ") + std::strerror(errno));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;  // the kernel picks a free port
  socklen_t length = sizeof(address);
  const bool found = ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0 &&
                     ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0;
  const int failure = errno;
  ::close(fd);
  if (!found) throw Error(std::string("cannot find a free TCP port: ") + std::strerror(failure));
  return ntohs(address.sin_port);
}

}  // namespace dedpo
