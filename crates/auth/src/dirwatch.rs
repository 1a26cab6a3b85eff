//! Whether anything changed in the directory of a key file since it was
//! last asked, without a system call per question when nothing did.
//!
//! A token naming a kid no key has is what a rotation looks like from the
//! request side, and also what an attacker's flood of made-up kids looks
//! like. Checking the key file (a `stat`, about twice the cost of a whole
//! HS256 verification) on every such miss made a hostile token dearer than
//! a valid one. On Linux an inotify watch on the file's directory answers
//! instead: the kernel queues an event before the `write`, `rename` or
//! `symlink` that changed the directory returns, so a miss that finds the
//! queue empty knows that nothing there changed since the last look, and a
//! miss that finds an event drains the queue and checks the file (one
//! check per change, however many misses follow).
//!
//! Seen at once: a change of the file in place, a file renamed over it, a
//! symbolic link in the directory swapped (the form Kubernetes volumes use),
//! the file created or removed. Not seen at once: a change further up the
//! path (a parent directory renamed or a link above it swapped); the
//! once-per-second check sees it. Where inotify cannot be had (another
//! system, or the per-user instance limit reached), or once the watch is
//! gone (the directory deleted, moved or unmounted), every miss reports a
//! possible change, so the caller checks the file as it did without a
//! watch.

use std::path::Path;

/// See the module documentation.
pub(crate) struct DirWatch {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    inner: Option<linux::Watch>,
}

impl DirWatch {
    /// Watches the directory holding `file` (as the path names it, not
    /// resolved further). The reason comes back beside it when no watch
    /// could be set: that one then reports a possible change every time.
    pub(crate) fn on_directory_of(file: &Path) -> (Self, Option<String>) {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            match linux::Watch::new(file) {
                Ok(watch) => (Self { inner: Some(watch) }, None),
                Err(why) => (Self { inner: None }, Some(why)),
            }
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        {
            let _ = file;
            (Self {}, Some("directory watches need Linux's inotify".to_owned()))
        }
    }

    /// Whether the directory may have changed since the last call: `false`
    /// only when the watch is sound and no event arrived; every event
    /// queued so far is consumed.
    pub(crate) fn changed(&self) -> bool {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            self.inner.as_ref().is_none_or(linux::Watch::changed)
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        {
            true
        }
    }

    /// Whether misses are answered by the watch.
    #[cfg(test)]
    pub(crate) fn is_watching(&self) -> bool {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            self.inner.as_ref().is_some_and(linux::Watch::sound)
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        {
            false
        }
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod linux {
    use std::mem::MaybeUninit;
    use std::os::fd::OwnedFd;
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, Ordering};

    use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
    use rustix::io::Errno;

    /// An inotify instance with one watch, on a directory.
    pub(super) struct Watch {
        fd: OwnedFd,
        /// Cleared for good when the kernel dropped the watch or the queue
        /// could not be read: from then on every question is a change.
        sound: AtomicBool,
    }

    /// What changes the directory's entries or a file's content. The
    /// watch's own end (`IN_IGNORED`, `IN_DELETE_SELF`, `IN_MOVE_SELF`,
    /// `IN_UNMOUNT`) comes with any mask.
    fn mask() -> WatchFlags {
        WatchFlags::MODIFY
            | WatchFlags::CLOSE_WRITE
            | WatchFlags::ATTRIB
            | WatchFlags::CREATE
            | WatchFlags::DELETE
            | WatchFlags::MOVED_FROM
            | WatchFlags::MOVED_TO
            | WatchFlags::DELETE_SELF
            | WatchFlags::MOVE_SELF
            | WatchFlags::ONLYDIR
    }

    impl Watch {
        pub(super) fn new(file: &Path) -> Result<Self, String> {
            let dir = match file.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent,
                _ => Path::new("."),
            };
            let fd = inotify::init(CreateFlags::NONBLOCK | CreateFlags::CLOEXEC)
                .map_err(|e| format!("inotify_init1: {e}"))?;
            inotify::add_watch(&fd, dir, mask())
                .map_err(|e| format!("inotify_add_watch {}: {e}", dir.display()))?;
            Ok(Self {
                fd,
                sound: AtomicBool::new(true),
            })
        }

        pub(super) fn sound(&self) -> bool {
            self.sound.load(Ordering::Relaxed)
        }

        /// One `read` when nothing happened (it fails with `EAGAIN`);
        /// otherwise reads until the queue is empty.
        pub(super) fn changed(&self) -> bool {
            if !self.sound() {
                return true;
            }
            // Room for a few events with names (each at most 16 + 256 bytes).
            let mut buf = [MaybeUninit::<u8>::uninit(); 2048];
            let mut events = inotify::Reader::new(&self.fd, &mut buf);
            let mut any = false;
            loop {
                match events.next() {
                    Ok(event) => {
                        any = true;
                        let ended = ReadFlags::IGNORED
                            | ReadFlags::DELETE_SELF
                            | ReadFlags::MOVE_SELF
                            | ReadFlags::UNMOUNT;
                        if event.events().intersects(ended) {
                            tracing::warn!(
                                "the key file's directory watch ended; key file changes are now checked on every miss"
                            );
                            self.sound.store(false, Ordering::Relaxed);
                        }
                    }
                    Err(Errno::AGAIN) => return any,
                    Err(Errno::INTR) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the key file's directory watch failed; key file changes are now checked on every miss");
                        self.sound.store(false, Ordering::Relaxed);
                        return true;
                    }
                }
            }
        }
    }
}

#[cfg(all(test, any(target_os = "linux", target_os = "android")))]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::DirWatch;

    #[test]
    fn a_watch_reports_each_change_of_its_directory_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys.json");
        std::fs::write(&file, b"{}").unwrap();
        let (watch, why) = DirWatch::on_directory_of(&file);
        assert_eq!(why, None);
        assert!(watch.is_watching());
        assert!(!watch.changed(), "nothing happened yet");

        let changes: [(&str, &dyn Fn()); 5] = [
            ("written in place", &|| std::fs::write(&file, b"{ }").unwrap()),
            ("renamed over", &|| {
                std::fs::write(dir.path().join("next"), b"{}").unwrap();
                std::fs::rename(dir.path().join("next"), &file).unwrap();
            }),
            ("a mode change", &|| {
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
            }),
            ("a link created beside it", &|| {
                std::os::unix::fs::symlink("keys.json", dir.path().join("link")).unwrap();
            }),
            ("a file removed beside it", &|| {
                std::fs::remove_file(dir.path().join("link")).unwrap();
            }),
        ];
        for (what, change) in changes {
            change();
            assert!(watch.changed(), "{what}: not reported");
            assert!(!watch.changed(), "{what}: reported twice");
        }
        // Reading the file is not a change.
        std::fs::read(&file).unwrap();
        assert!(!watch.changed());
    }

    #[test]
    fn once_the_directory_is_gone_every_question_is_a_change() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("keys");
        std::fs::create_dir(&dir).unwrap();
        let file = dir.join("keys.json");
        std::fs::write(&file, b"{}").unwrap();
        let (watch, _) = DirWatch::on_directory_of(&file);
        std::fs::remove_file(&file).unwrap();
        std::fs::remove_dir(&dir).unwrap();
        assert!(watch.changed());
        assert!(!watch.is_watching(), "the kernel dropped the watch");
        for _ in 0..3 {
            assert!(watch.changed(), "a watch that ended must not say \"unchanged\"");
        }
    }

    #[test]
    fn without_a_watch_every_question_is_a_change() {
        let parent = tempfile::tempdir().unwrap();
        let file = parent.path().join("missing").join("keys.json");
        let (watch, why) = DirWatch::on_directory_of(&file);
        let why = why.unwrap();
        assert!(why.contains("inotify_add_watch"), "{why}");
        assert!(!watch.is_watching());
        assert!(watch.changed());
        assert!(watch.changed());
    }
}
