//! A temporary folder of its own for each rank after 0. MLX's CPU backend compiles every
//! fused kernel once into `$TMPDIR/mlx/<version>/cpu` and writes the library in place, so a
//! process that finds another's half-written library loads a truncated file ("file too
//! short") and fails. The ranks of one host start together and compile the same kernels;
//! rank 0 keeps the shared folder (which single-process runs fill), the others get
//! `<temp>/kooka-rank<r>`, kept between runs so their kernels compile once.

use std::path::{Path, PathBuf};

/// The folder `TMPDIR` should name for `rank`, given the current temporary folder; `None`
/// for rank 0, or when `temp` is already this rank's (a rank that starts another kooka).
pub fn for_rank(rank: usize, temp: &Path) -> Option<PathBuf> {
    let name = format!("kooka-rank{rank}");
    if rank == 0 || temp.file_name().is_some_and(|n| n == name.as_str()) {
        return None;
    }
    Some(temp.join(name))
}

/// Points `TMPDIR` at `rank`'s folder (see the module). Call on the main thread, before
/// other threads and before MLX compiles anything. A folder that cannot be made leaves
/// `TMPDIR` as it is.
pub fn separate(rank: usize) {
    let Some(dir) = for_rank(rank, &std::env::temp_dir()) else {
        return;
    };
    match std::fs::create_dir_all(&dir) {
        Ok(()) => std::env::set_var("TMPDIR", &dir),
        Err(e) => tracing::warn!(
            "rank {rank} shares MLX's kernel folder: {}: {e}",
            dir.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_after_0_get_their_own_folder() {
        let tmp = Path::new("/tmp");
        assert_eq!(for_rank(0, tmp), None);
        assert_eq!(for_rank(1, tmp), Some(PathBuf::from("/tmp/kooka-rank1")));
        assert_eq!(for_rank(3, tmp), Some(PathBuf::from("/tmp/kooka-rank3")));
        let own = Path::new("/tmp/kooka-rank1");
        assert_eq!(for_rank(1, own), None, "not nested twice");
    }
}
