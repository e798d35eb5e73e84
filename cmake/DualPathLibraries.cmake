# Our shared libraries (common, qos, transport, and the plugin that depends on
# them) find each other through RUNPATH $ORIGIN, in the build tree and after a
# copy of build/lib anywhere: NCCL dlopens the plugin by name, and its
# dependencies must resolve without LD_LIBRARY_PATH pointing at them.
function(dualpath_set_library_version target)
  set_target_properties(${target} PROPERTIES
    VERSION ${PROJECT_VERSION}
    SOVERSION ${PROJECT_VERSION_MAJOR}
    BUILD_WITH_INSTALL_RPATH ON
    INSTALL_RPATH "$ORIGIN")
endfunction()
