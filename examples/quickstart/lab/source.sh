#!/bin/sh
# The quickstart's stand-in for a source server, run by its prereq_check (`prepare`).
# Each disk is an ext4 image made from a folder of generated files (mkfs.ext4 -d), and
# a writer changes it while it replicates: every second for two minutes it overwrites
# a random 4 KiB block of a data file inside the filesystem (so the filesystem stays
# consistent, as an application writing its files keeps it). Each write holds a shared
# lock on the image (flock), the lock the agent takes exclusively to freeze the disk for
# a recovery point, so a point holds whole writes only.
set -eu
name=$1
shift
for disk in "$@"; do
  if [ ! -f "$disk" ]; then
    mkdir -p "$(dirname "$disk")"
    seed=$(mktemp -d)
    mkdir -p "$seed/etc" "$seed/srv/$name"
    echo "$name" > "$seed/etc/hostname"
    head -c 2097152 /dev/urandom > "$seed/srv/$name/data.bin"
    mkfs.ext4 -q -F -b 4096 -d "$seed" -L "$name" "$disk.new" 16M >/dev/null
    rm -rf "$seed"
    # The data file's blocks: where the writer writes.
    debugfs -R "blocks /srv/$name/data.bin" "$disk.new" 2>/dev/null | tr ' ' '\n' | grep -E '^[0-9]+$' > "$disk.blocks"
    mv "$disk.new" "$disk"
  fi
  pidfile="$disk.writer.pid"
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    continue
  fi
  nohup sh -c '
    disk=$1
    i=0
    while [ $i -lt 120 ] && [ -f "$disk" ]; do
      i=$((i + 1))
      block=$(shuf -n 1 "$disk.blocks")
      flock -s "$disk" dd if=/dev/urandom of="$disk" bs=4096 seek="$block" count=1 conv=notrunc status=none
      sleep 1
    done
  ' wavelift-quickstart-writer "$disk" >/dev/null 2>&1 </dev/null &
  echo $! > "$pidfile"
done
