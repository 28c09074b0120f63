#!/usr/bin/env bash
# A Charliecloud image of spibatch built without a container registry: a Debian bookworm root file system
# (debootstrap, from Debian's own mirror) with Python 3.11, Open MPI 4.1 (the host's major version: one mpirun
# starts ranks inside and outside), and this checkout installed with [mpi,platform].  For machines that reach
# Debian and PyPI but no registry (`ch-image build -f containers/Dockerfile .` needs the CUDA base image).
#
#   sudo bash containers/charliecloud.sh /var/tmp/ch/spibatch      # as root: debootstrap and chroot need it
#   ch-run /var/tmp/ch/spibatch -- python3 -m spibatch --version     # then unprivileged, any user
#
# Site file:  container: {runtime: charliecloud, image: /var/tmp/ch/spibatch, binds: [<data folders>]}
# Re-running it on an existing image reinstalls this checkout only (after a change of the code).
# Needs: debootstrap, and the ch-run of Debian's `charliecloud` package to use the image.
set -euo pipefail

image=${1:?usage: containers/charliecloud.sh IMAGE_DIR}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
repo=$(cd "$(dirname "$0")/.." && pwd)

in_image() { chroot "$image" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
                  HOME=/root DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 "$@"; }

if [ ! -x "$image/usr/bin/mpirun" ]; then
    mkdir -p "$(dirname "$image")"
    [ -x "$image/usr/bin/apt-get" ] || debootstrap --variant=minbase bookworm "$image" "$mirror"
    cp /etc/resolv.conf "$image/etc/resolv.conf"
    # apt inside (debootstrap's own --include resolves no alternatives: libltdl-dev's automake fails there)
    in_image apt-get update
    in_image apt-get install -y --no-install-recommends -f \
        python3 python3-pip python3-dev build-essential libopenmpi-dev openmpi-bin ca-certificates
    in_image apt-get clean
fi

# this checkout, copied in (the image must not depend on a path of the build machine)
rm -rf "$image/src/spibatch"
mkdir -p "$image/src/spibatch"
(cd "$repo" && tar -cf - pyproject.toml README.md LICENSE spibatch) | tar -xf - -C "$image/src/spibatch"
cp /etc/resolv.conf "$image/etc/resolv.conf"
# the system Python of the image is spibatch's: `python3` in a launch command finds it
# pip trusts the build host's certificate authorities for the build (a site's TLS proxy), not afterwards
cp "${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}" "$image/tmp/build-host-ca.crt"
in_image env PIP_CERT=/tmp/build-host-ca.crt python3 -m pip install --break-system-packages --no-warn-script-location \
    "/src/spibatch[mpi,platform]"
rm -f "$image/tmp/build-host-ca.crt"
rm -rf "$image/src/spibatch"
# the image's environment (ch-run --set-env reads it, as it reads ch-image's from a Dockerfile's ENV): the
# image is mounted read-only, so Numba's and matplotlib's caches go under /tmp, as in containers/Dockerfile
mkdir -p "$image/ch"
printf '%s\n' NUMBA_CACHE_DIR=/tmp/numba-ch MPLCONFIGDIR=/tmp/matplotlib-ch PYTHONDONTWRITEBYTECODE=1 \
    > "$image/ch/environment"
echo "image ready: $image ($(du -sh "$image" | cut -f1)); try: ch-run $image -- python3 -m spibatch --version"
