# Our shared libraries (common, qos, transport, and the plugin that depends on
# them) find each other through RUNPATH $ORIGIN, in the build tree and after a
# copy of build/lib anywhere: NCCL dlopens the plugin by name, and its
# dependencies must resolve without LD_LIBRARY_PATH pointing at them. They
# export only dualpath:: symbols (dualpath_library.map), since they end up in
# other people's processes.
function(dualpath_shared_library target)
  set_target_properties(${target} PROPERTIES
    VERSION ${PROJECT_VERSION}
    SOVERSION ${PROJECT_VERSION_MAJOR}
    BUILD_WITH_INSTALL_RPATH ON
    INSTALL_RPATH "$ORIGIN"
    LINK_DEPENDS ${CMAKE_CURRENT_FUNCTION_LIST_DIR}/dualpath_library.map)
  target_link_options(${target} PRIVATE
    -Wl,--version-script=${CMAKE_CURRENT_FUNCTION_LIST_DIR}/dualpath_library.map)
endfunction()
