//! Where a generation that runs as another user (`--user`) gets its notify
//! socket: see `crate::privileges` for the design (a 0711 directory of its
//! own, the socket owned by the worker's user, mode 0600).

use std::path::PathBuf;

use super::Runtime;
use crate::lifecycle::GenId;
use crate::privileges::RunAs;

impl Runtime {
    /// The notify socket's path for generation `g`: in baton's private
    /// directory, or, when its workers run as another user, in the shared
    /// one (made the first time), which that user must be able to reach.
    pub(super) fn notify_path(
        &mut self,
        g: GenId,
        run_as: Option<&RunAs>,
    ) -> Result<PathBuf, String> {
        let file = format!("notify-{g}.sock");
        let Some(r) = run_as else {
            return Ok(self.rundir.path().join(file));
        };
        let dir = match &self.rundir.shared {
            Some(d) => d.clone(),
            None => {
                let d = crate::privileges::make_shared_dir().map_err(|e| {
                    format!(
                        "cannot make a directory for the notify sockets of workers running as {} in {}: {e}",
                        r.describe(),
                        std::env::temp_dir().display()
                    )
                })?;
                tracing::debug!(
                    "notify sockets of workers running as another user go in {}",
                    d.display()
                );
                self.rundir.shared = Some(d.clone());
                d
            }
        };
        crate::privileges::reachable_by(&dir, r.uid, r.gid, &r.groups).map_err(|why| {
            format!(
                "workers running as {} could not reach their notify socket in {}: {why}; set TMPDIR to a directory they may pass through, or use --ready fd",
                r.describe(),
                dir.display()
            )
        })?;
        Ok(dir.join(file))
    }
}

/// Gives a just-bound notify socket to the generation's user.
pub(super) fn hand_over(path: &std::path::Path, run_as: Option<&RunAs>) -> Result<(), String> {
    match run_as {
        None => Ok(()),
        Some(r) => crate::privileges::hand_socket_to(path, r).map_err(|e| {
            format!(
                "cannot give the notify socket {} to {}: {e}",
                path.display(),
                r.describe()
            )
        }),
    }
}
