//! Checkpoints committed in the background. A save writes the checkpoint's files into its
//! temporary folder on the training thread (the weights and moments change at the next step);
//! the last stage — flushing each file to disk, checksumming it into the manifest, renaming the
//! folder into place and pruning the oldest (`checkpoint::commit_checkpoint`) — runs on the
//! [`Committer`]'s thread while the next step trains. At most one commit is in flight: the next
//! save and the end of the run wait for it, and its error is theirs. A process killed mid-commit
//! leaves the temporary folder, which the next start removes, and the previous checkpoint.

use crate::error::{Error, Result};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// The commit in flight of a run's checkpoints, if any.
#[derive(Default)]
pub struct Committer {
    inflight: Mutex<Option<Inflight>>,
}

/// A commit on its thread, or one that ran on the caller's (no thread could be started).
enum Inflight {
    Thread(JoinHandle<Result<PathBuf>>),
    Done(Result<PathBuf>),
}

/// A commit to run once, by whichever thread takes it.
type Once<F> = Arc<Mutex<Option<F>>>;

/// Run the commit in `once` if nobody ran it yet.
fn run_once<F: FnOnce() -> Result<PathBuf>>(once: &Once<F>) -> Result<PathBuf> {
    let commit = once.lock().unwrap_or_else(|e| e.into_inner()).take();
    commit.map_or_else(|| Err(Error::Invalid("checkpoint commit: already run".into())), |c| c())
}

impl Committer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Run `commit` on a thread of its own (on this one when no thread can be started), after
    /// the one in flight: callers [`Committer::wait`] first.
    pub(crate) fn start(&self, commit: impl FnOnce() -> Result<PathBuf> + Send + 'static) {
        let once: Once<_> = Arc::new(Mutex::new(Some(commit)));
        let theirs = once.clone();
        let spawned = std::thread::Builder::new().name("checkpoint-commit".into()).spawn(move || run_once(&theirs));
        let inflight = match spawned {
            Ok(handle) => Inflight::Thread(handle),
            Err(_) => Inflight::Done(run_once(&once)),
        };
        let mut slot = self.slot();
        debug_assert!(slot.is_none(), "a commit started while another was in flight");
        *slot = Some(inflight);
    }

    /// Wait for the commit in flight; its checkpoint's folder, or `None` when none was in flight.
    pub fn wait(&self) -> Result<Option<PathBuf>> {
        let inflight = self.slot().take();
        match inflight {
            None => Ok(None),
            Some(Inflight::Done(result)) => result.map(Some),
            Some(Inflight::Thread(handle)) => match handle.join() {
                Ok(result) => result.map(Some),
                Err(_) => Err(Error::Invalid("the checkpoint commit thread panicked".into())),
            },
        }
    }

    /// The slot of the commit in flight (a poisoned lock still holds a usable slot).
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Inflight>> {
        self.inflight.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Committer {
    /// A run that ends by an error still lets its last commit finish (the error is already on its
    /// way; the commit's own is printed).
    fn drop(&mut self) {
        if let Err(e) = self.wait() {
            eprintln!("arbor: {e}");
        }
    }
}
