#!/usr/bin/env python3
"""Write the Parquet fixtures of tests/parquet.rs into tests/fixtures/parquet/.

Test-only: the generated files are committed, so the Rust tests never need pyarrow. Regenerate
(the output is deterministic for a given pyarrow version) with

    python3 -m pip install pyarrow
    python3 scripts/make_parquet_fixtures.py

Files (see tests/fixtures/parquet/README.md):
  hf/train-0000K-of-00003.parquet  the good dataset in Hugging Face layout: 3 shards of 20 rows,
                                   columns id (int64), question (string), answer (string),
                                   source (string); shard 1 has 3 row groups (7 + 7 + 6 rows)
  rows.tsv                         the same 60 rows as `question<TAB>answer` lines, in order
  int_answers.parquet              question (string), answer (int64), 12 rows
  prompt_answer.parquet            prompt (string), answer (string), 12 rows, no `question`
  numeric_answers.parquet          4 rows, question plus answer columns of other types: f64, f32,
                                   u64, i8, and f64 with a NaN in row 3
  null_answer.parquet              answer is null in row 4 (1-based) of 6
  missing_answer.parquet           question and solution, no `answer` column
  list_answer.parquet              answer is list<int64>
  empty.parquet                    question/answer schema, 0 rows
  zstd.parquet, gzip.parquet       prompt_answer.parquet's rows as question/answer, zstd / gzip
  brotli.parquet                   the same, brotli (a codec arbor does not decode)
  truncated.parquet                the first half of hf/train-00000-of-00003.parquet
  bad_page.parquet                 int_answers.parquet with the answer column's first page
                                   header overwritten by 0xff bytes (footer intact)
"""

import os
import random

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "parquet")


def arithmetic_rows(n, seed):
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        op = rng.choice("+-*")
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
        rows.append((f"What is {a} {op} {b}?", value))
    return rows


def write(name, table, **kwargs):
    path = os.path.join(ROOT, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(table, path, **kwargs)
    return path


def main():
    rows = arithmetic_rows(60, seed=2024)

    # The good dataset: 3 shards in HF layout, string answers, two extra columns.
    for k in range(3):
        shard = rows[20 * k : 20 * (k + 1)]
        table = pa.table(
            {
                "id": pa.array(range(20 * k, 20 * (k + 1)), pa.int64()),
                "question": pa.array([q for q, _ in shard], pa.string()),
                "answer": pa.array([str(v) for _, v in shard], pa.string()),
                "source": pa.array(["make_parquet_fixtures"] * 20, pa.string()),
            }
        )
        write(f"hf/train-{k:05d}-of-00003.parquet", table, row_group_size=7 if k == 1 else 64)
    with open(os.path.join(ROOT, "rows.tsv"), "w") as f:
        for q, v in rows:
            f.write(f"{q}\t{v}\n")

    small = arithmetic_rows(12, seed=7)
    questions = pa.array([q for q, _ in small], pa.string())
    int_path = write(
        "int_answers.parquet",
        pa.table({"question": questions, "answer": pa.array([v for _, v in small], pa.int64())}),
    )
    write(
        "prompt_answer.parquet",
        pa.table({"prompt": questions, "answer": pa.array([str(v) for _, v in small], pa.string())}),
    )
    write(
        "numeric_answers.parquet",
        pa.table(
            {
                "question": pa.array([q for q, _ in small[:4]], pa.string()),
                "f64": pa.array([0.5, -1.25, 3.0, 0.1], pa.float64()),
                "f32": pa.array([0.5, -1.25, 3.0, 0.1], pa.float32()),
                "u64": pa.array([0, 7, 2**63 + 1, 2**64 - 1], pa.uint64()),
                "i8": pa.array([-128, -1, 0, 127], pa.int8()),
                "nan": pa.array([1.0, 2.0, float("nan"), 4.0], pa.float64()),
            }
        ),
    )
    write(
        "null_answer.parquet",
        pa.table(
            {
                "question": pa.array([q for q, _ in small[:6]], pa.string()),
                "answer": pa.array(["1", "2", "3", None, "5", "6"], pa.string()),
            }
        ),
    )
    write(
        "missing_answer.parquet",
        pa.table({"question": questions, "solution": pa.array(["-"] * 12, pa.string())}),
    )
    write(
        "list_answer.parquet",
        pa.table({"question": questions, "answer": pa.array([[v] for _, v in small], pa.list_(pa.int64()))}),
    )
    write(
        "empty.parquet",
        pa.table({"question": pa.array([], pa.string()), "answer": pa.array([], pa.string())}),
    )
    for codec in ["zstd", "gzip", "brotli"]:
        write(
            f"{codec}.parquet",
            pa.table({"question": questions, "answer": pa.array([str(v) for _, v in small], pa.string())}),
            compression=codec,
        )

    with open(os.path.join(ROOT, "hf", "train-00000-of-00003.parquet"), "rb") as f:
        good = f.read()
    with open(os.path.join(ROOT, "truncated.parquet"), "wb") as f:
        f.write(good[: len(good) // 2])

    meta = pq.ParquetFile(int_path).metadata
    answer = meta.row_group(0).column(1)
    assert answer.path_in_schema == "answer"
    offset = answer.dictionary_page_offset or answer.data_page_offset
    with open(int_path, "rb") as f:
        data = bytearray(f.read())
    data[offset : offset + 16] = b"\xff" * 16
    with open(os.path.join(ROOT, "bad_page.parquet"), "wb") as f:
        f.write(bytes(data))


if __name__ == "__main__":
    main()
