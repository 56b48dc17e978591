//! SPMD parallelism: a communicator abstraction ([`Comm`]) with a single-process implementation
//! ([`Local`]) and an MPI one (feature `mpi`), the data-parallel × tensor-parallel process grid,
//! bucketed gradient all-reduce and a watchdog that aborts the whole job instead of hanging.

pub mod comm;
pub mod fault;
pub mod grid;
#[cfg(feature = "mpi")]
pub mod mpi_comm;
pub mod tp;
pub mod watchdog;

pub use comm::{all_reduce_buckets, Comm, Local, DEFAULT_BUCKET_BYTES};
pub use grid::{partition, Grid};
pub use tp::TpGroup;
