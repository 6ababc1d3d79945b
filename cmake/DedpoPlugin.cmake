# dedpo_add_plugin(<name> [SOURCES <files>...] [LIBRARIES <targets>...])
#
# Builds the plugin library `dedpo_<name>` as a loadable module from the calling folder. Without
# SOURCES every *.cpp of the folder is compiled. A plugin folder's CMakeLists.txt is this one line.
set(DEDPO_PLUGIN_INSTALL_DIR ${CMAKE_INSTALL_LIBDIR}/dedpo/plugins)

function(dedpo_add_plugin name)
  cmake_parse_arguments(PARSE_ARGV 1 arg "" "" "SOURCES;LIBRARIES")
  if(NOT arg_SOURCES)
    file(GLOB arg_SOURCES CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/*.cpp)
  endif()
  set(target dedpo_${name})
  add_library(${target} MODULE ${arg_SOURCES})
  target_link_libraries(${target} PRIVATE dedpo::core ${arg_LIBRARIES})
  # Loaded by file name from the plugin folder: no "lib" prefix, hidden symbols except the entry.
  set(output_dir ${DEDPO_PLUGIN_OUTPUT_DIR})
  if(NOT output_dir)
    set(output_dir ${CMAKE_BINARY_DIR}/plugins)
  endif()
  set_target_properties(${target} PROPERTIES
    PREFIX ""
    CXX_VISIBILITY_PRESET hidden
    LIBRARY_OUTPUT_DIRECTORY ${output_dir})
  if(TARGET dedpo_all_plugins)
    add_dependencies(dedpo_all_plugins ${target})
  endif()
  if(NOT DEDPO_PLUGIN_NO_INSTALL)
    install(TARGETS ${target} LIBRARY DESTINATION ${DEDPO_PLUGIN_INSTALL_DIR})
  endif()
endfunction()

# Adds every sub-folder that holds a CMakeLists.txt: a new plugin is a new folder, nothing else.
function(dedpo_add_plugin_folders)
  file(GLOB children RELATIVE ${CMAKE_CURRENT_SOURCE_DIR} CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/*/CMakeLists.txt)
  list(SORT children)
  foreach(child IN LISTS children)
    get_filename_component(folder ${child} DIRECTORY)
    add_subdirectory(${folder})
  endforeach()
endfunction()
