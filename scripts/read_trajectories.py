#!/usr/bin/env python3
"""Print an arbor trajectory dump (docs/trajectories.md) as JSON, read with h5py.

Usage: python3 scripts/read_trajectories.py FILE.h5 [--summary]

Output: {"attrs": {name: value}, "datasets": {name: {"dtype", "shape", "maxshape", "chunks", "compression",
"compression_opts", "shuffle", "values"}}}. Float datasets are given as their IEEE-754 bit patterns
("values" holds uint32 integers) so that NaN payloads and -0.0 survive JSON; integers are exact.
With --summary, "values" is left out.

File locking is turned off (HDF5_USE_FILE_LOCKING=FALSE) unless the caller set the variable: HDF5 keeps a lock
on a file that a running trainer has open for writing, and without this a reader fails with
"unable to lock file" until the run ends. A dump that a run is appending to (or that a killed run left) is
in SWMR mode: HDF5 opens it only with `swmr=True`, which this script passes when the plain open fails.
"""
import json
import os
import sys

os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")

try:
    import h5py
    import numpy as np
except ImportError as e:
    sys.exit(f"read_trajectories.py: {e}; install h5py (scripts/setup.sh, `apt-get install python3-h5py` "
             f"or `python3 -m pip install h5py`)")


def attr_value(v):
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


def dataset_json(ds, with_values):
    out = {
        "dtype": str(ds.dtype),
        "shape": list(ds.shape),
        "maxshape": list(ds.maxshape) if ds.maxshape is not None else None,
        "chunks": list(ds.chunks) if ds.chunks is not None else None,
        "compression": ds.compression,
        "compression_opts": ds.compression_opts,
        "shuffle": bool(ds.shuffle),
    }
    if with_values:
        data = ds[()]
        if data.dtype == np.float32:
            data = data.view(np.uint32)
        elif data.dtype == np.float64:
            data = data.view(np.uint64)
        out["values"] = [int(x) for x in data.reshape(-1)]
    return out


def open_dump(path):
    """The file, opened plainly or, when a writer holds it in SWMR mode (or was killed so), as a SWMR reader."""
    try:
        return h5py.File(path, "r")
    except OSError:
        return h5py.File(path, "r", swmr=True)


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if len(args) != 1:
        sys.exit(__doc__)
    with_values = "--summary" not in sys.argv[1:]
    with open_dump(args[0]) as f:
        result = {
            "attrs": {k: attr_value(v) for k, v in f.attrs.items()},
            "datasets": {k: dataset_json(v, with_values) for k, v in f.items() if isinstance(v, h5py.Dataset)},
        }
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
