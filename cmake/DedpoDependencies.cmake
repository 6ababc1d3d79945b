# Every dependency comes from Debian packages (scripts/setup.sh) or, on GPU machines, from a
# LibTorch 2.x given through CMAKE_PREFIX_PATH.
find_package(Torch REQUIRED)
find_package(Boost 1.74 REQUIRED COMPONENTS program_options)
find_package(tomlplusplus REQUIRED)
find_package(fmt REQUIRED)
find_package(nlohmann_json 3 REQUIRED)
find_package(Threads REQUIRED)

# Torch's imported targets carry its include dirs and ABI flag; wrap them once.
if(NOT TARGET dedpo_torch)
  add_library(dedpo_torch INTERFACE)
  target_link_libraries(dedpo_torch INTERFACE ${TORCH_LIBRARIES})
  target_compile_options(dedpo_torch INTERFACE ${TORCH_CXX_FLAGS})
endif()
