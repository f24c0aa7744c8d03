//! ctrwatch's daemon and CLI library.
pub mod kernel;
