#!/usr/bin/env bash
# Builds (or reuses from the cache) the Xen test host: Xen 4.17, a Debian
# dom0 (kernel 6.1), guest kernels 6.1 and 6.12, a guest initramfs and a
# small ext4 disk image. Everything comes from Debian's archive, except the
# project's own 6.12 guest kernel, which kernel-patches/build.sh builds (or
# reuses) from Debian's linux-source-6.12 and the project's patch series.
#
# Output: $RXEN_CACHE/host/current, an env-style manifest that the Rust
# harness (tests/xen-harness) reads. Each artifact lives in a directory
# named by a hash of the package versions and of the recipe that built it,
# so a changed package or recipe rebuilds only what it affects and a warm
# cache is a no-op.
#
# Environment:
#   RXEN_CACHE          cache directory (default ${XDG_CACHE_HOME:-~/.cache}/rxen)
#   RXEN_DEBIAN_MIRROR  mirror for debootstrap (default: the configured one)
#   RXEN_APT_UPDATE=1   run apt-get update before resolving versions
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
RXEN_CACHE=${RXEN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rxen}
HOST_DIR=$RXEN_CACHE/host
DEBS=$RXEN_CACHE/debs
SUITE=bookworm
# shellcheck source=tests/xen-host/lib.sh
. "$HERE/lib.sh"

[ "$(id -u)" = 0 ] || die "must run as root (apt-get, debootstrap and chroot need it)"
mkdir -p "$HOST_DIR" "$DEBS"
exec 9>"$RXEN_CACHE/.build.lock"
flock 9

start=$(date +%s)
apt_refresh_if_stale
install_host_packages

# --- Resolve package versions ------------------------------------------------
XEN_VER=$(candidate xen-hypervisor-4.17-amd64)
XEN_UTILS_VER=$(candidate xen-utils-4.17)
[ "$XEN_VER" = "$XEN_UTILS_VER" ] ||
    die "xen-hypervisor-4.17-amd64 ($XEN_VER) and xen-utils-4.17 ($XEN_UTILS_VER) differ; run apt-get update"
DOM0_PKG=$(meta_target linux-image-amd64)                 # linux-image-6.1.0-N-amd64
GUEST61_PKG=$(meta_target linux-image-cloud-amd64)        # linux-image-6.1.0-N-cloud-amd64
GUEST612_PKG=$(meta_target linux-image-6.12-cloud-amd64)  # linux-image-6.12.X+deb12-cloud-amd64
DOM0_VER=$(candidate "$DOM0_PKG")
GUEST61_VER=$(candidate "$GUEST61_PKG")
GUEST612_VER=$(candidate "$GUEST612_PKG")
BUSYBOX_VER=$(candidate busybox-static)
LIBC_VER=$(candidate libc6)
LIBGCC_VER=$(candidate libgcc-s1)
# fio in guests (fio --verify, and the block benchmarks): built from
# Debian's source package as a static binary, since Debian's binary
# package links a dozen storage libraries (ceph, glusterfs, rdma, ...).
FIO_VER=$(candidate fio)
# Debian packages unpacked into guests with the libraries they link:
# e2fsprogs (make, check and mount ext4 on a PV disk) and iperf3 (the
# network benchmark's guest end).
GUEST_E2FS_DEBS="e2fsprogs libext2fs2 libcom-err2 libblkid1 libuuid1
iperf3 libiperf0 libsctp1 libssl3"
GUEST_E2FS_VERS=""
for p in $GUEST_E2FS_DEBS; do GUEST_E2FS_VERS="$GUEST_E2FS_VERS $p=$(candidate "$p")"; done
DOM0_KVER=${DOM0_PKG#linux-image-}
GUEST61_KVER=${GUEST61_PKG#linux-image-}
GUEST612_KVER=${GUEST612_PKG#linux-image-}
# The project's guest kernel: its cache directory (vmlinuz, config, release,
# source-version, modules/), named by its key.
RXEN_KERNEL_DIR=$(RXEN_CACHE=$RXEN_CACHE "$ROOT/kernel-patches/build.sh" | tail -n1) ||
    die "building the project's guest kernel (kernel-patches/build.sh) failed"
[ -f "$RXEN_KERNEL_DIR/.complete" ] || die "kernel-patches/build.sh named no kernel directory"
RXEN_KERNEL_KEY=${RXEN_KERNEL_DIR##*/}
RXEN_KVER=$(cat "$RXEN_KERNEL_DIR/release")
RXEN_KERNEL_VER=$(cat "$RXEN_KERNEL_DIR/source-version")+${RXEN_KERNEL_KEY:0:8}
log "xen $XEN_VER; dom0 $DOM0_KVER ($DOM0_VER); guests $GUEST61_KVER ($GUEST61_VER), $GUEST612_KVER ($GUEST612_VER), $RXEN_KVER ($RXEN_KERNEL_VER)"

# --- Components ----------------------------------------------------------------

# Xen: the multiboot ELF that QEMU's -kernel loads.
build_xen() {
    local out=$1 x
    x=$(extract_deb xen-hypervisor-4.17-amd64 "$XEN_VER")
    zcat "$x/boot/xen-4.17-amd64.gz" >"$out/xen.elf"
    cp "$x/boot/xen-4.17-amd64.config" "$out/xen.config"
}

# Modules dom0 loads, plus what a backend or a test may want; their
# dependencies are added by module_closure.
DOM0_MODULES="xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xenfs xen-blkback
xen-netback xen-blkfront xen-netfront loop virtio_console virtio_pci ext4 bridge
tun veth dummy"
# qemu-system-xen: QEMU's qdisk backend (xl's backendtype=qdisk), the
# peer the block benchmark measures rblkback against.
DOM0_PACKAGES="xen-utils-4.17=$XEN_UTILS_VER busybox iproute2 kmod procps psmisc
util-linux mount e2fsprogs coreutils qemu-system-xen=$(candidate qemu-system-xen)
iperf3=$(candidate iperf3) ethtool"

# dom0: Debian's 6.1 kernel and a debootstrap root with Xen's tools, packed
# as one initramfs. Only the modules in DOM0_MODULES (and their
# dependencies) are kept, with modules.dep made by depmod in the root.
build_dom0() {
    local out=$1 root k mods m
    root=$WORK/dom0-root
    mkdir -p "$RXEN_CACHE/debootstrap"
    log "debootstrap $SUITE (minbase) from $(debian_mirror)"
    debootstrap --variant=minbase --cache-dir="$RXEN_CACHE/debootstrap" \
        --include=busybox,iproute2,kmod,procps,util-linux,mount,e2fsprogs \
        "$SUITE" "$root" "$(debian_mirror)" >"$WORK/debootstrap.log" 2>&1 ||
        { tail -20 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
    rm -f "$WORK/debootstrap.log"
    # shellcheck disable=SC2086 # the package list is a list of words
    chroot_apt_install "$root" $DOM0_PACKAGES

    k=$(extract_deb "$DOM0_PKG" "$DOM0_VER")
    cp "$k/boot/vmlinuz-$DOM0_KVER" "$out/vmlinuz"
    cp "$k/boot/config-$DOM0_KVER" "$out/config"
    # shellcheck disable=SC2086
    mods=$(module_closure "$k" "$DOM0_KVER" $DOM0_MODULES)
    mkdir -p "$root/lib/modules/$DOM0_KVER"
    for m in $mods modules.order modules.builtin modules.builtin.modinfo; do
        install -D -m 0644 "$k/lib/modules/$DOM0_KVER/$m" "$root/lib/modules/$DOM0_KVER/$m"
    done
    chroot "$root" depmod "$DOM0_KVER"

    install -m 0755 "$HERE/dom0/init" "$root/init"
    install -D -m 0755 "$HERE/dom0/rxen-agent" "$root/usr/local/sbin/rxen-agent"
    for m in poweroff reboot halt; do   # minbase has no init system to provide them
        [ -e "$root/usr/sbin/$m" ] || ln -s /bin/busybox "$root/usr/local/sbin/$m"
    done
    printf 'rxen-dom0\n' >"$root/etc/hostname"
    slim_root "$root"
    pack_initramfs "$root" "$out/initrd.img"
}

# fio: Debian's orig tarball, checked against the checksum in its .dsc,
# configured without optional libraries and linked statically.
build_fio() {
    local out=$1 up=${FIO_VER%-*} pool src want
    pool=$(debian_mirror); pool=${pool%/}/pool/main/f/fio
    src=$WORK/fio-src
    mkdir -p "$src"
    curl -fsSL "$pool/fio_${FIO_VER}.dsc" -o "$WORK/fio.dsc" || die "cannot download fio_${FIO_VER}.dsc from $pool"
    curl -fsSL "$pool/fio_${up}.orig.tar.gz" -o "$WORK/fio.tar.gz" || die "cannot download fio_${up}.orig.tar.gz"
    want=$(awk '/^Checksums-Sha256:/ {f = 1; next} f && /orig\.tar\.gz$/ {print $1; exit}' "$WORK/fio.dsc")
    [ -n "$want" ] && echo "$want  $WORK/fio.tar.gz" | sha256sum -c --quiet - ||
        die "fio_${up}.orig.tar.gz does not match the checksum in its .dsc"
    tar -xzf "$WORK/fio.tar.gz" -C "$src" --strip-components=1
    (cd "$src" && ./configure --build-static --disable-native >"$WORK/fio-configure.log" 2>&1 &&
        make -j"$(nproc)" fio >"$WORK/fio-make.log" 2>&1) ||
        { tail -20 "$WORK"/fio-*.log >&2; die "building fio failed"; }
    install -m 0755 "$src/fio" "$out/fio"
}

# Guest modules: the PV front ends and the userspace Xen devices a test
# program may open. ext4 and hvc0 are built into Debian's cloud kernels.
GUEST_MODULES="xen-blkfront xen-netfront xen-evtchn xen-gntdev xen-gntalloc
xen-privcmd xenfs nbd tun"

# The project's kernel: the same, those of them it builds as modules (its
# tinyconfig-based config builds in most of the rest), and the Rust block
# frontend once the series adds it.
RXEN_GUEST_MODULES="xen-blkfront xen_blkfront_rs xen-netfront xen-evtchn xen-gntdev
xen-gntalloc"

# Guest kernels and one busybox initramfs that carries the modules of all
# three kernels and the C runtime (so that dynamically linked project binaries,
# added as an overlay at run time, can run in a guest).
build_guest() {
    local out=$1 root bb libc libgcc kpkg kver kver_var k mods m order have want
    root=$WORK/guest-root
    mkdir -p "$root"
    mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,tmp,mnt,run,root,lib64,usr/bin,usr/sbin}
    bb=$(extract_deb busybox-static "$BUSYBOX_VER")
    install -m 0755 "$bb/bin/busybox" "$root/bin/busybox"
    "$root/bin/busybox" --list-full | while read -r m; do
        [ -e "$root/$m" ] || ln -s /bin/busybox "$root/$m"
    done
    libc=$(extract_deb libc6 "$LIBC_VER")
    libgcc=$(extract_deb libgcc-s1 "$LIBGCC_VER")
    mkdir -p "$root/lib/x86_64-linux-gnu"
    for m in ld-linux-x86-64.so.2 libc.so.6 libm.so.6 libpthread.so.0 libdl.so.2 librt.so.1; do
        cp -L "$libc/lib/x86_64-linux-gnu/$m" "$root/lib/x86_64-linux-gnu/"
    done
    cp -L "$libgcc/lib/x86_64-linux-gnu/libgcc_s.so.1" "$root/lib/x86_64-linux-gnu/"
    ln -s /lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$root/lib64/ld-linux-x86-64.so.2"
    # e2fsprogs: mke2fs and e2fsck with the libraries they link.
    for m in $GUEST_E2FS_VERS; do
        k=$(extract_deb "${m%%=*}" "${m#*=}")
        for f in "$k"/sbin/mke2fs "$k"/sbin/e2fsck "$k"/etc/mke2fs.conf "$k"/usr/bin/iperf3 \
                 "$k"/lib/x86_64-linux-gnu/lib*.so.* "$k"/usr/lib/x86_64-linux-gnu/lib*.so.*; do
            [ -e "$f" ] || continue
            case $f in
            */sbin/*) install -m 0755 "$f" "$root/sbin/" ;;
            */usr/bin/*) install -m 0755 "$f" "$root/usr/bin/" ;;
            */etc/*) install -m 0644 "$f" "$root/etc/" ;;
            *) cp -L "$f" "$root/lib/x86_64-linux-gnu/" ;;
            esac
        done
    done
    for m in mkfs.ext4 mkfs.ext2; do ln -sf mke2fs "$root/sbin/$m"; done
    install -m 0755 "$FIO_OUT/fio" "$root/usr/bin/fio"
    ln -sf e2fsck "$root/sbin/fsck.ext4"

    for kver_var in GUEST61 GUEST612; do
        kpkg=${kver_var}_PKG; kpkg=${!kpkg}
        m=${kver_var}_VER; k=$(extract_deb "$kpkg" "${!m}")
        kver=${kpkg#linux-image-}
        cp "$k/boot/vmlinuz-$kver" "$out/vmlinuz-$kver"
        cp "$k/boot/config-$kver" "$out/config-$kver"
        # shellcheck disable=SC2086
        mods=$(module_closure "$k" "$kver" $GUEST_MODULES)
        order=$root/lib/modules/$kver/rxen-load-order
        mkdir -p "$root/lib/modules/$kver"
        cp "$k/lib/modules/$kver"/modules.{order,builtin,builtin.modinfo} "$root/lib/modules/$kver/"
        : >"$order"
        for m in $mods; do
            # busybox's insmod does not read compressed modules
            case $m in
            *.ko.xz) install -D -m 0644 /dev/null "$root/lib/modules/$kver/${m%.xz}"
                     xz -dc "$k/lib/modules/$kver/$m" >"$root/lib/modules/$kver/${m%.xz}"
                     m=${m%.xz} ;;
            *) install -D -m 0644 "$k/lib/modules/$kver/$m" "$root/lib/modules/$kver/$m" ;;
            esac
            printf '%s\n' "$m" >>"$order"
        done
        depmod -b "$root" "$kver"
    done

    # The project's kernel: the modules of RXEN_GUEST_MODULES it has (by
    # name, "-" and "_" alike), with their dependencies, in that order.
    kver=$RXEN_KVER
    k=$WORK/rxen-modules
    mkdir -p "$k/lib/modules"
    cp -a "$RXEN_KERNEL_DIR/modules" "$k/lib/modules/$kver"
    have=" $(find "$k/lib/modules/$kver" -name '*.ko' -printf '%f\n' | sed 's/\.ko$//' | tr - _ | tr '\n' ' ')"
    want=()
    for m in $RXEN_GUEST_MODULES; do
        case $have in *" ${m//-/_} "*) want+=("$m") ;; esac
    done
    mods=""
    [ ${#want[@]} -eq 0 ] || mods=$(module_closure "$k" "$kver" "${want[@]}")
    order=$root/lib/modules/$kver/rxen-load-order
    mkdir -p "$root/lib/modules/$kver"
    for m in modules.order modules.builtin modules.builtin.modinfo; do
        [ ! -f "$k/lib/modules/$kver/$m" ] || cp "$k/lib/modules/$kver/$m" "$root/lib/modules/$kver/"
    done
    : >"$order"
    for m in $mods; do
        install -D -m 0644 "$k/lib/modules/$kver/$m" "$root/lib/modules/$kver/$m"
        printf '%s\n' "$m" >>"$order"
    done
    depmod -b "$root" "$kver"
    cp "$RXEN_KERNEL_DIR/vmlinuz" "$out/vmlinuz-$kver"
    cp "$RXEN_KERNEL_DIR/config" "$out/config-$kver"

    install -m 0755 "$HERE/guest/init" "$root/init"
    # Uncompressed: decompressing in a guest under software emulation costs
    # seconds (measured: 8.6 s for gzip in a PVH guest), copying does not.
    pack_initramfs "$root" "$out/initrd.img" cat
}

# A small ext4 image with known content, for block device tests. The file
# is pseudo-random but fixed, so its checksum is stable across builds.
build_disk() {
    local out=$1 dir
    dir=$WORK/disk-root
    mkdir -p "$dir/rxen"
    # 4 MiB: SHA-256 in counter mode over a fixed seed; deterministic.
    python3 - "$dir/rxen/known.bin" <<'EOF'
import hashlib, sys
with open(sys.argv[1], "wb") as f:
    for i in range(4 * 1024 * 1024 // 32):
        f.write(hashlib.sha256(b"rxen-known-data-%d" % i).digest())
EOF
    printf 'rxen test disk\n' >"$dir/rxen/README"
    truncate -s 32M "$out/disk.img"
    mkfs.ext4 -q -F -L rxen-test -E root_owner=0:0 -d "$dir" "$out/disk.img"
    sha256sum "$dir/rxen/known.bin" | cut -d' ' -f1 >"$out/known.sha256"
}

FIO_KEY=$(recipe_key build_fio "$FIO_VER")
XEN_KEY=$(recipe_key build_xen "$XEN_VER")
DOM0_KEY=$(recipe_key build_dom0 "$XEN_UTILS_VER" "$DOM0_PKG=$DOM0_VER" "$SUITE" \
    "$DOM0_MODULES" "$DOM0_PACKAGES" "$(hash_files "$HERE/lib.sh" "$HERE/dom0/init" "$HERE/dom0/rxen-agent")")
GUEST_KEY=$(recipe_key build_guest "$GUEST61_PKG=$GUEST61_VER" "$GUEST612_PKG=$GUEST612_VER" \
    "$BUSYBOX_VER" "$LIBC_VER" "$LIBGCC_VER" "$GUEST_E2FS_VERS" "$FIO_KEY" "$GUEST_MODULES" \
    "rxen-kernel=$RXEN_KERNEL_KEY" "$RXEN_GUEST_MODULES" "$(hash_files "$HERE/lib.sh" "$HERE/guest/init")")
DISK_KEY=$(recipe_key build_disk)

cached fio "$FIO_KEY" build_fio; FIO_OUT=$REPLY
cached xen "$XEN_KEY" build_xen; XEN_OUT=$REPLY
cached dom0 "$DOM0_KEY" build_dom0; DOM0_OUT=$REPLY
cached guest "$GUEST_KEY" build_guest; GUEST_OUT=$REPLY
cached disk "$DISK_KEY" build_disk; DISK_OUT=$REPLY

QEMU=$(command -v qemu-system-x86_64) || die "qemu-system-x86_64 not found after install"
manifest=$(mktemp "$HOST_DIR/.current.XXXXXX")
cat >"$manifest" <<EOF
# rxen Xen test host, written by tests/xen-host/build.sh; read by xen-harness.
QEMU=$QEMU
QEMU_VERSION=$(candidate qemu-system-x86)
XEN_ELF=$XEN_OUT/xen.elf
XEN_VERSION=$XEN_VER
DOM0_KERNEL=$DOM0_OUT/vmlinuz
DOM0_KERNEL_RELEASE=$DOM0_KVER
DOM0_KERNEL_VERSION=$DOM0_VER
DOM0_INITRD=$DOM0_OUT/initrd.img
GUEST_KERNEL_61=$GUEST_OUT/vmlinuz-$GUEST61_KVER
GUEST_KERNEL_61_RELEASE=$GUEST61_KVER
GUEST_KERNEL_61_VERSION=$GUEST61_VER
GUEST_KERNEL_612=$GUEST_OUT/vmlinuz-$GUEST612_KVER
GUEST_KERNEL_612_RELEASE=$GUEST612_KVER
GUEST_KERNEL_612_VERSION=$GUEST612_VER
GUEST_KERNEL_RXEN=$GUEST_OUT/vmlinuz-$RXEN_KVER
GUEST_KERNEL_RXEN_RELEASE=$RXEN_KVER
GUEST_KERNEL_RXEN_VERSION=$RXEN_KERNEL_VER
GUEST_INITRD=$GUEST_OUT/initrd.img
GUEST_DISK=$DISK_OUT/disk.img
GUEST_DISK_FILE=rxen/known.bin
GUEST_DISK_FILE_SHA256=$(cat "$DISK_OUT/known.sha256")
EOF
chmod 0644 "$manifest"
mv -f "$manifest" "$HOST_DIR/current"
prune_stale "$XEN_OUT" "$DOM0_OUT" "$GUEST_OUT" "$DISK_OUT" "$FIO_OUT"
log "ready in $(( $(date +%s) - start )) s: $HOST_DIR/current"
