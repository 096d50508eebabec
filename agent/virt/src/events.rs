//! libvirt's domain lifecycle events. The `virt` crate (0.4) has no event
//! API, so this module is the FFI: libvirt's default event loop on a thread
//! of its own, and one lifecycle callback per connection that hands each
//! event to the subscribed sinks.
#![allow(unsafe_code)]

use std::ffi::{CStr, c_int, c_void};
use std::sync::{Arc, Mutex, OnceLock};

use virt::connect::Connect;
use virt::sys;

use crate::error::VirtError;

/// What happened to a VM (libvirt's lifecycle event types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmEventKind {
    /// Defined, or its definition changed.
    Defined,
    /// Undefined (deleted).
    Undefined,
    /// Started.
    Started,
    /// Paused.
    Suspended,
    /// Unpaused.
    Resumed,
    /// Stopped (shut down, destroyed, crashed, ...: see the detail).
    Stopped,
    /// The guest shut down (QEMU may still be there).
    Shutdown,
    /// Suspended by guest power management.
    PmSuspended,
    /// The guest crashed.
    Crashed,
    /// An event type this build does not know.
    Other,
}

impl VmEventKind {
    /// The event as the API names it.
    pub fn as_str(self) -> &'static str {
        match self {
            VmEventKind::Defined => "defined",
            VmEventKind::Undefined => "undefined",
            VmEventKind::Started => "started",
            VmEventKind::Suspended => "suspended",
            VmEventKind::Resumed => "resumed",
            VmEventKind::Stopped => "stopped",
            VmEventKind::Shutdown => "shutdown",
            VmEventKind::PmSuspended => "pm-suspended",
            VmEventKind::Crashed => "crashed",
            VmEventKind::Other => "other",
        }
    }
}

/// One lifecycle event of one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmEvent {
    /// The VM's name.
    pub name: String,
    /// What happened.
    pub kind: VmEventKind,
    /// Why or how, as libvirt's detail names it ("booted", "destroyed",
    /// "from-snapshot", ...; "" where it has none).
    pub detail: &'static str,
}

impl VmEvent {
    /// The event of libvirt's `event` type with its `detail` code.
    pub fn from_libvirt(name: String, event: u32, detail: u32) -> VmEvent {
        let (kind, details): (VmEventKind, &[&'static str]) = match event {
            sys::VIR_DOMAIN_EVENT_DEFINED => (VmEventKind::Defined, &["added", "updated", "renamed", "from-snapshot"]),
            sys::VIR_DOMAIN_EVENT_UNDEFINED => (VmEventKind::Undefined, &["removed", "renamed"]),
            sys::VIR_DOMAIN_EVENT_STARTED => (
                VmEventKind::Started,
                &["booted", "migrated", "restored", "from-snapshot", "wakeup"],
            ),
            sys::VIR_DOMAIN_EVENT_SUSPENDED => (
                VmEventKind::Suspended,
                &[
                    "paused",
                    "migrated",
                    "io-error",
                    "watchdog",
                    "restored",
                    "from-snapshot",
                    "api-error",
                    "postcopy",
                    "postcopy-failed",
                ],
            ),
            sys::VIR_DOMAIN_EVENT_RESUMED => (
                VmEventKind::Resumed,
                &["unpaused", "migrated", "from-snapshot", "postcopy"],
            ),
            sys::VIR_DOMAIN_EVENT_STOPPED => (
                VmEventKind::Stopped,
                &[
                    "shutdown",
                    "destroyed",
                    "crashed",
                    "migrated",
                    "saved",
                    "failed",
                    "from-snapshot",
                ],
            ),
            sys::VIR_DOMAIN_EVENT_SHUTDOWN => (VmEventKind::Shutdown, &["finished", "guest", "host"]),
            sys::VIR_DOMAIN_EVENT_PMSUSPENDED => (VmEventKind::PmSuspended, &["memory", "disk"]),
            sys::VIR_DOMAIN_EVENT_CRASHED => (VmEventKind::Crashed, &["panicked", "crashloaded"]),
            _ => (VmEventKind::Other, &[]),
        };
        VmEvent {
            name,
            kind,
            detail: details.get(detail as usize).copied().unwrap_or(""),
        }
    }
}

/// Where events go: called on libvirt's event thread, so it must not block.
pub type EventSink = Box<dyn Fn(&VmEvent) + Send + Sync>;

/// The sinks of one connection.
#[derive(Default)]
pub(crate) struct Sinks(Mutex<Vec<EventSink>>);

impl Sinks {
    pub(crate) fn add(&self, sink: EventSink) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(sink);
    }

    fn send(&self, e: &VmEvent) {
        for sink in self.0.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            sink(e);
        }
    }
}

static EVENT_LOOP: OnceLock<Result<(), String>> = OnceLock::new();

/// Registers libvirt's default event loop and runs it on a thread of its
/// own, once per process. It must run before the first connection is
/// opened (the remote driver picks the loop up when it connects).
pub(crate) fn start_event_loop() -> Result<(), VirtError> {
    EVENT_LOOP
        .get_or_init(|| {
            // SAFETY: plain libvirt call with no arguments; OnceLock makes it once.
            if unsafe { sys::virEventRegisterDefaultImpl() } < 0 {
                return Err(format!(
                    "libvirt's event loop could not be registered: {}",
                    virt::error::Error::last_error()
                ));
            }
            std::thread::Builder::new()
                .name("libvirt-events".into())
                .spawn(|| {
                    loop {
                        // SAFETY: the default loop was registered above.
                        if unsafe { sys::virEventRunDefaultImpl() } < 0 {
                            std::thread::sleep(std::time::Duration::from_millis(100));
                        }
                    }
                })
                .map(drop)
                .map_err(|e| format!("libvirt's event thread could not start: {e}"))
        })
        .clone()
        .map_err(VirtError::Events)
}

/// A lifecycle callback registered on a connection; deregistered on drop.
pub(crate) struct Registration {
    conn: crate::libvirt::Owned,
    id: c_int,
}

impl Registration {
    /// Registers the lifecycle callback on `conn` for every domain, feeding
    /// `sinks`.
    pub(crate) fn lifecycle(conn: &Connect, sinks: Arc<Sinks>) -> Result<Registration, VirtError> {
        let opaque = Arc::into_raw(sinks) as *mut c_void;
        type Lifecycle =
            unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, c_int, c_int, *mut c_void) -> c_int;
        type Generic = unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void);
        // SAFETY: libvirt calls a lifecycle callback with the lifecycle
        // signature; the generic type is only how it is passed (libvirt's
        // VIR_DOMAIN_EVENT_CALLBACK cast). Both are thin function pointers.
        let cb = unsafe { std::mem::transmute::<Lifecycle, Generic>(on_lifecycle) };
        // SAFETY: `conn` is open; `opaque` is an Arc that `free_sinks`
        // releases when libvirt drops the callback.
        let id = unsafe {
            sys::virConnectDomainEventRegisterAny(
                conn.as_ptr(),
                std::ptr::null_mut(),
                sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE as c_int,
                Some(cb),
                opaque,
                Some(free_sinks),
            )
        };
        if id < 0 {
            let e = virt::error::Error::last_error();
            // SAFETY: libvirt did not take the Arc, so it is still ours.
            drop(unsafe { Arc::from_raw(opaque as *const Sinks) });
            return Err(VirtError::Events(format!(
                "libvirt refused the lifecycle event callback: {e}"
            )));
        }
        Ok(Registration {
            conn: crate::libvirt::Owned(conn.clone()),
            id,
        })
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // SAFETY: `id` was returned by the registration on this connection.
        unsafe {
            sys::virConnectDomainEventDeregisterAny(self.conn.as_ptr(), self.id);
        }
    }
}

unsafe extern "C" fn on_lifecycle(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    event: c_int,
    detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: `opaque` is the registration's Arc<Sinks>, alive until
        // `free_sinks`; `dom` is valid for the callback's duration.
        let sinks = unsafe { &*(opaque as *const Sinks) };
        let name = unsafe {
            let p = sys::virDomainGetName(dom);
            if p.is_null() {
                return;
            }
            CStr::from_ptr(p).to_string_lossy().into_owned()
        };
        sinks.send(&VmEvent::from_libvirt(name, event as u32, detail as u32));
    });
    0
}

unsafe extern "C" fn free_sinks(opaque: *mut c_void) {
    // SAFETY: the Arc given to libvirt at registration, released once.
    drop(unsafe { Arc::from_raw(opaque as *const Sinks) });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_are_named_and_unknown_codes_are_empty() {
        let e = VmEvent::from_libvirt("web".into(), sys::VIR_DOMAIN_EVENT_STOPPED, 1);
        assert_eq!((e.kind, e.detail), (VmEventKind::Stopped, "destroyed"));
        let e = VmEvent::from_libvirt("web".into(), sys::VIR_DOMAIN_EVENT_STARTED, 3);
        assert_eq!((e.kind.as_str(), e.detail), ("started", "from-snapshot"));
        let e = VmEvent::from_libvirt("web".into(), sys::VIR_DOMAIN_EVENT_SHUTDOWN, 99);
        assert_eq!((e.kind, e.detail), (VmEventKind::Shutdown, ""));
        let e = VmEvent::from_libvirt("web".into(), 1000, 0);
        assert_eq!((e.kind.as_str(), e.detail), ("other", ""));
    }
}
