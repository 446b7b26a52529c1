#!/bin/sh
# Make Fashion-MNIST available: it is found in $PRUNUS_DATA, ~/.cache/prunus or
# /usr/share/datasets/fashion-mnist (Debian package dataset-fashion-mnist).
# Installs the Debian package when the data is missing and apt is usable.
set -e
for d in "${PRUNUS_DATA:+$PRUNUS_DATA/fashion-mnist}" "${XDG_CACHE_HOME:-$HOME/.cache}/prunus/fashion-mnist" /usr/share/datasets/fashion-mnist; do
    if [ -n "$d" ] && ls "$d"/train-images-idx3-ubyte* >/dev/null 2>&1; then
        exit 0
    fi
done
if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
    echo "Fashion-MNIST not found: installing the Debian package dataset-fashion-mnist"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null && exit 0
fi
echo "Fashion-MNIST is missing and apt is not usable: run 'apt install dataset-fashion-mnist' or put the IDX files in \$PRUNUS_DATA/fashion-mnist" >&2
exit 2
