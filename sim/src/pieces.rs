//! Sweep pieces: one self-describing JSON file per sweep point, written by the tasks of a job array and
//! merged back into the sweep's table and plots.
//!
//! A piece `DIR/point-000007.json` holds point 7: the sweep's identity ([`SweepInfo`] and its
//! fingerprint), which task wrote it, the result, and a checksum over fingerprint, index and result.
//! Floats are written exactly: finite values as JSON numbers in shortest round-trip form (read back with
//! Rust's correctly rounded parser, not serde_json's approximate one), `inf`/`-inf`/`NaN` as strings.
//! Pieces are written to a hidden temporary file (`.point-000007.json.tmp-...`) and renamed, so a killed
//! task leaves either a whole piece or none; [`merge`] ignores the temporary files.

use crate::sweep::{Fnv128, SweepInfo, SweepPoint, SweepSpec};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// `format` of a piece.
pub const PIECE_FORMAT: &str = "arbor-sim-sweep-piece/1";

/// Pieces larger than this are refused unread (a real one is about 1 KB).
pub const PIECE_BYTES_MAX: u64 = 1 << 20;

/// File name of the piece of point `index`.
pub fn piece_name(index: usize) -> String {
    format!("point-{index:06}.json")
}

/// `Some(Ok(index))` for `point-<digits>.json`, `Some(Err(..))` for another `point-*.json` name,
/// `None` for names that are not pieces at all.
pub fn parse_piece_name(name: &str) -> Option<Result<usize, String>> {
    let digits = name.strip_prefix("point-")?.strip_suffix(".json")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Err("not a piece name: expected point-<index>.json".into()));
    }
    Some(digits.parse::<usize>().map_err(|_| format!("point index {digits} is out of range")))
}

/// Exact (de)serialisation of one `f64`, for `#[serde(with = ...)]`.
pub mod exact {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_json::value::RawValue;

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else if v.is_nan() {
            s.serialize_str("NaN")
        } else if *v > 0.0 {
            s.serialize_str("inf")
        } else {
            s.serialize_str("-inf")
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        let raw = Box::<RawValue>::deserialize(d)?;
        super::parse_exact(raw.get()).map_err(D::Error::custom)
    }
}

/// Exact (de)serialisation of a `Vec<f64>`, for `#[serde(with = ...)]`.
pub mod exact_vec {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::value::RawValue;

    struct Exact(f64);
    impl Serialize for Exact {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            super::exact::serialize(&self.0, s)
        }
    }

    pub fn serialize<S: Serializer>(v: &[f64], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|&x| Exact(x)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        let raw = Vec::<Box<RawValue>>::deserialize(d)?;
        raw.iter().map(|r| super::parse_exact(r.get()).map_err(D::Error::custom)).collect()
    }
}

/// The text of a JSON number (or of the strings `"inf"`, `"-inf"`, `"NaN"`) as the exact `f64`.
fn parse_exact(text: &str) -> Result<f64, String> {
    let text = text.trim();
    if text.starts_with('"') {
        return match serde_json::from_str::<String>(text).as_deref() {
            Ok("inf") => Ok(f64::INFINITY),
            Ok("-inf") => Ok(f64::NEG_INFINITY),
            Ok("NaN") => Ok(f64::NAN),
            _ => Err(format!("{text}: expected a number, \"inf\", \"-inf\" or \"NaN\"")),
        };
    }
    // A JSON number (grammar checked by serde_json while reading the document) is valid input for
    // Rust's correctly rounded float parser.
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(format!("{text}: expected a finite number")),
    }
}

/// The result of one point, floats exact.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PieceResult {
    pub gpus: u32,
    #[serde(with = "exact")]
    pub alpha: f64,
    #[serde(with = "exact")]
    pub step_time_s_mean: f64,
    #[serde(with = "exact")]
    pub samples_per_s: f64,
    #[serde(with = "exact")]
    pub tokens_per_s: f64,
    #[serde(with = "exact")]
    pub staleness_mean: f64,
    #[serde(with = "exact")]
    pub inference_busy_fraction: f64,
    pub trace_hash: String,
}

impl From<&SweepPoint> for PieceResult {
    fn from(p: &SweepPoint) -> Self {
        PieceResult {
            gpus: p.gpus,
            alpha: p.alpha,
            step_time_s_mean: p.step_time_s_mean,
            samples_per_s: p.samples_per_s,
            tokens_per_s: p.tokens_per_s,
            staleness_mean: p.staleness_mean,
            inference_busy_fraction: p.inference_busy_fraction,
            trace_hash: p.trace_hash.clone(),
        }
    }
}

impl From<&PieceResult> for SweepPoint {
    fn from(p: &PieceResult) -> Self {
        SweepPoint {
            gpus: p.gpus,
            alpha: p.alpha,
            step_time_s_mean: p.step_time_s_mean,
            samples_per_s: p.samples_per_s,
            tokens_per_s: p.tokens_per_s,
            staleness_mean: p.staleness_mean,
            inference_busy_fraction: p.inference_busy_fraction,
            trace_hash: p.trace_hash.clone(),
        }
    }
}

/// One piece file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Piece {
    /// [`PIECE_FORMAT`].
    pub format: String,
    /// [`SweepInfo::fingerprint`] of `sweep`.
    pub fingerprint: String,
    /// Point index in the sweep (`gpus`-major).
    pub index: usize,
    /// The array task that computed it (informative: the result does not depend on it).
    pub task: usize,
    pub tasks: usize,
    pub sweep: SweepInfo,
    pub result: PieceResult,
    /// Hash of fingerprint, index and result (exact bits).
    pub checksum: String,
}

impl Piece {
    /// The piece of point `index` computed by task `task` of `tasks`.
    pub fn new(info: &SweepInfo, index: usize, task: usize, tasks: usize, point: &SweepPoint) -> Piece {
        let fingerprint = info.fingerprint();
        let result = PieceResult::from(point);
        let checksum = checksum(&fingerprint, index, &result);
        Piece {
            format: PIECE_FORMAT.to_string(),
            fingerprint,
            index,
            task,
            tasks,
            sweep: info.clone(),
            result,
            checksum,
        }
    }

    /// Pretty JSON with a final newline.
    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)? + "\n")
    }

    /// Parse and check one piece on its own (not against other pieces). `name_index` is the index its
    /// file name gives. Errors say what is wrong, without the file name (the caller adds it).
    pub fn from_bytes(bytes: &[u8], name_index: Option<usize>) -> Result<Piece, String> {
        let doc: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
        match doc.get("format") {
            Some(serde_json::Value::String(f)) if f == PIECE_FORMAT => {}
            Some(f) => {
                return Err(format!(
                    "format = {f}: expected {PIECE_FORMAT:?} (not a sweep piece, or one from an incompatible \
                     arbor-sim)"
                ))
            }
            None => return Err(format!("no \"format\" key: not a sweep piece (expected format {PIECE_FORMAT:?})")),
        }
        let p: Piece = serde_json::from_slice(bytes).map_err(|e| format!("not a valid sweep piece: {e}"))?;
        let info = &p.sweep;
        let grid = info.gpus.len().checked_mul(info.alpha.len());
        if grid != Some(info.points) || info.points == 0 || info.points > crate::sweep::POINTS_MAX {
            return Err(format!(
                "sweep.points = {} but sweep.gpus ({} values) x sweep.alpha ({} values) is {} (at most {} allowed)",
                info.points,
                info.gpus.len(),
                info.alpha.len(),
                grid.map(|g| g.to_string()).unwrap_or_else(|| "too large".into()),
                crate::sweep::POINTS_MAX
            ));
        }
        let fp = info.fingerprint();
        if p.fingerprint != fp {
            return Err(format!(
                "fingerprint = {:?} does not match the sweep parameters the piece records ({fp}): edited or corrupt",
                p.fingerprint
            ));
        }
        if let Some(n) = name_index {
            if n != p.index {
                return Err(format!("index = {}, but the file name is for point {n}", p.index));
            }
        }
        let Some((g, a)) = info.point(p.index) else {
            return Err(format!("index = {}: out of range, the sweep has {} points", p.index, info.points));
        };
        if p.result.gpus != g || p.result.alpha.to_bits() != a.to_bits() {
            return Err(format!(
                "result is for gpus={}, alpha={}, but point {} of the sweep is gpus={g}, alpha={a}",
                p.result.gpus, p.result.alpha, p.index
            ));
        }
        if p.tasks == 0 || p.task >= p.tasks {
            return Err(format!("task = {}, tasks = {}: task must be < tasks", p.task, p.tasks));
        }
        if p.checksum != checksum(&p.fingerprint, p.index, &p.result) {
            return Err(format!("checksum = {:?} does not match the result: edited or corrupt", p.checksum));
        }
        Ok(p)
    }
}

fn checksum(fingerprint: &str, index: usize, r: &PieceResult) -> String {
    let mut h = Fnv128::default();
    h.str(fingerprint);
    h.u64(index as u64);
    h.u64(r.gpus as u64);
    for v in [r.alpha, r.step_time_s_mean, r.samples_per_s, r.tokens_per_s, r.staleness_mean, r.inference_busy_fraction]
    {
        h.u64(v.to_bits());
    }
    h.str(&r.trace_hash);
    h.hex()
}

/// Write `bytes` to `path` through a hidden temporary file in the same directory (flushed to disk) and
/// a rename: readers see the old file or the whole new one, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().with_context(|| format!("{}: not a file path", path.display()))?;
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let tmp = dir.join(format!(".{}.tmp-{}-{nanos}", name.to_string_lossy(), std::process::id()));
    let res = std::fs::File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        bail!("cannot write {}: {e}", path.display());
    }
    Ok(())
}

/// Read and check the piece at `path` (size-limited); errors name the file.
pub fn read_piece(path: &Path, name_index: Option<usize>) -> Result<Piece, String> {
    let file = path.display();
    let len = std::fs::metadata(path).map_err(|e| format!("{file}: cannot read: {e}"))?.len();
    if len > PIECE_BYTES_MAX {
        return Err(format!("{file}: {len} bytes, too large for a sweep piece (at most {PIECE_BYTES_MAX})"));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("{file}: cannot read: {e}"))?;
    Piece::from_bytes(&bytes, name_index).map_err(|e| format!("{file}: {e}"))
}

/// Piece files and leftover temporary files of one directory, sorted by name.
struct Listing {
    pieces: Vec<(PathBuf, Result<usize, String>)>,
    temporary: Vec<PathBuf>,
}

fn list_dir(dir: &Path) -> Result<Listing> {
    let rd = std::fs::read_dir(dir).with_context(|| format!("cannot read directory {}", dir.display()))?;
    let mut names = Vec::new();
    for entry in rd {
        let entry = entry.with_context(|| format!("cannot read directory {}", dir.display()))?;
        // Names that are not UTF-8 are never pieces (piece names are ASCII).
        if let Ok(name) = entry.file_name().into_string() {
            names.push(name);
        }
    }
    names.sort();
    let mut l = Listing { pieces: Vec::new(), temporary: Vec::new() };
    for name in names {
        if let Some(idx) = parse_piece_name(&name) {
            l.pieces.push((dir.join(&name), idx));
        } else if name.starts_with(".point-") && name.contains(".json.tmp-") {
            l.temporary.push(dir.join(&name));
        }
    }
    Ok(l)
}

/// Before a task writes pieces into `dir`: refuse if `dir` holds pieces of another sweep (checked on the
/// first piece there and on each piece this task would overwrite), naming the file. Unreadable pieces
/// are left for [`merge`] to report (this task overwrites its own).
pub fn check_out_dir(dir: &Path, info: &SweepInfo, indices: &[usize]) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let fp = info.fingerprint();
    let listing = list_dir(dir)?;
    let first = listing.pieces.iter().find_map(|(p, i)| i.as_ref().ok().map(|&i| (p.clone(), i)));
    let own = indices.iter().map(|&i| (dir.join(piece_name(i)), i)).filter(|(p, _)| p.exists());
    for (path, i) in first.into_iter().chain(own) {
        if let Ok(p) = read_piece(&path, Some(i)) {
            if p.fingerprint != fp {
                bail!(
                    "{} is a piece of another sweep ({}); this sweep is {}. Use a fresh --out directory \
                     or remove the old pieces",
                    path.display(),
                    p.sweep.describe(),
                    info.describe()
                );
            }
        }
    }
    Ok(())
}

/// Run the points of task `task` of `tasks` ([`crate::sweep::task_points`]). With `out`, first refuse a
/// directory holding another sweep's pieces ([`check_out_dir`]), then write each point's piece as soon
/// as it is computed. Returns the points (in index order) and the pieces written.
pub fn run_task(
    spec: &SweepSpec,
    task: usize,
    tasks: usize,
    out: Option<&Path>,
) -> Result<(Vec<SweepPoint>, Vec<PathBuf>)> {
    let info = spec.info();
    let indices = crate::sweep::task_points(spec.len(), task, tasks);
    if let Some(dir) = out {
        check_out_dir(dir, &info, &indices)?;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create --out directory {}", dir.display()))?;
    }
    let mut written = Vec::new();
    let points = spec.run_points(&indices, |i, p| {
        if let Some(dir) = out {
            let path = dir.join(piece_name(i));
            write_atomic(&path, Piece::new(&info, i, task, tasks, p).to_json()?.as_bytes())?;
            written.push(path);
        }
        Ok(())
    })?;
    Ok((points, written))
}

/// A merged sweep.
#[derive(Debug, Clone)]
pub struct Merged {
    pub info: SweepInfo,
    pub fingerprint: String,
    /// All points in index order.
    pub points: Vec<SweepPoint>,
    /// Piece files read.
    pub files: Vec<PathBuf>,
    /// Leftover temporary files (a task killed while writing), ignored.
    pub temporary: Vec<PathBuf>,
}

/// `a, b, c` for up to `max` items, then `and N more`.
fn some<T: std::fmt::Display>(items: &[T], max: usize) -> String {
    let mut s = items.iter().take(max).map(|x| x.to_string()).collect::<Vec<_>>().join(", ");
    if items.len() > max {
        let _ = write!(s, " and {} more", items.len() - max);
    }
    s
}

/// `0-3, 7, 9-10` for sorted indices.
fn ranges(sorted: &[usize]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j + 1 < sorted.len() && sorted[j + 1] == sorted[j] + 1 {
            j += 1;
        }
        parts.push(if i == j { sorted[i].to_string() } else { format!("{}-{}", sorted[i], sorted[j]) });
        i = j + 1;
    }
    parts.join(", ")
}

/// Read every piece under `dirs` and rebuild the sweep. Refuses, naming the files or points: unreadable
/// or inconsistent pieces, pieces of different sweeps, a point in more than one piece, missing points.
pub fn merge(dirs: &[PathBuf]) -> Result<Merged> {
    if dirs.is_empty() {
        bail!("--merge: no directory given");
    }
    let mut listed = Vec::new();
    let mut temporary = Vec::new();
    for d in dirs {
        let l = list_dir(d)?;
        listed.extend(l.pieces);
        temporary.extend(l.temporary);
    }
    let where_ = some(&dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>(), 8);
    if listed.is_empty() {
        let tmp = if temporary.is_empty() {
            String::new()
        } else {
            format!(" (only {} unfinished temporary file(s), e.g. {})", temporary.len(), temporary[0].display())
        };
        bail!("no sweep pieces (point-<index>.json) in {where_}{tmp}");
    }

    let mut bad = Vec::new();
    let mut pieces = Vec::new();
    for (path, idx) in &listed {
        match idx {
            Err(e) => bad.push(format!("{}: {e}", path.display())),
            Ok(i) => match read_piece(path, Some(*i)) {
                Ok(p) => pieces.push((path.clone(), p)),
                Err(e) => bad.push(e),
            },
        }
    }
    if !bad.is_empty() {
        bail!(
            "cannot merge {where_}: {} of {} piece files are unusable:\n  {}",
            bad.len(),
            listed.len(),
            bad.join("\n  ")
        );
    }

    // One sweep only.
    let mut groups: Vec<(String, SweepInfo, Vec<String>)> = Vec::new();
    for (path, p) in &pieces {
        let file = path.display().to_string();
        match groups.iter_mut().find(|g| g.0 == p.fingerprint) {
            Some(g) => g.2.push(file),
            None => groups.push((p.fingerprint.clone(), p.sweep.clone(), vec![file])),
        }
    }
    if groups.len() > 1 {
        groups.sort_by_key(|g| std::cmp::Reverse(g.2.len()));
        let mut msg = format!("{where_} holds pieces of {} different sweeps; refusing to mix them:", groups.len());
        for (fp, info, files) in &groups {
            let _ =
                write!(msg, "\n  fingerprint {fp} ({}): {} piece(s): {}", info.describe(), files.len(), some(files, 6));
        }
        bail!(msg);
    }
    let (fingerprint, info, _) = groups.swap_remove(0);

    // Each point once.
    let mut by_index: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (k, (_, p)) in pieces.iter().enumerate() {
        by_index.entry(p.index).or_default().push(k);
    }
    let dups: Vec<String> = by_index
        .iter()
        .filter(|(_, ks)| ks.len() > 1)
        .map(|(i, ks)| {
            let (g, a) = info.point(*i).unwrap_or_default();
            let files: Vec<String> = ks.iter().map(|&k| pieces[k].0.display().to_string()).collect();
            format!("point {i} (gpus={g}, alpha={a}) is in {}", files.join(" and "))
        })
        .collect();
    if !dups.is_empty() {
        bail!("duplicate pieces in {where_} (remove all but one of each):\n  {}", dups.join("\n  "));
    }
    let missing: Vec<usize> = (0..info.points).filter(|i| !by_index.contains_key(i)).collect();
    if !missing.is_empty() {
        let mut msg = format!("{where_}: {} of {} points missing: {}", missing.len(), info.points, ranges(&missing));
        let named: Vec<String> =
            missing.iter().filter_map(|&i| info.point(i).map(|(g, a)| format!("{i}: gpus={g} alpha={a}"))).collect();
        let _ = write!(msg, " ({})", some(&named, 8));
        let tasks: Vec<usize> = pieces.iter().map(|(_, p)| p.tasks).collect();
        if let Some(&n) = tasks.first().filter(|&&n| tasks.iter().all(|&t| t == n)) {
            let mut owners: Vec<usize> = missing.iter().map(|i| i % n).collect();
            owners.dedup();
            owners.sort_unstable();
            owners.dedup();
            let _ = write!(
                msg,
                ". With {n} tasks (round-robin) they belong to task(s) {}; rerun those (--task T --tasks {n}, or \
                 sbatch --array={} with TASKS={n}) and merge again",
                ranges(&owners),
                owners.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(",")
            );
        }
        if !temporary.is_empty() {
            let _ = write!(
                msg,
                ". Unfinished temporary files (a task killed while writing): {}",
                some(&temporary.iter().map(|t| t.display().to_string()).collect::<Vec<_>>(), 4)
            );
        }
        bail!(msg);
    }
    let points = by_index.values().map(|ks| SweepPoint::from(&pieces[ks[0]].1.result)).collect();
    Ok(Merged { info, fingerprint, points, files: pieces.into_iter().map(|(p, _)| p).collect(), temporary })
}
