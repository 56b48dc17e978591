//! The HDF5 implementation of trajectory dumps (cargo feature `hdf5`): the datasets of a dump (`Columns`),
//! how they are created, opened, read, grown and cut, the file options and the file attributes. Reading a
//! whole dump or its summary is in `read`, the append-only writer in `write`.

mod read;
mod write;

pub(super) use read::{read_summary, read_trajectories};
pub(super) use write::Writer;

use super::summary::complete_samples;
use super::FORMAT_VERSION;
use crate::error::{Error, Result};
use hdf5::types::{TypeDescriptor, VarLenUnicode};
use hdf5::{Dataset, File, H5Type};
use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;

/// Chunk length (elements) of the per-sample and offset datasets.
const SAMPLE_CHUNK: usize = 1024;
/// Chunk length (elements) of the flat token-level datasets.
const TOKEN_CHUNK: usize = 16384;
const DEFLATE_LEVEL: u8 = 4;

fn h5err(path: &Path, what: &str, e: hdf5::Error) -> Error {
    Error::format(path, format!("{what}: {e}"))
}

/// The twelve datasets of a dump.
struct Columns {
    step: Dataset,
    policy_version: Dataset,
    prompt_id: Dataset,
    sample_index: Dataset,
    reward: Dataset,
    prompt_offsets: Dataset,
    response_offsets: Dataset,
    prompt_tokens: Dataset,
    response_tokens: Dataset,
    behav_logp: Dataset,
    logp: Dataset,
    advantages: Dataset,
    branch_parent: Dataset,
    branch_token: Dataset,
    step_index: Dataset,
    fci: Dataset,
    waad: Dataset,
    fai: Dataset,
}

fn create_column<T: H5Type>(file: &File, path: &Path, name: &str, chunk: usize) -> Result<Dataset> {
    file.new_dataset::<T>()
        .chunk(chunk)
        .shuffle()
        .deflate(DEFLATE_LEVEL)
        .shape(0..)
        .create(name)
        .map_err(|e| h5err(path, &format!("creating dataset `{name}`"), e))
}

/// Open dataset `name`, checking that it is 1-D with elements of type `T`.
fn open_column<T: H5Type>(file: &File, path: &Path, name: &str) -> Result<Dataset> {
    if !file.link_exists(name) {
        return Err(Error::format(path, format!("dataset `{name}` not found (not an arbor trajectory dump?)")));
    }
    let ds = file.dataset(name).map_err(|e| h5err(path, &format!("dataset `{name}`"), e))?;
    let found = ds.dtype().and_then(|t| t.to_descriptor()).map_err(|e| h5err(path, &format!("dataset `{name}`"), e))?;
    let want = T::type_descriptor();
    if found != want {
        return Err(Error::format(path, format!("dataset `{name}` has element type {found}, expected {want}")));
    }
    if ds.ndim() != 1 {
        return Err(Error::format(path, format!("dataset `{name}` has shape {:?}, expected 1-D", ds.shape())));
    }
    Ok(ds)
}

fn read_column<T: H5Type>(ds: &Dataset, path: &Path, name: &str) -> Result<Vec<T>> {
    ds.read_raw::<T>().map_err(|e| h5err(path, &format!("reading dataset `{name}`"), e))
}

/// Write `data` at `at..at + data.len()`, growing the dataset to that length.
fn write_at<T: H5Type>(ds: &Dataset, path: &Path, name: &str, at: u64, data: &[T]) -> Result<()> {
    let end = at as usize + data.len();
    ds.resize(end).map_err(|e| h5err(path, &format!("resizing dataset `{name}`"), e))?;
    if !data.is_empty() {
        ds.write_slice(data, at as usize..end).map_err(|e| h5err(path, &format!("writing dataset `{name}`"), e))?;
    }
    Ok(())
}

fn truncate(ds: &Dataset, path: &Path, name: &str, len: u64) -> Result<()> {
    ds.resize(len as usize).map_err(|e| h5err(path, &format!("resizing dataset `{name}`"), e))
}

impl Columns {
    fn create(file: &File, path: &Path) -> Result<Self> {
        Ok(Columns {
            step: create_column::<u64>(file, path, "step", SAMPLE_CHUNK)?,
            policy_version: create_column::<u64>(file, path, "policy_version", SAMPLE_CHUNK)?,
            prompt_id: create_column::<u64>(file, path, "prompt_id", SAMPLE_CHUNK)?,
            sample_index: create_column::<u32>(file, path, "sample_index", SAMPLE_CHUNK)?,
            reward: create_column::<f32>(file, path, "reward", SAMPLE_CHUNK)?,
            prompt_offsets: create_column::<u64>(file, path, "prompt_offsets", SAMPLE_CHUNK)?,
            response_offsets: create_column::<u64>(file, path, "response_offsets", SAMPLE_CHUNK)?,
            prompt_tokens: create_column::<u32>(file, path, "prompt_tokens", TOKEN_CHUNK)?,
            response_tokens: create_column::<u32>(file, path, "response_tokens", TOKEN_CHUNK)?,
            behav_logp: create_column::<f32>(file, path, "behav_logp", TOKEN_CHUNK)?,
            logp: create_column::<f32>(file, path, "logp", TOKEN_CHUNK)?,
            advantages: create_column::<f32>(file, path, "advantages", TOKEN_CHUNK)?,
            branch_parent: create_column::<i64>(file, path, "branch_parent", SAMPLE_CHUNK)?,
            branch_token: create_column::<i64>(file, path, "branch_token", SAMPLE_CHUNK)?,
            step_index: create_column::<u32>(file, path, "step_index", TOKEN_CHUNK)?,
            fci: create_column::<f32>(file, path, "fci", TOKEN_CHUNK)?,
            waad: create_column::<f32>(file, path, "waad", TOKEN_CHUNK)?,
            fai: create_column::<f32>(file, path, "fai", TOKEN_CHUNK)?,
        })
    }

    fn open(file: &File, path: &Path) -> Result<Self> {
        Ok(Columns {
            step: open_column::<u64>(file, path, "step")?,
            policy_version: open_column::<u64>(file, path, "policy_version")?,
            prompt_id: open_column::<u64>(file, path, "prompt_id")?,
            sample_index: open_column::<u32>(file, path, "sample_index")?,
            reward: open_column::<f32>(file, path, "reward")?,
            prompt_offsets: open_column::<u64>(file, path, "prompt_offsets")?,
            response_offsets: open_column::<u64>(file, path, "response_offsets")?,
            prompt_tokens: open_column::<u32>(file, path, "prompt_tokens")?,
            response_tokens: open_column::<u32>(file, path, "response_tokens")?,
            behav_logp: open_column::<f32>(file, path, "behav_logp")?,
            logp: open_column::<f32>(file, path, "logp")?,
            advantages: open_column::<f32>(file, path, "advantages")?,
            branch_parent: open_column::<i64>(file, path, "branch_parent")?,
            branch_token: open_column::<i64>(file, path, "branch_token")?,
            step_index: open_column::<u32>(file, path, "step_index")?,
            fci: open_column::<f32>(file, path, "fci")?,
            waad: open_column::<f32>(file, path, "waad")?,
            fai: open_column::<f32>(file, path, "fai")?,
        })
    }

    fn per_sample_lens(&self) -> [usize; 7] {
        [
            self.step.size(),
            self.policy_version.size(),
            self.prompt_id.size(),
            self.sample_index.size(),
            self.reward.size(),
            self.branch_parent.size(),
            self.branch_token.size(),
        ]
    }

    /// Length reached by all the response-aligned flat arrays.
    fn response_flat_len(&self) -> usize {
        [
            self.response_tokens.size(),
            self.behav_logp.size(),
            self.logp.size(),
            self.advantages.size(),
            self.step_index.size(),
            self.fci.size(),
            self.waad.size(),
            self.fai.size(),
        ]
        .into_iter()
        .min()
        .unwrap_or(0)
    }

    /// Read the offsets and return them truncated to the complete samples (`n + 1` entries each).
    fn complete_offsets(&self, path: &Path) -> Result<(Vec<u64>, Vec<u64>)> {
        let mut po = read_column::<u64>(&self.prompt_offsets, path, "prompt_offsets")?;
        let mut ro = read_column::<u64>(&self.response_offsets, path, "response_offsets")?;
        let n = complete_samples(
            path,
            &self.per_sample_lens(),
            &po,
            &ro,
            self.prompt_tokens.size(),
            self.response_flat_len(),
        )?;
        po.truncate(n + 1);
        ro.truncate(n + 1);
        Ok((po, ro))
    }
}

/// Options for every file this module opens: no file locking. HDF5 1.10 otherwise holds an exclusive lock
/// for as long as a file is open for writing, so no other reader (h5py, h5dump, `arbor inspect`) could open
/// a dump while its run goes on, and a child process that inherits the descriptor keeps the lock after the
/// writer closed the file. What readers see is consistent between appends, since each append ends with a
/// flush. The cost: two writers on one file are not detected (a run owns its run directory).
fn options() -> hdf5::file::FileBuilder {
    let mut b = File::with_options();
    b.with_fapl(|p| p.file_locking(false));
    b
}

/// Options of the writer: [`options`] and the HDF5 1.10 file format (superblock version 3), the first
/// in which a file can be appended in SWMR mode (single writer, multiple readers), whose ordered
/// metadata flushes leave a file that a kill at any moment does not make unreadable.
fn write_options() -> hdf5::file::FileBuilder {
    let mut b = options();
    b.with_fapl(|p| p.libver_v110());
    b
}

/// An I/O error naming `path` when it cannot be stat'ed (missing, permission denied), before HDF5's
/// less readable message.
fn check_exists(path: &Path) -> Result<()> {
    std::fs::metadata(path).map(|_| ()).map_err(|e| Error::io(path, e))
}

fn open_read(path: &Path) -> Result<File> {
    check_exists(path)?;
    // A file a writer has open in SWMR mode (or left so, killed) opens in SWMR read mode only.
    // HDF5 refuses to open a file twice in one process with different locking settings: when something else
    // in this process has it open with the default (locking) settings, open it as that one did.
    options().open(path).or_else(|first| {
        options()
            .open_as(path, hdf5::file::OpenMode::ReadSWMR)
            .or_else(|_| File::open(path))
            .map_err(|_| h5err(path, "cannot open as an HDF5 file", first))
    })
}

// (HDF5 ≥ 1.10.2; the -sys crate does not bind it)
extern "C" {
    /// Sets the file's end of allocation to max(EOA, EOF) + `increment`.
    fn H5Fincrement_filesize(file_id: hdf5_sys::h5i::hid_t, increment: hdf5_sys::h5::hsize_t) -> hdf5_sys::h5::herr_t;
}

/// Repair what a writer killed in SWMR mode leaves in the superblock, as `h5clear -s --increment=0`
/// does: the "open for writing" flags, which keep the file from opening for writing, and an end of
/// allocation (EOA) older than the data written after it, which a writer would read as "address
/// overflow" (SWMR readers do not look at it). Opening with the file access property
/// `clear_status_flags`, raising the EOA to the file's size and closing does it; the data are not touched.
fn clear_status_flags(path: &Path) -> Result<()> {
    use hdf5_sys::{h5f, h5p};
    use std::os::unix::ffi::OsStrExt;
    let name = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::format(path, "a file name with a NUL byte"))?;
    // SAFETY: HDF5's C API under the crate's global lock (`sync`), as the crate itself calls it; the
    // name and the flag outlive the calls, and every identifier opened here is closed here.
    let closed = hdf5::sync::sync(|| unsafe {
        let fapl = h5p::H5Pcreate(*hdf5::globals::H5P_FILE_ACCESS);
        if fapl < 0 {
            return false;
        }
        let mut yes: hdf5_sys::h5::hbool_t = 1;
        let set = h5p::H5Pset_file_locking(fapl, 0, 1) >= 0
            && h5p::H5Pset(fapl, c"clear_status_flags".as_ptr(), (&mut yes as *mut hdf5_sys::h5::hbool_t).cast()) >= 0;
        let file = if set { h5f::H5Fopen(name.as_ptr(), h5f::H5F_ACC_RDWR, fapl) } else { -1 };
        h5p::H5Pclose(fapl);
        file >= 0 && (H5Fincrement_filesize(file, 0) >= 0) & (h5f::H5Fclose(file) >= 0)
    });
    match closed {
        true => Ok(()),
        false => Err(Error::format(path, "cannot clear the flags a killed writer left in the file's superblock")),
    }
}

/// Check `format_version` and read the text attributes.
fn read_attributes(file: &File, path: &Path) -> Result<(i64, String, String, BTreeMap<String, String>)> {
    let names = file.attr_names().map_err(|e| h5err(path, "listing attributes", e))?;
    if !names.iter().any(|n| n == "format_version") {
        return Err(Error::format(path, "attribute `format_version` not found (not an arbor trajectory dump?)"));
    }
    let version = file
        .attr("format_version")
        .and_then(|a| a.read_scalar::<i64>())
        .map_err(|e| h5err(path, "reading attribute `format_version`", e))?;
    if version != FORMAT_VERSION {
        let msg = format!("attribute `format_version` is {version}; this arbor reads format {FORMAT_VERSION}");
        return Err(Error::format(path, msg));
    }
    let mut attrs = BTreeMap::new();
    for name in names {
        let attr = file.attr(&name).map_err(|e| h5err(path, &format!("attribute `{name}`"), e))?;
        let desc =
            attr.dtype().and_then(|t| t.to_descriptor()).map_err(|e| h5err(path, &format!("attribute `{name}`"), e))?;
        let read_err = |e| h5err(path, &format!("reading attribute `{name}`"), e);
        let text = if !attr.is_scalar() {
            format!("({desc} array of shape {:?})", attr.shape())
        } else {
            match desc {
                TypeDescriptor::VarLenUnicode
                | TypeDescriptor::VarLenAscii
                | TypeDescriptor::FixedAscii(_)
                | TypeDescriptor::FixedUnicode(_) => {
                    attr.read_scalar::<VarLenUnicode>().map_err(read_err)?.as_str().to_owned()
                }
                TypeDescriptor::Integer(_) => attr.read_scalar::<i64>().map_err(read_err)?.to_string(),
                TypeDescriptor::Unsigned(_) => attr.read_scalar::<u64>().map_err(read_err)?.to_string(),
                TypeDescriptor::Float(_) => attr.read_scalar::<f64>().map_err(read_err)?.to_string(),
                other => format!("({other})"),
            }
        };
        attrs.insert(name, text);
    }
    let get = |k: &str| attrs.get(k).cloned().unwrap_or_default();
    Ok((version, get("arbor_version"), get("config"), attrs))
}

fn write_text_attr(file: &File, path: &Path, name: &str, value: &str) -> Result<()> {
    let v = VarLenUnicode::from_str(value)
        .map_err(|e| Error::format(path, format!("attribute `{name}`: value cannot be stored: {e}")))?;
    if file.attr_names().map_err(|e| h5err(path, "listing attributes", e))?.iter().any(|n| n == name) {
        file.delete_attr(name).map_err(|e| h5err(path, &format!("replacing attribute `{name}`"), e))?;
    }
    file.new_attr::<VarLenUnicode>()
        .create(name)
        .and_then(|a| a.write_scalar(&v))
        .map_err(|e| h5err(path, &format!("writing attribute `{name}`"), e))
}
