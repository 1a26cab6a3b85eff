//! What the kernel says about a local process, read from `/proc`.
//!
//! A pid alone names a process only until it exits: the kernel hands the
//! number to the next process once it wraps around (or at once, to a root
//! user who writes `/proc/sys/kernel/ns_last_pid`). The start time (field 22
//! of `/proc/<pid>/stat`, in clock ticks since boot) is what tells two
//! holders of one pid apart: a later process cannot have the earlier one's
//! start time — within the resolution of a clock tick (10 ms): a process
//! forced onto a pid in the same tick as its predecessor started shares the
//! number *and* the start time. So a supervisor's own children are also held
//! by a pidfd ([`Handle`]), which refers to one process, never to its
//! successor, and tells when that process has exited.

use std::fs;
use std::io;
use std::path::PathBuf;

use std::os::fd::OwnedFd;

use ring::digest;
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::process::{Pid, PidfdFlags, pidfd_open};

/// One process, held for as long as the handle lives: its start time, and a
/// pidfd when the kernel offers one (Linux 5.3 and later).
#[derive(Debug)]
pub(crate) struct Handle {
    pub(crate) start_time: u64,
    pidfd: Option<OwnedFd>,
}

impl Handle {
    /// Opens the process that runs as `pid` now. The pidfd is opened
    /// between two readings of the start time, so that it is known to be
    /// the process whose start time is recorded.
    pub(crate) fn open(pid: u32) -> io::Result<Self> {
        let before = start_time(pid)?;
        let pidfd = i32::try_from(pid)
            .ok()
            .and_then(Pid::from_raw)
            .and_then(|pid| pidfd_open(pid, PidfdFlags::empty()).ok());
        if start_time(pid)? != before {
            return Err(io::Error::other("the process changed while it was opened"));
        }
        Ok(Self {
            start_time: before,
            pidfd,
        })
    }

    /// Whether the process now running as `pid` is this one: same start
    /// time, and (when a pidfd is held) this process has not exited.
    pub(crate) fn is_running_as(&self, pid: u32) -> Result<(), String> {
        match start_time(pid) {
            Ok(now) if now == self.start_time => {}
            Ok(now) => return Err(format!("start time {now}, registered {}", self.start_time)),
            Err(e) => return Err(format!("no process: {e}")),
        }
        if let Some(pidfd) = &self.pidfd {
            // A pidfd polls readable once its process has exited.
            let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
            let zero = Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            match poll(&mut fds, Some(&zero)) {
                Ok(0) => {}
                Ok(_) => return Err("the registered process has exited".to_owned()),
                Err(e) => return Err(format!("cannot poll the pidfd: {e}")),
            }
        }
        Ok(())
    }
}

/// The start time of process `pid`, in clock ticks since boot.
pub(crate) fn start_time(pid: u32) -> io::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_start_time(&stat)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed /proc/<pid>/stat"))
}

/// Field 22 of a `/proc/<pid>/stat` line. The command name (field 2) is in
/// parentheses and may itself hold spaces and parentheses, so fields are
/// counted from the last `)`.
fn parse_start_time(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // After the command name come field 3 (state) onwards: 22 is the 20th.
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// The path of the binary process `pid` runs (`/proc/<pid>/exe`).
pub(crate) fn exe_path(pid: u32) -> io::Result<PathBuf> {
    fs::read_link(format!("/proc/{pid}/exe"))
}

/// The SHA-256 of the binary process `pid` runs, lowercase hex. Read
/// through `/proc/<pid>/exe`, which opens the very file the process
/// executes even if its path has since been replaced or removed.
pub(crate) fn exe_sha256(pid: u32) -> io::Result<String> {
    let bytes = fs::read(format!("/proc/{pid}/exe"))?;
    Ok(crate::authority::hex(
        digest::digest(&digest::SHA256, &bytes).as_ref(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_is_counted_after_the_command_name() {
        let line = "4242 (a b) c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_time(line), Some(987_654));
        assert_eq!(parse_start_time("4242 (x) S 1 2"), None);
        assert_eq!(parse_start_time("no parenthesis"), None);
    }

    #[test]
    fn own_start_time_is_stable_and_own_binary_is_readable() {
        let me = std::process::id();
        assert_eq!(start_time(me).unwrap(), start_time(me).unwrap());
        assert_eq!(exe_path(me).unwrap(), std::env::current_exe().unwrap());
        assert_eq!(exe_sha256(me).unwrap().len(), 64);
    }
}
