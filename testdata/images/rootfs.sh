#!/bin/sh
# Assembles the root file system of a test base image from what Debian
# installed on this machine (nothing is downloaded):
#   rootfs.sh busybox DEST   busybox-static with its applets, users, groups
#   rootfs.sh gcc DEST       the same plus gcc and libc6-dev with every
#                            package they depend on (docs left out)
# The tests and bench/diff-buildah.sh build images from it with
# `FROM scratch` + `COPY rootfs/ /`.
set -eu

kind=${1:?usage: rootfs.sh busybox|gcc DEST}
dest=${2:?usage: rootfs.sh busybox|gcc DEST}

command -v busybox >/dev/null || { echo "rootfs.sh: busybox is not installed (apt-get install busybox-static)" >&2; exit 1; }
mkdir -p "$dest"

# Copies a path of this machine into $dest as dpkg names it, with the
# symlinks on its way (/lib64 -> usr/lib64 on merged-/usr systems) kept.
copy_path() {
    local path parent target
    path=$1
    [ -e "$path" ] || [ -L "$path" ] || return 0
    parent=$(dirname "$path")
    if [ "$parent" != / ] && [ ! -e "$dest$parent" ] && [ ! -L "$dest$parent" ]; then
        copy_path "$parent"
    fi
    if [ -L "$path" ]; then
        [ -L "$dest$path" ] || cp -P "$path" "$dest$path"
        # The directory a linked directory points to must exist too.
        if [ -d "$path" ]; then
            target=$(readlink -f "$path")
            [ -e "$dest$target" ] || copy_path "$target"
        fi
    elif [ -d "$path" ]; then
        [ -d "$dest$path" ] || mkdir -m "$(stat -c %a "$path")" "$dest$path"
    elif [ ! -e "$dest$path" ]; then
        cp -p "$path" "$dest$path"
    fi
}

case $kind in
    busybox) ;;
    gcc)
        command -v gcc >/dev/null && [ -e /usr/include/stdio.h ] || {
            echo "rootfs.sh: gcc is not installed (apt-get install gcc libc6-dev)" >&2; exit 1; }
        packages=$(apt-cache depends --recurse --installed --no-recommends --no-suggests \
            --no-conflicts --no-breaks --no-replaces --no-enhances gcc libc6-dev \
            | grep -v '^ ' | sort -u)
        for package in $packages; do
            dpkg -L "$package" 2>/dev/null || true
        done | grep -Ev '^/usr/share/(doc|man|info|locale|lintian|bug)(/|$)' | sort -u |
        while read -r path; do
            copy_path "$path"
        done
        for file in /etc/ld.so.conf /etc/ld.so.conf.d/*; do
            copy_path "$file"
        done
        ;;
    *) echo "rootfs.sh: unknown image kind $kind (busybox or gcc)" >&2; exit 1 ;;
esac

mkdir -p "$dest/bin" "$dest/etc" "$dest/root" "$dest/home/app" "$dest/usr/local/bin"
mkdir -p -m 1777 "$dest/tmp"
chmod 1777 "$dest/tmp"
cp "$(command -v busybox)" "$dest/bin/busybox"
# Applets where the packages put nothing of their own.
for applet in $(busybox --list); do
    [ "$applet" = busybox ] && continue
    [ -e "$dest/bin/$applet" ] || [ -L "$dest/bin/$applet" ] || ln -s busybox "$dest/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$dest/etc/passwd"
printf 'root:x:0:\nstaff:x:50:app\napp:x:1000:\nnogroup:x:65534:\n' > "$dest/etc/group"
