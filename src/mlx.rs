//! Small helpers around mlx-rs shared by the rest of the crate.
