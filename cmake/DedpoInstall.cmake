# Installs the SDK: headers, the core library, the program, the plugins and a CMake package, so
# an out-of-tree plugin project does find_package(dedpo) and one dedpo_add_plugin() call.
include(CMakePackageConfigHelpers)
set(DEDPO_CMAKE_INSTALL_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/dedpo)

install(TARGETS dedpo_torch EXPORT dedpoTargets)
install(EXPORT dedpoTargets NAMESPACE dedpo:: DESTINATION ${DEDPO_CMAKE_INSTALL_DIR})
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/dedpoConfig.cmake.in
  ${PROJECT_BINARY_DIR}/dedpoConfig.cmake INSTALL_DESTINATION ${DEDPO_CMAKE_INSTALL_DIR})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/dedpoConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/dedpoConfig.cmake ${PROJECT_BINARY_DIR}/dedpoConfigVersion.cmake
              ${PROJECT_SOURCE_DIR}/cmake/DedpoPlugin.cmake
        DESTINATION ${DEDPO_CMAKE_INSTALL_DIR})
