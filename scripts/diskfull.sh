#!/usr/bin/env bash
# The disk-full sequence of tests/hostile.rs: fill a small tmpfs so that FREE_KIB KiB are left,
# run `arbor train` until the disk stops it, check the dump is readable by h5py at that point,
# free the disk, `--resume latest`, and copy what the run ended with out of the tmpfs.
# Runs inside its own mount namespace (the caller starts it under `unshare -rm`), so the tmpfs is
# private and vanishes with it.
#
# usage: diskfull.sh ARBOR CONFIG RUN_NAME MNT OUT FREE_KIB...
# writes OUT/free-K/{first.rc,first.err,first-dump.rc,first-tmp,resume.rc,resume.err,metrics.jsonl,
#                    model.safetensors,dump.json}
set -u
arbor=$1 cfg=$2 name=$3 mnt=$4 out=$5
shift 5
reader="$(cd "$(dirname "$0")" && pwd)/read_trajectories.py"
mount -t tmpfs -o size=24m arbor-diskfull "$mnt" || { echo "diskfull.sh: cannot mount a tmpfs on $mnt" >&2; exit 90; }
for free_kib in "$@"; do
    rm -rf "${mnt:?}"/*
    avail=$(df -k --output=avail "$mnt" | tail -1)
    head -c $(((avail - free_kib) * 1024)) /dev/zero >"$mnt/filler"
    case="$out/free-$free_kib"
    mkdir -p "$case"
    run="$mnt/runs/$name"
    "$arbor" train --config "$cfg" --out-dir "$mnt/runs" >"$case/first.out" 2>"$case/first.err"
    echo $? >"$case/first.rc"
    # the state a full disk left: the dump readable, no temporary checkpoint folder
    if [ -e "$run/trajectories.h5" ]; then
        python3 "$reader" "$run/trajectories.h5" --summary >/dev/null 2>"$case/first-dump.err"
        echo $? >"$case/first-dump.rc"
    else
        echo none >"$case/first-dump.rc"
    fi
    (ls -a "$run/checkpoints" 2>/dev/null | grep -c '\.tmp-' || true) >"$case/first-tmp"
    rm -f "$mnt/filler"
    if ls "$run/checkpoints" 2>/dev/null | grep -q '^step-'; then
        "$arbor" train --config "$cfg" --out-dir "$mnt/runs" --resume latest >"$case/resume.out" 2>"$case/resume.err"
    else
        "$arbor" train --config "$cfg" --out-dir "$mnt/runs" >"$case/resume.out" 2>"$case/resume.err"
    fi
    echo $? >"$case/resume.rc"
    last=$(ls "$run/checkpoints" | grep '^step-' | sort -t- -k2 -n | tail -1)
    cp "$run/metrics.jsonl" "$case/metrics.jsonl"
    cp "$run/checkpoints/$last/model.safetensors" "$case/model.safetensors"
    python3 "$reader" "$run/trajectories.h5" >"$case/dump.json" 2>"$case/dump.err"
done
umount "$mnt"
