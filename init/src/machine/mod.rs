//! The machine config on the node: where it comes from ([`source`]), what
//! files it becomes ([`render`]) and how it is put in place ([`apply`]).

pub mod apply;
pub mod fakes;
pub mod render;
pub mod source;

pub use apply::{ApplyError, ApplyReport, DbusHost, HostControl, apply};
pub use source::{FetchPolicy, Loaded, Medium, Outcome, Source, SourcePaths, load, load_and_apply};
