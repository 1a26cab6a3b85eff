//! [`CapturedLog`]: log output a test reads back.

use std::sync::{Arc, Mutex, PoisonError};

/// A log destination shared by a subscriber and the test that reads it:
/// `tracing_subscriber::fmt().with_writer(move || log.clone())` writes
/// every line here.
#[derive(Clone, Debug, Default)]
pub struct CapturedLog(Arc<Mutex<Vec<u8>>>);

impl CapturedLog {
    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8(self.bytes().clone()).unwrap()
    }

    /// Everything written since the last `take`, emptying the log.
    pub fn take(&self) -> String {
        String::from_utf8(std::mem::take(&mut *self.bytes())).unwrap()
    }

    fn bytes(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::io::Write for CapturedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.bytes().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
