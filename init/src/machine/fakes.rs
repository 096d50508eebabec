//! A [`HostControl`] that records the live actions instead of doing them,
//! for tests and for applying a config to a directory tree.

use std::sync::Mutex;

use super::apply::{BoxFuture, HostControl};

/// Records every call as a line such as `set_hostname edge-01`; a call
/// named in `fail` returns an error instead.
#[derive(Debug, Default)]
pub struct RecordingHost {
    calls: Mutex<Vec<String>>,
    fail: Mutex<Vec<String>>,
}

impl RecordingHost {
    /// A host on which every action succeeds.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the action named `call` (e.g. `reload_network`) fail.
    pub fn fail_on(&self, call: &str) {
        self.fail.lock().unwrap().push(call.to_string());
    }

    /// The calls so far, and forgets them.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut self.calls.lock().unwrap())
    }

    fn record(&self, call: &str, arg: &str) -> Result<(), String> {
        let line = if arg.is_empty() {
            call.to_string()
        } else {
            format!("{call} {arg}")
        };
        self.calls.lock().unwrap().push(line);
        if self.fail.lock().unwrap().iter().any(|f| f == call) {
            return Err(format!("{call} refused by the test"));
        }
        Ok(())
    }
}

impl HostControl for RecordingHost {
    fn set_hostname<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move { self.record("set_hostname", name) })
    }
    fn reload_network(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move { self.record("reload_network", "") })
    }
    fn restart_unit<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move { self.record("restart_unit", unit) })
    }
}
