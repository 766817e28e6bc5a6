include(CMakePackageConfigHelpers)

install(TARGETS syncsched EXPORT syncschedTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY include/syncsched DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT syncschedTargets NAMESPACE syncsched::
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/syncsched)
if(TARGET syncschedd)
  install(TARGETS syncschedd RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
endif()
if(TARGET syncsched-bench)
  install(TARGETS syncsched-bench RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
endif()

configure_package_config_file(cmake/syncschedConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/syncschedConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/syncsched)
# find_package(syncsched X.Y) accepts an installed version that is compatible: the same major
# version (SameMajorVersion) from 1.0 on; while the major is 0, the same minor (0.x releases may
# break the API, as in semantic versioning), matching the library's SOVERSION (src/).
if(PROJECT_VERSION_MAJOR EQUAL 0)
  set(_compat SameMinorVersion)
else()
  set(_compat SameMajorVersion)
endif()
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/syncschedConfigVersion.cmake
  COMPATIBILITY ${_compat})
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/syncschedConfig.cmake
              ${CMAKE_CURRENT_BINARY_DIR}/syncschedConfigVersion.cmake
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/syncsched)
