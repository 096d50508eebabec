//! A VM's serial console: libvirt's console stream, in blocking mode.

use std::sync::atomic::{AtomicBool, Ordering};

use virt::stream::Stream;

use crate::error::VirtError;

/// The serial console of a running VM, open until [`Console::close`] or
/// until it is dropped. One thread may block in [`Console::read`] while
/// another writes or closes it.
pub struct Console {
    stream: Stream,
    vm: String,
    closed: AtomicBool,
}

impl Console {
    pub(crate) fn new(stream: Stream, vm: &str) -> Console {
        Console {
            stream,
            vm: vm.to_string(),
            closed: AtomicBool::new(false),
        }
    }

    /// The next bytes the guest wrote, into `buf`; blocks until there are
    /// some. `Ok(0)` when the console was closed (by [`Console::close`] or
    /// by libvirt).
    pub fn read(&self, buf: &mut [u8]) -> Result<usize, VirtError> {
        if self.is_closed() {
            return Ok(0);
        }
        match self.stream.recv(buf) {
            Ok(n) => Ok(n),
            // An aborted stream fails the read it interrupts: that is the
            // end, not an error.
            Err(_) if self.is_closed() => Ok(0),
            Err(e) => Err(VirtError::libvirt(format!("Reading the console of {}", self.vm), &e)),
        }
    }

    /// Sends all of `data` to the guest's serial port.
    pub fn write(&self, mut data: &[u8]) -> Result<(), VirtError> {
        while !data.is_empty() {
            if self.is_closed() {
                return Err(VirtError::WrongState(format!("The console of {} is closed", self.vm)));
            }
            let n = self
                .stream
                .send(data)
                .map_err(|e| VirtError::libvirt(format!("Writing to the console of {}", self.vm), &e))?;
            data = &data[n.min(data.len())..];
        }
        Ok(())
    }

    /// Closes the console; a read blocked on it returns `Ok(0)`. Closing
    /// twice does nothing.
    pub fn close(&self) {
        if !self.closed.swap(true, Ordering::SeqCst) {
            // `abort` takes the stream by value; a clone holds its own
            // reference, freed after the abort.
            let _ = self.stream.clone().abort();
        }
    }

    /// Whether [`Console::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.close();
    }
}
