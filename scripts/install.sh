#!/usr/bin/env bash
# Builds libpatronus (release) and lays out an installed tree:
#   PREFIX/include/patronus.h, PREFIX/include/patronus.hpp
#   PREFIX/lib/libpatronus.so.X.Y.Z (+ .so.X and .so links), PREFIX/lib/libpatronus.a
#   PREFIX/lib/pkgconfig/patronus.pc
#   PREFIX/lib/cmake/Patronus/PatronusConfig.cmake (imported target Patronus::patronus)
# Usage: scripts/install.sh --prefix DIR [--no-build] [--from target/release]
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=""
build=1
from=target/release
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    --from) from="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$prefix" ] || { echo "usage: $0 --prefix DIR [--no-build]" >&2; exit 2; }
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
major=${version%%.*}
if [ "$build" = 1 ]; then
  cargo build --release --lib
fi
# What a static link needs besides libpatronus.a (rustc prints it).
case "$from" in *release*) prof=--release ;; *) prof= ;; esac
static_libs=$(cargo rustc $prof --lib --crate-type staticlib -q -- --print native-static-libs 2>&1 \
  | sed -n 's/.*native-static-libs: //p' | tail -1)
[ -n "$static_libs" ] || static_libs="-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc"
mkdir -p "$prefix/include" "$prefix/lib/pkgconfig" "$prefix/lib/cmake/Patronus"
install -m 644 include/patronus.h "$prefix/include/patronus.h"
if [ -f bindings/cpp/patronus.hpp ]; then
  install -m 644 bindings/cpp/patronus.hpp "$prefix/include/patronus.hpp"
fi
install -m 755 "$from/libpatronus.so" "$prefix/lib/libpatronus.so.$version"
ln -sf "libpatronus.so.$version" "$prefix/lib/libpatronus.so.$major"
ln -sf "libpatronus.so.$major" "$prefix/lib/libpatronus.so"
install -m 644 "$from/libpatronus.a" "$prefix/lib/libpatronus.a"
cat > "$prefix/lib/pkgconfig/patronus.pc" <<PC
prefix=$prefix
libdir=\${prefix}/lib
includedir=\${prefix}/include

Name: patronus
Description: Protected remote memory with leases (Patronus-rs)
Version: $version
Libs: -L\${libdir} -lpatronus
Libs.private: $static_libs
Cflags: -I\${includedir}
PC
cat > "$prefix/lib/cmake/Patronus/PatronusConfig.cmake" <<CM
# Patronus-rs CMake package: find_package(Patronus) -> target Patronus::patronus
get_filename_component(_patronus_prefix "\${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)
if(NOT TARGET Patronus::patronus)
  add_library(Patronus::patronus SHARED IMPORTED)
  set_target_properties(Patronus::patronus PROPERTIES
    IMPORTED_LOCATION "\${_patronus_prefix}/lib/libpatronus.so.$major"
    IMPORTED_SONAME "libpatronus.so.$major"
    INTERFACE_INCLUDE_DIRECTORIES "\${_patronus_prefix}/include")
endif()
set(Patronus_VERSION "$version")
set(Patronus_FOUND TRUE)
CM
cat > "$prefix/lib/cmake/Patronus/PatronusConfigVersion.cmake" <<CV
set(PACKAGE_VERSION "$version")
if(PACKAGE_FIND_VERSION VERSION_GREATER PACKAGE_VERSION)
  set(PACKAGE_VERSION_COMPATIBLE FALSE)
else()
  set(PACKAGE_VERSION_COMPATIBLE TRUE)
endif()
CV
echo "installed patronus $version into $prefix"
