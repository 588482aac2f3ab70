#!/bin/bash
# Build the full Debian 12 guest of the lab (ansible/, Vagrantfile) with debootstrap.
#
# Output (outside git, cached by a hash of every build input):
#   ${VHOST_IPVLAN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vhost-ipvlan}/images/debian12-<key>/
#       disk.qcow2     the root file system (ext4 on the whole disk, /dev/vda, no partition table)
#       vmlinuz initrd.img cmdline   direct kernel boot (the disk has no boot loader)
#       id_ed25519 id_ed25519.pub    the SSH key of root and of user vagrant, made by this build
#       box/box.img box/metadata.json box/Vagrantfile   the Vagrant box (vagrant-libvirt);
#       debian12.box   the same as a tar for `vagrant box add`
#       manifest
#   .../images/debian12-current -> debian12-<key>    (last successful build)
#   .../images/debian12.env   (DEBIAN_DIR= DEBIAN_DISK= DEBIAN_KERNEL= DEBIAN_INITRD= DEBIAN_CMDLINE= DEBIAN_KEY= DEBIAN_BOX=)
# The directory is printed as the last line on stdout; progress goes to stderr.
#
# Needs root (debootstrap chroots), debootstrap, e2fsprogs (mkfs.ext4 -d: no loop
# device or mount), qemu-utils, openssh-client, network access to the Debian mirror.
set -euo pipefail
export LC_ALL=C

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src=$here/debian
cache=${VHOST_IPVLAN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vhost-ipvlan}
images=$cache/images
suite=${DEBIAN_SUITE:-bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
size=${DEBIAN_DISK_SIZE:-4G}

log() { echo "build-debian: $*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap)"
for tool in debootstrap mkfs.ext4 qemu-img ssh-keygen sha256sum tar; do
    command -v "$tool" >/dev/null || die "missing tool: $tool (scripts/setup installs it)"
done

mapfile -t packages < <(sed 's/#.*//' "$src/packages" | tr -s ' \t' '\n' | sed '/^$/d')
key=$(
    {
        echo "suite $suite mirror $mirror size $size"
        echo "script $(sha256sum <"$here/build-debian.sh")"
        (cd "$src" && find . -type f -print0 | sort -z | xargs -0 sha256sum)
    } | sha256sum | cut -c1-16
)
out=$images/debian12-$key

publish() {
    ln -sfn "debian12-$key" "$images/debian12-current.tmp.$$"
    mv -T "$images/debian12-current.tmp.$$" "$images/debian12-current"
    {
        echo "DEBIAN_DIR=$out"
        echo "DEBIAN_DISK=$out/disk.qcow2"
        echo "DEBIAN_KERNEL=$out/vmlinuz"
        echo "DEBIAN_INITRD=$out/initrd.img"
        echo "DEBIAN_CMDLINE='$(cat "$out/cmdline")'"
        echo "DEBIAN_KEY=$out/id_ed25519"
        echo "DEBIAN_BOX=$out/debian12.box"
    } >"$images/debian12.env.tmp.$$"
    mv "$images/debian12.env.tmp.$$" "$images/debian12.env"
    echo "$out"
}

done_() { [ -f "$out/manifest" ]; }
mkdir -p "$images"
if done_; then
    log "up to date ($out)"
    publish
    exit 0
fi
exec 9>"$images/.lock-debian"
if command -v flock >/dev/null; then flock 9; fi
if done_; then
    publish
    exit 0
fi

work=$(mktemp -d "${TMPDIR:-/var/tmp}/vi-debian.XXXXXX")
root=$work/root
cleanup() {
    for m in proc sys dev/pts dev; do umount "$root/$m" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
start=$(date +%s)

log "debootstrap $suite (${#packages[@]} extra packages) from $mirror"
include=$(IFS=,; echo "${packages[*]}")
mkdir -p "$images/debootstrap-cache"   # downloaded .debs, kept between builds
debootstrap --variant=minbase --cache-dir="$images/debootstrap-cache" --include="$include" "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -n 30 "$work/debootstrap.log" >&2
    die "debootstrap failed"
}
log "debootstrap done in $(($(date +%s) - start)) s"

# ---- configuration ------------------------------------------------------------
# No static host name: the guest takes the one DHCP gives (vi-hostname.path sets it as the
# transient name, which a static /etc/hostname would override); systemd-resolved resolves
# it locally.
rm -f "$root/etc/hostname"
printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
ln -sfn ../run/systemd/resolve/stub-resolv.conf "$root/etc/resolv.conf"
echo "/dev/vda / ext4 defaults,errors=remount-ro 0 1" >"$root/etc/fstab"
: >"$root/etc/machine-id"            # each guest gets its own at first boot
rm -f "$root/var/lib/dbus/machine-id"
install -m 0755 "$src/vi-net" "$root/usr/local/sbin/vi-net"
install -m 0644 "$src/vi-net.service" "$root/etc/systemd/system/vi-net.service"
install -m 0644 "$src/90-dhcp.network" "$root/etc/systemd/network/90-dhcp.network"
install -m 0644 "$src/vi-hostname.path" "$src/vi-hostname.service" "$root/etc/systemd/system/"
install -m 0644 "$src/sshd-lab.conf" "$root/etc/ssh/sshd_config.d/lab.conf"
install -d "$root/etc/systemd/system/ssh.service.d"
install -m 0644 "$src/ssh-hostkey.conf" "$root/etc/systemd/system/ssh.service.d/hostkey.conf"
rm -f "$root"/etc/ssh/ssh_host_*
wants=$root/etc/systemd/system/multi-user.target.wants
mkdir -p "$wants"
ln -sf /etc/systemd/system/vi-net.service "$wants/vi-net.service"
ln -sf /lib/systemd/system/systemd-networkd.service "$wants/systemd-networkd.service"
ln -sf /lib/systemd/system/systemd-resolved.service "$wants/systemd-resolved.service"
ln -sf /etc/systemd/system/vi-hostname.path "$wants/vi-hostname.path"
# Nothing waits for the network, prompts on the console or wakes up to update apt.
for unit in systemd-networkd-wait-online.service systemd-firstboot.service apt-daily.timer \
    apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer getty@tty1.service; do
    ln -sf /dev/null "$root/etc/systemd/system/$unit"
done

# Users: root and vagrant (sudo without password) log in with the key made here.
ssh-keygen -q -t ed25519 -N "" -C "vhost-ipvlan-lab" -f "$work/id_ed25519"
chroot "$root" useradd -m -s /bin/bash -u 1000 vagrant
echo "vagrant ALL=(ALL) NOPASSWD: ALL" >"$root/etc/sudoers.d/vagrant"
chmod 0440 "$root/etc/sudoers.d/vagrant"
for home in root home/vagrant; do
    install -d -m 0700 "$root/$home/.ssh"
    install -m 0600 "$work/id_ed25519.pub" "$root/$home/.ssh/authorized_keys"
done
chroot "$root" chown -R vagrant:vagrant /home/vagrant/.ssh
chroot "$root" passwd -l root >/dev/null

# A small initrd: only the modules a virtio disk root needs.
sed -i 's/^MODULES=.*/MODULES=list/' "$root/etc/initramfs-tools/initramfs.conf"
grep -v '^#' "$src/initramfs-modules" >>"$root/etc/initramfs-tools/modules"
mount -t proc proc "$root/proc"
kver=$(basename "$(ls -d "$root"/lib/modules/*)")
chroot "$root" update-initramfs -u -k "$kver" >"$work/initramfs.log" 2>&1 || {
    cat "$work/initramfs.log" >&2
    die "update-initramfs failed"
}
umount "$root/proc"
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/*.log

# ---- pack -----------------------------------------------------------------------
tmpout=$images/.debian12-$key.tmp.$$
rm -rf "$tmpout"
mkdir -p "$tmpout/box"
cp "$root/boot/vmlinuz-$kver" "$tmpout/vmlinuz"
cp "$root/boot/initrd.img-$kver" "$tmpout/initrd.img"
echo "root=/dev/vda rw console=ttyS0 net.ifnames=0 quiet" >"$tmpout/cmdline"
cp "$work/id_ed25519" "$work/id_ed25519.pub" "$tmpout/"
truncate -s "$size" "$work/root.raw"
mkfs.ext4 -q -F -L root -d "$root" "$work/root.raw" "$size"
qemu-img convert -f raw -O qcow2 "$work/root.raw" "$tmpout/disk.qcow2"
rm -f "$work/root.raw"
ln "$tmpout/disk.qcow2" "$tmpout/box/box.img"
virtual_size=$(( $(qemu-img info --output=json "$tmpout/disk.qcow2" | sed -n 's/.*"virtual-size": *\([0-9]*\).*/\1/p') / 1073741824 ))
printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": %s}\n' "$virtual_size" >"$tmpout/box/metadata.json"
cp "$src/Vagrantfile.box" "$tmpout/box/Vagrantfile"
tar -C "$tmpout/box" -cf "$tmpout/debian12.box" metadata.json Vagrantfile box.img
{
    echo "suite=$suite"
    echo "mirror=$mirror"
    echo "kernel_version=$kver"
    echo "packages=${packages[*]}"
    echo "installed=$(chroot "$root" dpkg-query -W -f='${Package}\n' | wc -l)"
    echo "ssh_key=$(ssh-keygen -l -f "$work/id_ed25519.pub")"
    echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "build_seconds=$(($(date +%s) - start))"
} >"$tmpout/manifest"
rm -rf "$out"
mv -T "$tmpout" "$out"
log "built $out in $(($(date +%s) - start)) s ($(du -sh "$out/disk.qcow2" | cut -f1) disk)"
publish
