# shellcheck shell=bash
# Helpers for build.sh. Sourced, not run.

log() { printf 'xen-host: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Scratch space for one run, on the cache's file system so that finished
# artifacts can be renamed into place. Removed on exit, after unmounting
# anything a failed chroot step left mounted.
mkdir -p "${RXEN_CACHE:?}"
WORK=$(mktemp -d "$RXEN_CACHE/tmp.XXXXXX")
cleanup() {
    local m
    for m in $(awk -v w="$WORK" 'index($2, w) == 1 {print $2}' /proc/mounts | sort -r); do
        umount -l "$m" || true
    done
    rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT

# apt with a package cache of our own: the image turns apt's off
# (Dir::Cache::pkgcache ""), which makes each query parse every list (~1 s).
APT_OPTS=(-o "Dir::Cache::pkgcache=$RXEN_CACHE/apt-pkgcache.bin" -o "Dir::Cache::srcpkgcache=")
apt_cache() { apt-cache "${APT_OPTS[@]}" "$@"; }

# The version apt would install, or die. Records PKG=VERSION as in use, so
# that prune_stale keeps its .deb.
candidate() {
    local v
    v=$(apt_cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2; exit}')
    [ -n "$v" ] && [ "$v" != "(none)" ] ||
        die "package $1 has no installable version; check the Debian sources and run apt-get update"
    printf '%s_%s_\n' "$1" "${v//:/%3a}" >>"$WORK/debs-wanted"
    printf '%s\n' "$v"
}

# The linux-image-* package a kernel meta-package (linux-image-amd64, ...)
# depends on: Debian's newest kernel of that flavour.
meta_target() {
    local t
    t=$(apt_cache show "$1=$(candidate "$1")" | awk '/^Depends:/ {sub(/^Depends: /, ""); print; exit}' |
        tr ',' '\n' | grep -o 'linux-image-[^ ]*' | head -n1)
    [ -n "$t" ] || die "cannot tell which kernel $1 depends on"
    printf '%s\n' "$t"
}

# Debian's package index targets: "REPO_URI RELEASE COMPONENT FILENAME".
debian_targets() {
    apt-get "${APT_OPTS[@]}" indextargets --format '$(REPO_URI) $(RELEASE) $(COMPONENT) $(FILENAME)' \
        'Identifier: Packages' 'Origin: Debian'
}

debian_mirror() {
    if [ -n "${RXEN_DEBIAN_MIRROR:-}" ]; then
        printf '%s\n' "$RXEN_DEBIAN_MIRROR"
        return
    fi
    debian_targets | awk -v s="$SUITE" '$2 == s {print $1; exit}' | grep . ||
        die "no Debian $SUITE source is configured; set RXEN_DEBIAN_MIRROR"
}

# apt's lists are needed to resolve versions; refresh them when missing,
# older than a day, or on request.
apt_refresh_if_stale() {
    local newest
    newest=$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mmin -1440 2>/dev/null | head -n1)
    if [ "${RXEN_APT_UPDATE:-0}" = 1 ] || [ -z "$(debian_targets)" ] || [ -z "$newest" ]; then
        log "apt-get update"
        apt-get update -qq
    fi
}

apt_install() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >"$WORK/apt.log" 2>&1 ||
        { tail -20 "$WORK/apt.log" >&2; die "apt-get install $* failed"; }
}

# Host tools. QEMU is Debian 12's 7.2 build. Images that carry qemu-utils
# 10 from bookworm-backports cannot install it as is (qemu-utils 10 Breaks
# qemu-system-common << 8), so qemu-utils is moved to the matching 7.2
# build; its qemu-img keeps working for everything else.
install_host_packages() {
    local need=() p qv uv
    for p in debootstrap cpio e2fsprogs kmod xz-utils python3 util-linux gzip curl gcc make; do
        dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
    done
    if ! dpkg -s qemu-system-x86 >/dev/null 2>&1; then
        need+=(qemu-system-x86)
        qv=$(candidate qemu-system-x86)
        uv=$(dpkg-query -W -f '${Version}' qemu-utils 2>/dev/null || true)
        if [ -n "$uv" ] && [ "$uv" != "$qv" ]; then
            log "qemu-utils $uv is installed; replacing it with $qv to match qemu-system-x86"
            need+=("qemu-utils=$qv" --allow-downgrades)
        fi
    fi
    if [ ${#need[@]} -gt 0 ]; then
        log "installing host packages: ${need[*]}"
        apt_install "${need[@]}"
    fi
}

# Downloads PKG=VER into $DEBS (once) and prints the .deb's path.
fetch_deb() {
    local pkg=$1 ver=$2 f
    f=$DEBS/${pkg}_${ver//:/%3a}_amd64.deb
    [ -f "$f" ] || f=$DEBS/${pkg}_${ver//:/%3a}_all.deb
    if [ ! -f "$f" ]; then
        log "downloading $pkg $ver"
        if ! (cd "$DEBS" && apt-get "${APT_OPTS[@]}" download -qq "$pkg=$ver" >/dev/null 2>&1); then
            apt-get update -qq
            (cd "$DEBS" && apt-get "${APT_OPTS[@]}" download -qq "$pkg=$ver" >/dev/null) ||
                die "cannot download $pkg=$ver"
        fi
        f=$(ls "$DEBS/${pkg}_${ver//:/%3a}"_*.deb)
    fi
    printf '%s\n' "$f"
}

# Unpacks PKG=VER (once per run) and prints the directory.
extract_deb() {
    local d=$WORK/extract/$1_$2 f
    if [ ! -d "$d" ]; then
        f=$(fetch_deb "$1" "$2")
        mkdir -p "$d.tmp"
        dpkg-deb -x "$f" "$d.tmp"
        mv "$d.tmp" "$d"
    fi
    printf '%s\n' "$d"
}

hash_files() { cat "$@" | sha256sum | cut -c1-16; }

# A key for an artifact: its recipe (the shell function's text) and inputs.
recipe_key() {
    { declare -f "$1"; shift; printf '%s\n' "$@"; } | sha256sum | cut -c1-16
}

# cached NAME KEY FN: runs "FN DIR" to build $HOST_DIR/NAME-KEY unless it is
# there already; sets REPLY to the directory.
cached() {
    local name=$1 key=$2 fn=$3 dir=$HOST_DIR/$1-$2 tmp t0
    REPLY=$dir
    if [ -f "$dir/.complete" ]; then
        log "$name: cached ($dir)"
        return
    fi
    log "$name: building"
    t0=$(date +%s)
    tmp=$(mktemp -d "$WORK/$name.XXXXXX")
    "$fn" "$tmp"
    chmod 0755 "$tmp"
    touch "$tmp/.complete"
    rm -rf "$dir"
    mv "$tmp" "$dir"
    log "$name: built in $(( $(date +%s) - t0 )) s"
}

# Removes artifacts and packages that the current manifest does not use.
prune_stale() {
    local d keep
    for d in "$HOST_DIR"/*-*/; do
        d=${d%/}
        keep=0
        for k in "$@"; do [ "$d" = "$k" ] && keep=1; done
        [ $keep = 1 ] || { log "removing stale $d"; rm -rf "$d"; }
    done
    # Keep the .debs of every resolved version, built from or not.
    for d in "$DEBS"/*.deb; do
        [ -e "$d" ] || continue
        keep=0
        while read -r k; do
            case ${d##*/} in "$k"*) keep=1; break ;; esac
        done <"$WORK/debs-wanted"
        [ $keep = 1 ] || rm -f "$d"
    done
}

# module_closure TREE KVER MODULE...: the paths (relative to
# TREE/lib/modules/KVER) of the modules and of everything they depend on,
# dependencies first. Built-in modules are skipped.
module_closure() {
    local tree=$1 kver=$2 m
    shift 2
    depmod -b "$tree" "$kver"
    for m in "$@"; do
        modprobe -d "$tree" -S "$kver" --show-depends "$m" ||
            die "module $m not found for $kver"
    done | awk '$1 == "insmod" {print $2}' | sed "s|^$tree/lib/modules/$kver/||" | awk '!seen[$0]++'
}

# Installs packages into a debootstrap root from the same archive state
# the host resolved versions from: the host's Debian sources and lists are
# copied in, so "pkg=version" pins match.
chroot_apt_install() {
    local root=$1 uri rel comp file
    shift
    rm -f "$root/etc/apt/sources.list"
    mkdir -p "$root/etc/apt/sources.list.d" "$root/var/lib/apt/lists"
    : >"$root/etc/apt/sources.list.d/rxen.list"
    while read -r uri rel comp file; do
        printf 'deb %s %s %s\n' "$uri" "$rel" "$comp" >>"$root/etc/apt/sources.list.d/rxen.list"
        cp "$file" "$root/var/lib/apt/lists/"
        cp "$(printf '%s\n' "$file" | sed -E 's/_dists_([^_]+)_.*/_dists_\1_InRelease/')" "$root/var/lib/apt/lists/"
    done < <(debian_targets)
    sort -u -o "$root/etc/apt/sources.list.d/rxen.list" "$root/etc/apt/sources.list.d/rxen.list"
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
    chmod 0755 "$root/usr/sbin/policy-rc.d"
    mount -t proc proc "$root/proc"
    DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get install -y -qq --no-install-recommends "$@" \
        >"$WORK/chroot-apt.log" 2>&1 || { umount "$root/proc"; tail -20 "$WORK/chroot-apt.log" >&2; die "apt-get install in the dom0 root failed"; }
    umount "$root/proc"
    rm -f "$root/usr/sbin/policy-rc.d"
    chroot "$root" apt-get clean
}

# Drops what a test dom0 never reads, to keep the initramfs small.
slim_root() {
    local root=$1
    rm -rf "$root"/usr/share/{doc,man,info,locale,lintian,bash-completion,zsh,common-licenses,i18n} \
        "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/var/cache/debconf/*-old \
        "$root"/var/log/* "$root"/usr/share/zoneinfo "$root"/var/cache/man \
        "$root"/usr/lib/udev/hwdb.bin "$root"/usr/lib/udev/hwdb.d "$root"/usr/lib/x86_64-linux-gnu/gconv
    find "$root/usr/lib" -name '__pycache__' -type d -prune -exec rm -rf {} +
}

# Packs a root as a newc initramfs, with the device nodes the kernel needs
# before init runs, compressed by FILTER (default gzip -1; "cat" for none).
pack_initramfs() {
    local root=$1 out=$2 filter=${3:-gzip -1}
    mkdir -p "$root/dev"
    [ -e "$root/dev/console" ] || mknod -m 0600 "$root/dev/console" c 5 1
    [ -e "$root/dev/null" ] || mknod -m 0666 "$root/dev/null" c 1 3
    (cd "$root" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
        cpio --null -o -H newc --quiet | $filter >"$out")
}
