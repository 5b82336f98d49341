//! Snapshots (see snapshot/file.rs).
