//! SPMD parallelism: a communicator abstraction ([`Comm`]) with a single-process implementation
//! ([`Local`]), an MPI one (feature `mpi`) and one over TCP to the hub of `arbor launch`
//! (`tcp_comm`, `hub`: several processes on one machine without MPI), the data-parallel × tensor-parallel process grid,
//! bucketed gradient all-reduce, optimizer-state sharding (`zero`), a pipelined relay for one rank's messages to many ([`Relay`]) and
//! a watchdog that aborts the whole job instead of hanging.

pub mod comm;
pub mod fault;
pub mod grid;
pub mod hub;
#[cfg(feature = "mpi")]
pub mod mpi_comm;
pub mod relay;
pub mod tcp_comm;
pub mod tp;
pub mod watchdog;
pub mod wire;
pub mod zero;

pub use comm::{all_reduce_buckets, Comm, Local, DEFAULT_BUCKET_BYTES};
pub use grid::{partition, Grid};
pub use relay::Relay;
pub use tp::TpGroup;
