#!/bin/sh
# Make a Debian bookworm base image from Debian's packages, for machines that reach the package
# registries but no container registry (so `FROM python:3.11-slim` cannot be pulled).
#   docker/make-base.sh IMAGE_NAME [ENGINE] [PACKAGES]
# ENGINE is podman (default) or docker; PACKAGES (comma-separated) defaults to what the pipeline
# image needs (python3 with venv and pip, git, make, CA certificates). Uses debootstrap's default
# mirror unless DEBOOTSTRAP_MIRROR is set. Needs root (debootstrap) and about 450 MB of disk.
set -eu
name=${1:?usage: docker/make-base.sh IMAGE_NAME [podman|docker]}
engine=${2:-podman}
packages=${3:-python3,python3-venv,python3-pip,git,make,ca-certificates}
command -v debootstrap >/dev/null || { echo "make-base: debootstrap is missing; as root: apt-get install -y debootstrap" >&2; exit 1; }
rootfs=$(mktemp -d "${TMPDIR:-/var/tmp}/distillery-base.XXXXXX")
trap 'rm -rf "$rootfs"' EXIT
echo "make-base: debootstrap bookworm into $rootfs"
debootstrap --variant=minbase --include="$packages" \
  bookworm "$rootfs" ${DEBOOTSTRAP_MIRROR:-} >"$rootfs.log" 2>&1 || { tail -20 "$rootfs.log" >&2; exit 1; }
rm -f "$rootfs.log"
# What slim images leave out too: package caches and lists, documentation, man pages, locales.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/* \
       "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/*
tar -C "$rootfs" -c . | "$engine" import - "$name" >/dev/null
echo "make-base: imported $name"
