#!/usr/bin/env bash
# Builds libpatronus (release) and lays out an installed tree:
#   PREFIX/include/patronus.h, PREFIX/include/patronus.hpp
#   PREFIX/lib/libpatronus.so.X.Y.Z (+ .so.X and .so links), PREFIX/lib/libpatronus.a
#   PREFIX/lib/pkgconfig/patronus.pc (Libs with an rpath outside /usr/lib)
#   PREFIX/lib/cmake/Patronus/PatronusConfig.cmake (imported target Patronus::patronus)
# Usage: scripts/install.sh --prefix DIR [--no-build] [--from ${CARGO_TARGET_DIR:-target}/release]
# (--from: the cargo profile dir whose libpatronus.rlib is installed; it needs
# the rustc that built it, i.e. run from this checkout.)
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=""
build=1
from="${CARGO_TARGET_DIR:-target}/release"
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
# The installed libraries are linked by rustc from the rlib the build made
# (no recompilation, well under a second): the shared one exactly as cargo
# links the cdylib, plus the soname libpatronus.so.MAJOR that binds
# consumers to the ABI major version (the cargo artefact has none, so that
# `-Ltarget/release -lpatronus` runs with LD_LIBRARY_PATH=target/release);
# the static one bundling every dependency, with rustc printing what a
# static link needs besides it (native-static-libs).
rlib="$from/libpatronus.rlib"
[ -f "$rlib" ] || { echo "$rlib missing: run cargo build --release first (or drop --no-build)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo 'extern crate patronus;' > "$work/link.rs"
link() { # crate-type output [rustc args...]
  local kind=$1 out=$2; shift 2
  "${RUSTC:-rustc}" --edition 2021 --crate-type "$kind" --crate-name patronus_install \
    -L "dependency=$from/deps" --extern "patronus=$rlib" "$work/link.rs" -o "$out" "$@"
}
mkdir -p "$prefix/include" "$prefix/lib/pkgconfig" "$prefix/lib/cmake/Patronus"
link cdylib "$work/libpatronus.so" -C "link-arg=-Wl,-soname,libpatronus.so.$major"
link staticlib "$work/libpatronus.a" --print native-static-libs 2> "$work/static.txt" \
  || { cat "$work/static.txt" >&2; exit 1; }
static_libs=$(sed -n 's/.*native-static-libs: //p' "$work/static.txt" | tail -1)
[ -n "$static_libs" ] || { echo "rustc printed no native-static-libs:" >&2; cat "$work/static.txt" >&2; exit 1; }
# libgcc_s exists only as a shared library, so `-static` cannot take it; the
# C compiler driver brings the unwinder itself (libgcc_s as needed in a
# dynamic link, libgcc_eh in a static one).
static_libs=$(echo " $static_libs " | sed 's/ -lgcc_s / /g; s/^ *//; s/ *$//')
# A consumer finds the library at run time without LD_LIBRARY_PATH: the .pc
# carries an rpath unless the prefix is a system one.
libdir=$(cd "$prefix/lib" && pwd)
case "$libdir" in
  /usr/lib|/lib|/usr/lib64|/lib64) rpath= ;;
  *) rpath=' -Wl,-rpath,${libdir}' ;;
esac
install -m 644 include/patronus.h "$prefix/include/patronus.h"
if [ -f bindings/cpp/patronus.hpp ]; then
  install -m 644 bindings/cpp/patronus.hpp "$prefix/include/patronus.hpp"
fi
install -m 755 "$work/libpatronus.so" "$prefix/lib/libpatronus.so.$version"
ln -sf "libpatronus.so.$version" "$prefix/lib/libpatronus.so.$major"
ln -sf "libpatronus.so.$major" "$prefix/lib/libpatronus.so"
install -m 644 "$work/libpatronus.a" "$prefix/lib/libpatronus.a"
cat > "$prefix/lib/pkgconfig/patronus.pc" <<PC
prefix=$(cd "$prefix" && pwd)
libdir=\${prefix}/lib
includedir=\${prefix}/include

Name: patronus
Description: Protected remote memory with leases (Patronus-rs)
Version: $version
Libs: -L\${libdir}$rpath -lpatronus
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
