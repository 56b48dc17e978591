#!/usr/bin/env python3
"""Write the TensorBoard event-file fixture of src/io/tfevents.rs into tests/fixtures/tensorboard/.

Test-only: the file is committed, so the Rust tests never need TensorBoard. It is made with
TensorBoard's own protobuf classes and record writer (an independent encoder of the format arbor
writes), from fixed values; regenerate with

    python3 -m pip install tensorboard
    python3 scripts/make_tensorboard_fixtures.py

reference.tfevents holds, in order:
  1. wall_time 1700000000.25, step 0, file_version "brain.Event:2"
  2. wall_time 1700000000.5, step 0, session_log START
  3. wall_time 1700000001.0, step 3, summary: rl/reward_mean 0.40625, rl/loss -0.0125, rl/zero 0.0
  4. wall_time 1700000002.75, step 1099511627776 (2^40), summary: sft/grad_norm 3.0e-8,
     sft/eval_answer_nll 1.0e30, a tag of 200 "x" (a two-byte length), and "ü/ω" 1.0
Verify arbor's own writer against TensorBoard's reader by hand:
    python3 scripts/make_tensorboard_fixtures.py --read DIR   (prints every scalar of a run dir)
"""

import os
import sys

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "tensorboard")


def scalars(pairs):
    return summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=t, simple_value=v) for t, v in pairs])


def write_reference(path):
    events = [
        event_pb2.Event(wall_time=1700000000.25, step=0, file_version="brain.Event:2"),
        event_pb2.Event(wall_time=1700000000.5, step=0, session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)),
        event_pb2.Event(wall_time=1700000001.0, step=3, summary=scalars([("rl/reward_mean", 0.40625), ("rl/loss", -0.0125), ("rl/zero", 0.0)])),
        event_pb2.Event(
            wall_time=1700000002.75,
            step=1 << 40,
            summary=scalars([("sft/grad_norm", 3.0e-8), ("sft/eval_answer_nll", 1.0e30), ("x" * 200, 2.5), ("ü/ω", 1.0)]),
        ),
    ]
    with open(path, "wb") as f:
        w = RecordWriter(f)
        for e in events:
            w.write(e.SerializeToString())
        w.flush()


def read_run(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(run_dir)
    acc.Reload()
    for tag in sorted(acc.Tags()["scalars"]):
        for s in acc.Scalars(tag):
            print(f"{tag}\t{s.step}\t{s.wall_time:.3f}\t{s.value!r}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--read":
        read_run(sys.argv[2])
    else:
        os.makedirs(OUT, exist_ok=True)
        write_reference(os.path.join(OUT, "reference.tfevents"))
