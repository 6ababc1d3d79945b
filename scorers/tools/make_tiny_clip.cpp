// dedpo_make_tiny_clip <folder> [--seed N]
//
// Writes a tiny random-weight scorer folder (see dedpo/scorers/tiny.hpp): a transformers-layout
// CLIPModel with its tokenizer and preprocessor settings, and an aesthetic head, so the annotator
// and metric plugins run end to end on a CPU in seconds.
#include <cstdint>
#include <exception>
#include <iostream>
#include <string>

#include "dedpo/scorers/tiny.hpp"

int main(int argc, char** argv) {
  if (argc != 2 && !(argc == 4 && std::string(argv[2]) == "--seed")) {
    std::cerr << "usage: dedpo_make_tiny_clip <folder> [--seed N]\n";
    return 2;
  }
  try {
    const std::uint64_t seed = argc == 4 ? std::stoull(argv[3]) : 0;
    dedpo::scorers::write_tiny_clip_folder(argv[1], seed);
    std::cout << argv[1] << "\n";
    return 0;
  } catch (const std::exception& error) {
    std::cerr << "error: " << error.what() << "\n";
    return 1;
  }
}
