#!/usr/bin/env bash
# Builds (or reuses from the cache) the project's PV guest kernel: Debian's
# Linux 6.12 source (linux-source-6.12) with the patches in
# kernel-patches/series/ applied in name order, configured from tinyconfig
# plus kernel-patches/config/rxen-guest.config, with Rust enabled.
#
# Output: $RXEN_CACHE/guest-kernel/KEY/ with vmlinuz (the bzImage), config,
# release (`uname -r`, e.g. 6.12.117-rxen), source-version (the
# linux-source-6.12 package version), patches (the series applied),
# build.log and modules/ (the installed lib/modules/RELEASE tree). KEY
# hashes the package versions, bindgen's version, the config fragment, the
# series and this script, so a warm cache is a no-op. The directory's path
# is the last line on stdout; everything else goes to stderr.
#
# Toolchain: Debian's rustc-web and rust-web-src (/usr/bin/rustc), clang,
# lld and LLVM (LLVM=1), and bindgen-cli $BINDGEN_VER installed with cargo
# into $RXEN_CACHE/tools.
#
# Environment:
#   RXEN_CACHE            cache directory (default ${XDG_CACHE_HOME:-~/.cache}/rxen)
#   RXEN_KERNEL_FRAGMENT  config fragment (default kernel-patches/config/rxen-guest.config)
#   RXEN_KERNEL_SERIES    patch directory (default kernel-patches/series)
#   RXEN_APT_UPDATE=1     run apt-get update before installing packages
set -euo pipefail
export LC_ALL=C   # patch order is name order, byte by byte

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
RXEN_CACHE=${RXEN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rxen}
FRAGMENT=${RXEN_KERNEL_FRAGMENT:-$HERE/config/rxen-guest.config}
SERIES=${RXEN_KERNEL_SERIES:-$HERE/series}
KCACHE=$RXEN_CACHE/guest-kernel
KWORK=$KCACHE/work
SOURCE_PKG=linux-source-6.12
SOURCE_TAR=/usr/src/linux-source-6.12.tar.xz
BINDGEN_VER=0.71.1
BINDGEN_DIR=$RXEN_CACHE/tools/bindgen-$BINDGEN_VER
LOCALVERSION_SUFFIX=-rxen
# shellcheck source=tests/xen-host/lib.sh
. "$ROOT/tests/xen-host/lib.sh"
log() { printf 'guest-kernel: %s\n' "$*" >&2; }

mkdir -p "$KCACHE"
# Not the host build's lock: tests/xen-host/build.sh calls this script
# while holding that one.
exec 8>"$KCACHE/.lock"
flock 8

# --- Packages ----------------------------------------------------------------
PACKAGES="$SOURCE_PKG rustc-web rust-web-src cargo-web clang llvm lld libclang-dev
flex bison bc libelf-dev libssl-dev cpio make git kmod xz-utils perl python3"
install_kernel_packages() {
    local need=() p
    for p in $PACKAGES; do
        dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
    done
    [ ${#need[@]} -gt 0 ] || return 0
    [ "$(id -u)" = 0 ] || die "need root to install: ${need[*]}"
    apt_refresh_if_stale
    log "installing packages: ${need[*]}"
    apt_install "${need[@]}"
}
install_kernel_packages
[ -f "$FRAGMENT" ] || die "no config fragment at $FRAGMENT"
[ -f "$SOURCE_TAR" ] || die "$SOURCE_TAR is missing although $SOURCE_PKG is installed"
SOURCE_VER=$(dpkg-query -W -f '${Version}' "$SOURCE_PKG")
RUSTC_VER=$(dpkg-query -W -f '${Version}' rustc-web)

PATCHES=()
if [ -d "$SERIES" ]; then
    for p in "$SERIES"/*.patch; do
        [ -f "$p" ] && PATCHES+=("$p")
    done
fi
series_list() {
    local p
    for p in ${PATCHES[@]+"${PATCHES[@]}"}; do
        printf '%s %s\n' "$(sha256sum <"$p" | cut -c1-64)" "${p##*/}"
    done
}

# Every make call: the pinned toolchain, and LOCALVERSION set (empty) so
# that the release is the version plus CONFIG_LOCALVERSION, never a "+".
kmake() {
    PATH=$BINDGEN_DIR/bin:/usr/bin:$PATH make -C "$KWORK/src" O="$KWORK/out" \
        LLVM=1 RUSTC=/usr/bin/rustc LOCALVERSION= "$@"
}

# step DESCRIPTION COMMAND...: runs COMMAND with its output in the build
# log; on failure prints the log's end and stops.
step() {
    local what=$1
    shift
    printf '\n### %s\n' "$what" >>"$KWORK/build.log"
    "$@" >>"$KWORK/build.log" 2>&1 || {
        tail -n 40 "$KWORK/build.log" >&2
        die "$what failed (full log: $KWORK/build.log)"
    }
}

install_bindgen() {
    [ -x "$BINDGEN_DIR/bin/bindgen" ] && return
    log "installing bindgen-cli $BINDGEN_VER into $BINDGEN_DIR"
    mkdir -p "$RXEN_CACHE/tools"
    rm -rf "$BINDGEN_DIR.tmp"
    env -u CARGO_TARGET_DIR RUSTC=/usr/bin/rustc /usr/bin/cargo install --locked \
        "bindgen-cli@$BINDGEN_VER" --root "$BINDGEN_DIR.tmp" >"$WORK/bindgen.log" 2>&1 ||
        { tail -n 40 "$WORK/bindgen.log" >&2; die "cargo install bindgen-cli@$BINDGEN_VER failed"; }
    rm -rf "$BINDGEN_DIR"
    mv "$BINDGEN_DIR.tmp" "$BINDGEN_DIR"
}

apply_series() {
    local p applied=0 err
    (cd "$KWORK/src" && git init -q)   # git apply's root; no commits, so no "+" in the release
    for p in ${PATCHES[@]+"${PATCHES[@]}"}; do
        if ! err=$(cd "$KWORK/src" && git apply --whitespace=nowarn "$p" 2>&1); then
            printf '%s\n' "$err" >&2
            die "patch $p does not apply to $SOURCE_PKG $SOURCE_VER" \
                "(after $applied earlier patch(es) of the series); nothing was built"
        fi
        printf '%s\n' "${p##*/}" >>"$KWORK/patches"
        applied=$((applied + 1))
    done
    if [ $applied = 0 ]; then
        log "no patches in $SERIES: building the pristine source"
    else
        log "applied $applied patch(es) from $SERIES"
    fi
}

# Every CONFIG_ line of the fragment, verbatim in the final .config.
check_config() {
    local line missing=() have
    while IFS= read -r line; do
        case $line in CONFIG_*) ;; *) continue ;; esac
        grep -qxF -- "$line" "$KWORK/out/.config" && continue
        have=$(grep -E "^(# )?${line%%=*}[= ]" "$KWORK/out/.config" || true)
        missing+=("$line (got: ${have:-nothing})")
    done <"$FRAGMENT"
    if [ ${#missing[@]} -gt 0 ]; then
        printf '  %s\n' "${missing[@]}" >&2
        die "${#missing[@]} option(s) of $FRAGMENT are not in the final .config" \
            "(unmet dependencies, or not in this source): ${missing[*]%% *}"
    fi
}

build_kernel() {
    local out=$1 release
    mkdir -p "$KWORK/out"
    : >"$KWORK/patches"
    install_bindgen
    log "unpacking $SOURCE_TAR ($SOURCE_VER)"
    tar -xJf "$SOURCE_TAR" -C "$KWORK"
    mv "$KWORK/linux-source-6.12" "$KWORK/src"
    apply_series
    step "make rustavailable" kmake rustavailable
    grep -q 'Rust is available!' "$KWORK/build.log" ||
        { tail -n 40 "$KWORK/build.log" >&2; die "make rustavailable did not say Rust is available"; }
    printf 'CONFIG_LOCALVERSION="%s"\n# CONFIG_LOCALVERSION_AUTO is not set\n' \
        "$LOCALVERSION_SUFFIX" >"$KWORK/localversion.config"
    step "make tinyconfig" kmake tinyconfig
    step "merge_config.sh" "$KWORK/src/scripts/kconfig/merge_config.sh" -m -O "$KWORK/out" \
        "$KWORK/out/.config" "$FRAGMENT" "$KWORK/localversion.config"
    step "make olddefconfig" kmake olddefconfig
    check_config
    log "building bzImage and modules with $(nproc) jobs (log: $KWORK/build.log)"
    step "make bzImage modules" kmake -j"$(nproc)" bzImage modules
    release=$(kmake -s kernelrelease 2>>"$KWORK/build.log") || die "make kernelrelease failed"
    step "make modules_install" kmake INSTALL_MOD_PATH="$KWORK/modroot" INSTALL_MOD_STRIP=1 modules_install
    [ -d "$KWORK/modroot/lib/modules/$release" ] || die "modules_install made no lib/modules/$release"
    rm -f "$KWORK/modroot/lib/modules/$release"/{build,source}   # links into the work tree
    cp "$KWORK/out/arch/x86/boot/bzImage" "$out/vmlinuz"
    cp "$KWORK/out/.config" "$out/config"
    printf '%s\n' "$release" >"$out/release"
    printf '%s\n' "$SOURCE_VER" >"$out/source-version"
    cp "$KWORK/patches" "$out/patches"
    mv "$KWORK/modroot/lib/modules/$release" "$out/modules"
    cp "$KWORK/build.log" "$out/build.log"
}

KEY=$(recipe_key build_kernel "$SOURCE_PKG=$SOURCE_VER" "rustc-web=$RUSTC_VER" \
    "bindgen-cli=$BINDGEN_VER" "$LOCALVERSION_SUFFIX" "$(hash_files "${BASH_SOURCE[0]}" "$FRAGMENT")" "$(series_list)")
DIR=$KCACHE/$KEY

if [ -f "$DIR/.complete" ]; then
    log "cached ($DIR, $(cat "$DIR/release"))"
else
    log "building $SOURCE_PKG $SOURCE_VER with ${#PATCHES[@]} patch(es), rustc-web $RUSTC_VER"
    t0=$(date +%s)
    rm -rf --one-file-system "$KWORK"   # a failed build's, kept until now
    mkdir -p "$KWORK/entry"
    : >"$KWORK/build.log"
    build_kernel "$KWORK/entry"
    touch "$KWORK/entry/.complete"
    rm -rf "$DIR"
    mv "$KWORK/entry" "$DIR"
    rm -rf --one-file-system "$KWORK"   # kept after a failure, for its log and tree
    log "built $(cat "$DIR/release") in $(( $(date +%s) - t0 )) s"
fi

# Only the current kernel is kept (tests/xen-host/build.sh copies what it
# uses into its own artifacts), and no failed build's work tree.
for d in "$KCACHE"/*/; do
    d=${d%/}
    [ "$d" = "$DIR" ] || { log "removing stale $d"; rm -rf --one-file-system "$d"; }
done
printf '%s\n' "$DIR"
