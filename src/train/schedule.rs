//! Learning-rate schedules: the types live with the config schema (`crate::config::schedule`).

pub use crate::config::schedule::{LrSchedule, ScheduleKind};
