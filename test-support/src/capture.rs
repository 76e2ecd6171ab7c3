//! A `tracing` writer that keeps everything it is given, for the tests that check events.
//!
//! Each test that captures events lives alone in its binary and installs a *global*
//! subscriber: a thread-local one (`set_default`) lost events when another test thread had
//! already cached the callsites' interest (tracing caches it per callsite), which made such
//! tests fail about 3 % of the time.

use std::io;
use std::sync::{Arc, Mutex};

use tracing_subscriber::fmt::MakeWriter;

/// The formatted output of every event, in order.
#[derive(Clone, Default, Debug)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// Installs a global `fmt` subscriber (no ANSI colours) that writes events up to `level`
    /// here. Panics if the binary already has a global subscriber.
    pub fn install_global(level: tracing::Level) -> Captured {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_ansi(false)
            .with_writer(captured.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("one global subscriber per test binary");
        captured
    }

    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}
