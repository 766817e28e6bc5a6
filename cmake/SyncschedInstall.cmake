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
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/syncschedConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/syncschedConfig.cmake
              ${CMAKE_CURRENT_BINARY_DIR}/syncschedConfigVersion.cmake
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/syncsched)
