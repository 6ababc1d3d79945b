// A manifest (pairs_manifest's JSONL or CSV file): the first byte picks the format, the rest is
// the file. Bad lines are records with an error; only a file without a header may throw.
#include <cstdint>

#include "dedpo/error.hpp"
#include "dedpo/records.hpp"
#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const bool csv = data[0] & 1;
  const auto file = dedpo::fuzz::write_scratch_file(
      csv ? "manifest.csv" : "manifest.jsonl", {reinterpret_cast<const char*>(data) + 1, size - 1});
  try {
    for (const dedpo::Record& record : dedpo::read_records(
             file, csv ? dedpo::RecordFormat::csv : dedpo::RecordFormat::jsonl)) {
      // A record's fields are an object that can be written back (dump() throws on invalid UTF-8).
      if (record.error.empty() && !record.fields.is_object()) abort();
      if (record.error.empty()) record.fields.dump();
    }
  } catch (const dedpo::Error&) {
  }
  return 0;
}
