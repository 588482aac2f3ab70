#!/bin/bash
# Build the tiny test guest: Debian cloud kernel + busybox initramfs.
#
# Output (outside git, cached by a hash of every build input):
#   ${VHOST_IPVLAN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vhost-ipvlan}/images/tiny-<key>/
#       vmlinuz  initrd.img  kernel-version  modules.load  manifest  rawpkt
#   .../images/tiny-current -> tiny-<key>      (symlink, last successful build)
#   .../images/tiny.env                        (TINY_DIR=... TINY_KERNEL=... TINY_INITRD=...)
# The directory is printed as the last line on stdout; progress goes to stderr.
#
# Needs (Debian 12, root or not): apt-get/apt-cache, dpkg-deb, cpio, busybox-static,
# iproute2, coreutils, gcc with a static libc (rawpkt). The kernel package is unpacked
# with dpkg -x, never installed.
set -euo pipefail
export LC_ALL=C

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tiny_src=$here/tiny
cache=${VHOST_IPVLAN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vhost-ipvlan}
images=$cache/images
busybox=${TINY_BUSYBOX:-/bin/busybox}
meta_pkg=${TINY_KERNEL_META:-linux-image-cloud-amd64}

log() { echo "build-tiny: $*" >&2; }
die() { log "error: $*"; exit 1; }

for tool in apt-cache apt-get dpkg-deb cpio sha256sum ldd gcc; do
    command -v "$tool" >/dev/null || die "missing tool: $tool"
done
[ -x "$busybox" ] || die "$busybox not found (apt-get install busybox-static)"

apt_updated=0
apt_update() {
    if [ "$apt_updated" = 0 ]; then
        log "running apt-get update"
        apt-get update -qq >&2 || die "apt-get update failed"
        apt_updated=1
    fi
}

# Resolve the metapackage to the real kernel package (name and version).
resolve_kernel() {
    apt-cache show --no-all-versions "$meta_pkg" 2>/dev/null |
        sed -n 's/^Depends: .*\(linux-image-[0-9][^ ,]*\) (= \([^)]*\)).*/\1 \2/p' | head -n1
}
kinfo=$(resolve_kernel || true)
if [ -z "$kinfo" ]; then
    apt_update
    kinfo=$(resolve_kernel || true)
fi
[ -n "$kinfo" ] || die "cannot resolve $meta_pkg to a linux-image-<ver> package"
kpkg=${kinfo% *}
kpkgver=${kinfo#* }
kver=${kpkg#linux-image-}

# Host binaries for the guest (see tiny/host-binaries) and the libraries they need
# (absolute paths, including the dynamic loader).
hostbin_dst=() hostbin_src=()
while read -r dst src; do
    [ -n "$dst" ] || continue
    [ -x "$src" ] || die "$src not found on this host (see $tiny_src/host-binaries)"
    hostbin_dst+=("$dst")
    hostbin_src+=("$src")
done < <(sed 's/#.*//' "$tiny_src/host-binaries")
mapfile -t hostlibs < <(
    for src in "${hostbin_src[@]}"; do ldd "$src"; done |
        awk '/=> \//{print $3} /^[[:space:]]*\/[^ ]+ \(/{print $1}' | sort -u
)

# The cache key: everything that goes into the image.
key=$(
    {
        echo "kernel $kpkg $kpkgver"
        echo "script $(sha256sum <"$here/build-tiny.sh")"
        (cd "$tiny_src" && find . -type f -print0 | sort -z | xargs -0 sha256sum)
        sha256sum "$busybox" "${hostbin_src[@]}" "${hostlibs[@]}"
    } | sha256sum | cut -c1-16
)
out=$images/tiny-$key

publish() {
    ln -sfn "tiny-$key" "$images/tiny-current.tmp.$$"
    mv -T "$images/tiny-current.tmp.$$" "$images/tiny-current"
    printf 'TINY_DIR=%s\nTINY_KERNEL=%s/vmlinuz\nTINY_INITRD=%s/initrd.img\nTINY_KVER=%s\n' \
        "$out" "$out" "$out" "$kver" >"$images/tiny.env.tmp.$$"
    mv "$images/tiny.env.tmp.$$" "$images/tiny.env"
    echo "$out"
}

mkdir -p "$images"
if [ -f "$out/initrd.img" ] && [ -f "$out/vmlinuz" ]; then
    log "up to date ($kpkg $kpkgver)"
    publish
    exit 0
fi

# Serialise concurrent builds (parallel test runs).
exec 9>"$images/.lock"
if command -v flock >/dev/null; then flock 9; fi
if [ -f "$out/initrd.img" ] && [ -f "$out/vmlinuz" ]; then
    publish
    exit 0
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/vi-tiny.XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$(date +%s)

log "downloading $kpkg $kpkgver"
(cd "$work" && apt-get download -qq "$kpkg=$kpkgver" >&2 2>/dev/null) || {
    apt_update
    (cd "$work" && apt-get download -qq "$kpkg=$kpkgver" >&2) || die "apt-get download $kpkg failed"
}
deb=$(ls "$work"/linux-image-*.deb)
dpkg-deb -x "$deb" "$work/k"
kroot=$work/k
[ -f "$kroot/boot/vmlinuz-$kver" ] || die "no vmlinuz-$kver in $deb"
moddir=$kroot/lib/modules/$kver
[ -d "$moddir" ] || moddir=$kroot/usr/lib/modules/$kver
[ -d "$moddir" ] || die "no modules for $kver in $deb"

# ---- modules ---------------------------------------------------------------
root=$work/root
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,run,tmp,root,var,mnt,lib/modules/"$kver"}
ln -s ../run "$root/var/run"

# name -> path (relative to moddir) of the module file, as shipped
find_module() {
    local name=$1 alt
    alt=$(echo "$name" | tr _ -)
    (cd "$moddir" && find kernel \( -name "$name.ko" -o -name "$name.ko.*" \
        -o -name "$alt.ko" -o -name "$alt.ko.*" \) -print | head -n1)
}

# dependencies of a module: from modules.dep when the package has one, else from the
# "depends=" field of the module's .modinfo section (the package normally ships no
# modules.dep: depmod writes it at install time).
module_deps() {
    local rel=$1 f
    if [ -f "$moddir/modules.dep" ]; then
        # modules.dep lists the full closure, farthest dependency last
        grep "^$rel:" "$moddir/modules.dep" | cut -d: -f2 | tr ' ' '\n' | sed '/^$/d' |
            tac | while read -r d; do basename "$d" | sed 's/\.ko.*//'; done
        return
    fi
    f=$work/modinfo.tmp
    decompress "$moddir/$rel" "$f"
    tr '\0' '\n' <"$f" | sed -n 's/^depends=//p' | tr ',' '\n' | sed '/^$/d'
}

decompress() { # src dst
    case "$1" in
    *.ko.xz) xz -dc "$1" >"$2" ;;
    *.ko.zst) zstd -qdc "$1" >"$2" ;;
    *.ko.gz) gzip -dc "$1" >"$2" ;;
    *.ko) cp "$1" "$2" ;;
    *) die "unknown module format: $1" ;;
    esac
}

declare -A done_mod=() dep_names=()
load_order=()
add_module() { # name (depth-first: dependencies first)
    local name=$1 rel dep
    [ -n "${done_mod[$name]:-}" ] && return 0
    done_mod[$name]=1
    rel=$(find_module "$name")
    if [ -z "$rel" ]; then
        if grep -qE "/($name|$(echo "$name" | tr _ -))\.ko" "$moddir/modules.builtin" 2>/dev/null; then
            log "module $name is built in"
            return 0
        fi
        die "module $name not found in $kpkg"
    fi
    local deps
    deps=$(module_deps "$rel" | tr '\n' ' ')
    for dep in $deps; do add_module "$dep"; done
    local dst=${rel%.ko*}.ko
    dep_names[$dst]=$deps
    mkdir -p "$root/lib/modules/$kver/$(dirname "$dst")"
    decompress "$moddir/$rel" "$root/lib/modules/$kver/$dst"
    load_order+=("$dst")
}

mapfile -t wanted < <(sed 's/#.*//' "$tiny_src/modules" | tr -s ' \t' '\n' | sed '/^$/d')
for m in "${wanted[@]}"; do add_module "$m"; done
printf '%s\n' "${load_order[@]}" >"$root/etc/modules.load"
# A modules.dep for busybox modprobe (kernel auto-loading through /sbin/modprobe).
: >"$root/lib/modules/$kver/modules.dep"
for rel in "${load_order[@]}"; do
    deps=""
    for dep in ${dep_names[$rel]}; do
        for r2 in "${load_order[@]}"; do
            case "$r2" in */"$dep".ko | */"$(echo "$dep" | tr _ -)".ko) deps="$r2 $deps" ;; esac
        done
    done
    echo "$rel: $deps" | sed 's/ *$//' >>"$root/lib/modules/$kver/modules.dep"
done
log "modules: $(printf '%s ' "${wanted[@]}")-> ${#load_order[@]} files"

# ---- busybox ---------------------------------------------------------------
cp "$busybox" "$root/bin/busybox"
"$busybox" --list-full | while read -r applet; do
    case "$applet" in
    ""|bin/busybox|sbin/init|linuxrc) continue ;;
    esac
    [ -e "$root/$applet" ] || [ -L "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
done

# ---- host binaries (iproute2, dash, ...) ----------------------------------------
for i in "${!hostbin_dst[@]}"; do
    dst=$root${hostbin_dst[$i]}
    rm -f "$dst"
    mkdir -p "$(dirname "$dst")"
    cp -L "${hostbin_src[$i]}" "$dst"
done
ln -sfn ip "$root/sbin/ip2"
for lib in "${hostlibs[@]}"; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
# usrmerge hosts: the loader may be resolved via /lib64 -> usr/lib64
if [ ! -e "$root/lib64/ld-linux-x86-64.so.2" ] && [ -e /lib64/ld-linux-x86-64.so.2 ]; then
    mkdir -p "$root/lib64"
    cp -L /lib64/ld-linux-x86-64.so.2 "$root/lib64/"
fi
mkdir -p "$root/etc/iproute2"

# ---- rawpkt: a raw Ethernet frame sender/counter (tiny/rawpkt.c), static ----------
gcc -static -Os -s -Wall -Werror -o "$root/usr/bin/rawpkt" "$tiny_src/rawpkt.c" >&2 ||
    die "cannot build tiny/rawpkt.c (needs gcc and libc6-dev's static libc)"

# ---- init and config -------------------------------------------------------
cp "$tiny_src/init" "$root/init"
chmod 0755 "$root/init"
echo "$kver" >"$root/etc/kernel-version"
echo "tiny" >"$root/etc/hostname"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\n' >"$root/etc/group"
printf '127.0.0.1 localhost\n::1 localhost\n' >"$root/etc/hosts"

# ---- pack ------------------------------------------------------------------
tmpout=$images/.tiny-$key.tmp.$$
rm -rf "$tmpout"
mkdir -p "$tmpout"
cp "$kroot/boot/vmlinuz-$kver" "$tmpout/vmlinuz"
# Uncompressed cpio: larger, but the guest does not spend TCG time decompressing it.
(cd "$root" && find . -print0 | sort -z | cpio --null -o -H newc --quiet) >"$tmpout/initrd.img"
echo "$kver" >"$tmpout/kernel-version"
cp "$root/etc/modules.load" "$tmpout/modules.load"
cp "$root/usr/bin/rawpkt" "$tmpout/rawpkt"  # the same binary for the test host's namespaces
{
    echo "kernel_package=$kpkg"
    echo "kernel_package_version=$kpkgver"
    echo "kernel_version=$kver"
    echo "busybox=$("$busybox" 2>&1 | head -n1)"
    echo "iproute2=$("$root/sbin/ip" -V 2>&1 | head -n1)"
    echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
} >"$tmpout/manifest"
rm -rf "$out"
mv -T "$tmpout" "$out"
log "built $out in $(($(date +%s) - start)) s ($(du -sh "$out/initrd.img" | cut -f1) initrd)"
publish
