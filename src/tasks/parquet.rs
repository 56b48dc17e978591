//! Parquet datasets (`[data] kind = "parquet"`), e.g. math sets in the Hugging Face `datasets`
//! layout (`train-00000-of-00003.parquet`, …, with `question` and `answer` columns):
//!
//! ```toml
//! [data]
//! kind = "parquet"
//! path = "data/train"             # a .parquet file, or a directory: its *.parquet files in name order
//! eval_path = "data/test.parquet" # optional held-out file or directory (else heldout_fraction)
//! prompt_column = "question"      # default "question", or "prompt" when a file has no `question`
//! answer_column = "answer"        # default "answer"
//! ```
//!
//! Each row becomes a [`Record`] of the one dataset task, [`DatasetTask`], so held-out split,
//! problem indexing and grading are exactly those of a JSONL file with the same rows (see
//! [`super::dataset`]); [`Record::line`] is the 1-based row of its file, and no solution is read.
//!
//! Only the two columns are read, one row group at a time, with Parquet's column reader (no
//! Arrow). Prompts must be strings (`BYTE_ARRAY`, UTF-8); answers may be strings, integers (any
//! width, signed or unsigned: kept as their decimal spelling) or floats (finite; their shortest
//! decimal spelling). Column chunks may be uncompressed or compressed with Snappy (pyarrow's
//! default), zstd (polars' default) or gzip; brotli and LZ4 are refused. Everything else is an [`Error::Dataset`] raised while the task is built, before
//! any training: it names the file, the 1-based row when one row is at fault (else 0) and, in
//! the message, the row group and the column — a missing column (listing the columns present),
//! a list/struct/date/… column, a null, text that is not UTF-8, an unsupported compression, a
//! truncated or corrupt file, a dataset without rows.
//!
//! A directory whose files are all named like Hugging Face shards (`<split>-<k>-of-<n>.parquet`)
//! must hold the shards of one split, all of them: `train-*` next to `test-*`, or a missing
//! shard, is an error rather than a silently mixed or partial dataset.

use std::fs::File;
use std::path::{Path, PathBuf};

use ::parquet::basic::{Compression, ConvertedType, LogicalType, Repetition, Type as Physical};
use ::parquet::column::reader::{ColumnReader, ColumnReaderImpl};
use ::parquet::data_type::DataType;
use ::parquet::file::reader::{FileReader, RowGroupReader, SerializedFileReader};
use ::parquet::schema::types::{ColumnDescriptor, SchemaDescriptor, Type as SchemaType};

use crate::error::{Error, Result};
use crate::tasks::dataset::{bad, DatasetTask, Record};

/// Prompt columns tried, in order, when `prompt_column` is not set.
pub const DEFAULT_PROMPT_COLUMNS: [&str; 2] = ["question", "prompt"];
/// The answer column when `answer_column` is not set.
pub const DEFAULT_ANSWER_COLUMN: &str = "answer";
/// Records decoded per column-reader call (bounds the memory a corrupt row count can claim).
const BATCH: usize = 4096;

/// The two columns read from every file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Columns {
    /// The prompt column; `None`: [`DEFAULT_PROMPT_COLUMNS`], the first one the file has.
    pub prompt: Option<String>,
    /// The answer column; `None`: [`DEFAULT_ANSWER_COLUMN`].
    pub answer: Option<String>,
}

impl DatasetTask {
    /// Load the Parquet file or shard directory `path`; the held-out split is `eval_path` (a file or
    /// directory, read the same way) when given, else the records whose prompt hashes into
    /// `eval_fraction` (see [`DatasetTask::load_with`]).
    pub fn load_parquet(path: &Path, eval_path: Option<&Path>, eval_fraction: f64, columns: &Columns) -> Result<Self> {
        Self::load_with("parquet", path, eval_path, eval_fraction, |p| read_records(p, columns))
    }
}

/// The records of `path` (a file, or a directory's shards in name order), rows in file order.
pub fn read_records(path: &Path, columns: &Columns) -> Result<Vec<Record>> {
    let mut records = Vec::new();
    let sharded = std::fs::metadata(path).is_ok_and(|m| m.is_dir());
    for (k, file) in dataset_files(path)?.into_iter().enumerate() {
        let shard = sharded.then(|| (k, std::sync::Arc::from(file.as_path())));
        read_file(&file, columns, shard, &mut records)?;
    }
    Ok(records)
}

/// The files of `path`: `path` itself when it is not a directory, else the directory's `*.parquet`
/// files in name order (see the module doc for the checks on shard names).
pub fn dataset_files(path: &Path) -> Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(|e| Error::io(path, e))? {
        let file = entry.map_err(|e| Error::io(path, e))?.path();
        if file.extension().is_some_and(|e| e == "parquet") && file.is_file() {
            files.push(file);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(bad(path, 0, "the directory has no *.parquet files"));
    }
    check_shards(path, &files)?;
    // shards in their numbers' order (`train-2-of-12` before `train-10-of-12`; zero-padded names
    // sort so already)
    let number = |f: &PathBuf| f.file_name().and_then(|n| shard_name(&n.to_string_lossy()).map(|s| s.1));
    if files.iter().all(|f| number(f).is_some()) {
        files.sort_by_key(number);
    }
    Ok(files)
}

/// `name` as a Hugging Face shard `<split>-<k>-of-<n>.parquet`: (split, k, n).
fn shard_name(name: &str) -> Option<(&str, u64, u64)> {
    let stem = name.strip_suffix(".parquet")?;
    let (rest, n) = stem.rsplit_once("-of-")?;
    let (split, k) = rest.rsplit_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if split.is_empty() || !digits(k) || !digits(n) {
        return None;
    }
    Some((split, k.parse().ok()?, n.parse().ok()?))
}

/// When every file is a shard: one split, shards 0..n each present once.
fn check_shards(dir: &Path, files: &[PathBuf]) -> Result<()> {
    let names: Vec<String> =
        files.iter().map(|f| f.file_name().unwrap_or_default().to_string_lossy().into_owned()).collect();
    let Some(shards) = names.iter().map(|n| shard_name(n)).collect::<Option<Vec<_>>>() else {
        return Ok(());
    };
    let mut splits: Vec<&str> = shards.iter().map(|s| s.0).collect();
    splits.dedup();
    if splits.len() > 1 {
        return Err(bad(
            dir,
            0,
            format!(
                "the directory holds the shards of several splits ({}); give `path` (and `eval_path`) \
                 a directory or file of one split",
                splits.join(", ")
            ),
        ));
    }
    let n = shards[0].2;
    // (by number, not by name: `train-2-of-12` comes before `train-10-of-12`; the count of files
    // is compared before anything the size of n is made)
    let mut have: Vec<u64> = shards.iter().map(|s| s.1).collect();
    have.sort_unstable();
    let complete =
        u64::try_from(have.len()).is_ok_and(|k| k == n) && have.iter().enumerate().all(|(i, &x)| x == i as u64);
    if shards.iter().any(|s| s.2 != n) || !complete {
        return Err(bad(
            dir,
            0,
            format!(
                "incomplete or inconsistent shards of split `{}`: expected {n} shards numbered 0..{n}, found {}",
                splits[0],
                names.join(", ")
            ),
        ));
    }
    Ok(())
}

/// How a column's values become text.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// UTF-8 (or unannotated) byte arrays.
    Text,
    /// 32- or 64-bit integers; `unsigned`: stored in two's complement, read as unsigned.
    Int { unsigned: bool },
    /// 32- or 64-bit floats.
    Float,
}

/// One column to read: its top-level name, the config key that chose it and its leaf.
struct Column<'a> {
    name: &'a str,
    key: &'static str,
    leaf: usize,
    kind: Kind,
    max_def: i16,
}

/// A column's physical and logical type, for messages.
fn describe(d: &ColumnDescriptor) -> String {
    match (d.logical_type_ref(), d.converted_type()) {
        (Some(l), _) => format!("{} ({l:?})", d.physical_type()),
        (None, ConvertedType::NONE) => d.physical_type().to_string(),
        (None, c) => format!("{} ({c})", d.physical_type()),
    }
}

fn kind_of(d: &ColumnDescriptor) -> Option<Kind> {
    use ConvertedType as C;
    match (d.physical_type(), d.logical_type_ref(), d.converted_type()) {
        (Physical::BYTE_ARRAY, None | Some(LogicalType::String), C::NONE | C::UTF8) => Some(Kind::Text),
        (Physical::INT32 | Physical::INT64, Some(LogicalType::Integer(t)), _) => {
            Some(Kind::Int { unsigned: !t.is_signed })
        }
        (Physical::INT32 | Physical::INT64, None, C::NONE | C::INT_8 | C::INT_16 | C::INT_32 | C::INT_64) => {
            Some(Kind::Int { unsigned: false })
        }
        (Physical::INT32 | Physical::INT64, None, C::UINT_8 | C::UINT_16 | C::UINT_32 | C::UINT_64) => {
            Some(Kind::Int { unsigned: true })
        }
        (Physical::FLOAT | Physical::DOUBLE, None, C::NONE) => Some(Kind::Float),
        _ => None,
    }
}

/// A group field's shape, for messages.
fn group_shape(t: &SchemaType) -> &'static str {
    let info = t.get_basic_info();
    match (info.logical_type_ref(), info.converted_type()) {
        (Some(LogicalType::List), _) | (None, ConvertedType::LIST) => "a list",
        (Some(LogicalType::Map), _) | (None, ConvertedType::MAP | ConvertedType::MAP_KEY_VALUE) => "a map",
        _ => "a struct",
    }
}

/// Find the top-level column `name` (chosen by config key `key`) and check that its type is one of
/// `allowed`, described as `expected`.
fn find_column<'a>(
    file: &Path,
    schema: &SchemaDescriptor,
    name: &'a str,
    key: &'static str,
    allowed: &[Kind],
    expected: &str,
) -> Result<Column<'a>> {
    let fields = schema.root_schema().get_fields();
    let present = || fields.iter().map(|f| format!("`{}`", f.name())).collect::<Vec<_>>().join(", ");
    let Some(field) = fields.iter().find(|f| f.name() == name) else {
        return Err(bad(
            file,
            0,
            format!("no column `{name}` ({key}); the file's columns are {}; set `{key}` in [data]", present()),
        ));
    };
    let wrong = |what: String| bad(file, 0, format!("column `{name}` ({key}) is {what}; expected {expected}"));
    if field.is_group() {
        return Err(wrong(group_shape(field).into()));
    }
    if field.get_basic_info().has_repetition() && field.get_basic_info().repetition() == Repetition::REPEATED {
        return Err(wrong("a repeated field (a list)".into()));
    }
    let found = schema.columns().iter().position(|c| c.path().parts() == [name]);
    let Some(leaf) = found else {
        return Err(bad(file, 0, format!("column `{name}` ({key}) has no leaf in the schema")));
    };
    let d = schema.column(leaf);
    match kind_of(&d) {
        Some(kind) if allowed.contains(&kind) && d.max_rep_level() == 0 => {
            Ok(Column { name, key, leaf, kind, max_def: d.max_def_level() })
        }
        _ => Err(wrong(format!("of type {}", describe(&d)))),
    }
}

/// Read `file`'s rows into `out`, one row group at a time.
fn read_file(
    file: &Path,
    columns: &Columns,
    shard: Option<(usize, std::sync::Arc<Path>)>,
    out: &mut Vec<Record>,
) -> Result<()> {
    let handle = File::open(file).map_err(|e| Error::io(file, e))?;
    let unreadable = |e: String| bad(file, 0, format!("not a readable Parquet file (truncated or corrupt?): {e}"));
    let reader =
        guarded(|| SerializedFileReader::new(handle)).map_err(unreadable)?.map_err(|e| unreadable(e.to_string()))?;
    let schema = reader.metadata().file_metadata().schema_descr();
    let has = |n: &str| schema.root_schema().get_fields().iter().any(|f| f.name() == n);
    let prompt_name = match &columns.prompt {
        Some(p) => p.as_str(),
        None => DEFAULT_PROMPT_COLUMNS.into_iter().find(|n| has(n)).unwrap_or(DEFAULT_PROMPT_COLUMNS[0]),
    };
    let answer_name = columns.answer.as_deref().unwrap_or(DEFAULT_ANSWER_COLUMN);
    let prompt = find_column(file, schema, prompt_name, "prompt_column", &[Kind::Text], "strings")?;
    let answer = find_column(
        file,
        schema,
        answer_name,
        "answer_column",
        &[Kind::Text, Kind::Int { unsigned: false }, Kind::Int { unsigned: true }, Kind::Float],
        "strings, integers or floats",
    )?;
    let groups = reader.num_row_groups();
    let mut first_row = 0usize;
    for g in 0..groups {
        let group = |msg: String| bad(file, 0, format!("row group {} of {groups}: {msg}", g + 1));
        let at = |row: usize, col: &Column, msg: String| {
            bad(file, row, format!("row group {} of {groups}, column `{}` ({}): {msg}", g + 1, col.name, col.key))
        };
        let rg = reader.get_row_group(g).map_err(|e| group(format!("cannot read the row group: {e}")))?;
        let rows = usize::try_from(rg.metadata().num_rows())
            .map_err(|_| group(format!("invalid row count {}", rg.metadata().num_rows())))?;
        let mut texts = [Vec::new(), Vec::new()];
        for (col, text) in [&prompt, &answer].into_iter().zip(&mut texts) {
            let decoded = guarded(|| read_column(rg.as_ref(), col, rows))
                .unwrap_or_else(|why| Err((None, format!("corrupt column chunk: {why}"))));
            *text = decoded.map_err(|(row, msg)| {
                let row = row.map_or(0, |r| first_row + r + 1);
                at(row, col, if row > 0 { format!("row {row}: {msg}") } else { msg })
            })?;
        }
        let [prompts, answers] = texts;
        out.extend(prompts.into_iter().zip(answers).enumerate().map(|(i, (prompt, answer))| Record {
            prompt,
            answer,
            solution: None,
            line: first_row + i + 1,
            shard: shard.clone(),
            extra: serde_json::Map::new(),
        }));
        first_row += rows;
    }
    Ok(())
}

/// A column's values in one row group; errors carry the 0-based row within the group, if any.
type ColumnResult = std::result::Result<Vec<String>, (Option<usize>, String)>;

/// Run a step of the `parquet` crate, turning a panic into an error message. The crate (60.1) can
/// panic on corrupt data (e.g. an out-of-range slice when a dictionary page ends inside a
/// length prefix, found by tests/parquet.rs's byte mutations); a bad file must be a load error
/// naming the file, row group and column, not a crash. Nothing the step touched outlives it: the
/// reader and buffers of a failed step are dropped and its error ends the load. (The panic hook
/// still prints the crate's message; a `panic = "abort"` build would abort instead.)
fn guarded<T>(step: impl FnOnce() -> T) -> std::result::Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(step)).map_err(|payload| {
        let why = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        format!("the Parquet decoder failed ({why})")
    })
}

/// Read `col` from row group `rg` (`rows` rows) as text; a null is an error.
fn read_column(rg: &dyn RowGroupReader, col: &Column, rows: usize) -> ColumnResult {
    let chunks = rg.metadata().num_columns();
    if col.leaf >= chunks {
        return Err((None, format!("the row group has {chunks} column chunks, the schema {} or more", col.leaf + 1)));
    }
    let chunk = rg.metadata().column(col.leaf);
    match chunk.compression() {
        Compression::UNCOMPRESSED | Compression::SNAPPY | Compression::ZSTD(_) | Compression::GZIP(_) => {}
        other => {
            let codec = other.to_string();
            let codec = codec.split('(').next().unwrap_or_default();
            return Err((
                None,
                format!(
                    "compressed with {codec}, which arbor does not decode (it reads uncompressed, SNAPPY, ZSTD and GZIP \
                     chunks); rewrite the file, e.g. pyarrow.parquet.write_table(table, path, compression=\"snappy\")"
                ),
            ));
        }
    }
    let reader = rg.get_column_reader(col.leaf).map_err(|e| (None, e.to_string()))?;
    let (max_def, unsigned) = (col.max_def, col.kind == Kind::Int { unsigned: true });
    let finite =
        |x: f64, text: String| if x.is_finite() { Ok(text) } else { Err(format!("{x} is not a finite answer")) };
    match (reader, col.kind) {
        (ColumnReader::ByteArrayColumnReader(r), Kind::Text) => {
            values(r, rows, max_def, |v| v.as_utf8().map(str::to_owned).map_err(|e| format!("not UTF-8 text: {e}")))
        }
        (ColumnReader::Int32ColumnReader(r), Kind::Int { .. }) => {
            values(r, rows, max_def, |&v| Ok(if unsigned { (v as u32).to_string() } else { v.to_string() }))
        }
        (ColumnReader::Int64ColumnReader(r), Kind::Int { .. }) => {
            values(r, rows, max_def, |&v| Ok(if unsigned { (v as u64).to_string() } else { v.to_string() }))
        }
        (ColumnReader::FloatColumnReader(r), Kind::Float) => {
            values(r, rows, max_def, |&v| finite(v.into(), v.to_string()))
        }
        (ColumnReader::DoubleColumnReader(r), Kind::Float) => values(r, rows, max_def, |&v| finite(v, v.to_string())),
        (_, kind) => Err((None, format!("the column reader does not match the schema's {kind:?} column"))),
    }
}

/// Decode `rows` values with `reader`, `BATCH` at a time, each through `text`.
fn values<T: DataType>(
    mut reader: ColumnReaderImpl<T>,
    rows: usize,
    max_def: i16,
    text: impl Fn(&T::T) -> std::result::Result<String, String>,
) -> ColumnResult {
    let mut out: Vec<String> = Vec::new();
    let (mut defs, mut vals) = (Vec::new(), Vec::new());
    while out.len() < rows {
        defs.clear();
        vals.clear();
        let want = (rows - out.len()).min(BATCH);
        let (records, _, _) = reader
            .read_records(want, Some(&mut defs), None, &mut vals)
            .map_err(|e| (None, format!("{e} (after {} rows)", out.len())))?;
        if records == 0 {
            return Err((None, format!("the column chunk ends after {} of the row group's {rows} rows", out.len())));
        }
        let mut next = vals.iter();
        for i in 0..records {
            let row = out.len();
            let present = max_def == 0 || defs.get(i).is_some_and(|&d| d == max_def);
            if !present {
                return Err((Some(row), "null value".into()));
            }
            let Some(v) = next.next() else {
                return Err((Some(row), "fewer values than rows in the column chunk".into()));
            };
            out.push(text(v).map_err(|msg| (Some(row), msg))?);
        }
    }
    Ok(out)
}
