# Warning and sanitizer flags, applied per target through syncsched_target_defaults().
function(syncsched_target_defaults target)
  target_compile_features(${target} PUBLIC cxx_std_20)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic)
  if(CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    # Clang's static check of the core's lock annotations (src/core/thread_annotations.h). CI
    # makes it an error (scripts/test.sh: the fuzz build, build-fuzz/).
    target_compile_options(${target} PRIVATE -Wthread-safety)
  endif()
  if(SYNCSCHED_SANITIZE)
    list(JOIN SYNCSCHED_SANITIZE "," _san)
    target_compile_options(${target} PRIVATE -fsanitize=${_san} -fno-omit-frame-pointer
                                             -fno-sanitize-recover=all)
    target_link_options(${target} PRIVATE -fsanitize=${_san})
    if("thread" IN_LIST SYNCSCHED_SANITIZE AND CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
      # libstdc++'s atomic_thread_fence (used by Asio) is not modelled by TSan; GCC says so once
      # per use. The fences Asio relies on are paired with atomics TSan does see.
      target_compile_options(${target} PRIVATE -Wno-tsan)
    endif()
  endif()
endfunction()
