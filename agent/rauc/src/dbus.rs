//! [`DbusRauc`]: the [`Rauc`] facility over RAUC's D-Bus API, spoken with
//! zbus. Method, property and signal names and signatures are those of the
//! installed RAUC 1.8 (`busctl introspect de.pengutronix.rauc /`).

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use tokio::sync::{OnceCell, mpsc};
use zbus::proxy::CacheProperties;
use zbus::{Connection, MatchRule, Message, MessageStream, OwnedVariant, Variant};

use crate::{
    Completion, InstallErrorKind, InstallEvent, MarkOutcome, MarkState, Progress, Rauc, RaucError, RaucStatus, SlotRef,
    SlotStatus, classify, grubenv,
};

/// RAUC's bus name.
pub const SERVICE: &str = "de.pengutronix.rauc";
/// RAUC's interface, at object path `/`.
pub const INTERFACE: &str = "de.pengutronix.rauc.Installer";

#[zbus::proxy(
    interface = "de.pengutronix.rauc.Installer",
    default_service = "de.pengutronix.rauc",
    default_path = "/"
)]
trait Installer {
    /// `InstallBundle(s source, a{sv} args)`.
    fn install_bundle(&self, source: &str, args: HashMap<&str, Variant<'_>>) -> zbus::Result<()>;
    /// `Mark(s state, s slot_identifier) -> (s slot_name, s message)`.
    fn mark(&self, state: &str, slot_identifier: &str) -> zbus::Result<(String, String)>;
    /// `GetSlotStatus() -> a(sa{sv})`.
    fn get_slot_status(&self) -> zbus::Result<Vec<(String, HashMap<String, OwnedVariant>)>>;
    /// `GetPrimary() -> s`.
    fn get_primary(&self) -> zbus::Result<String>;
    /// `Operation`: `idle` or `installing`.
    #[zbus(property)]
    fn operation(&self) -> zbus::Result<String>;
    /// `LastError`.
    #[zbus(property)]
    fn last_error(&self) -> zbus::Result<String>;
    /// `Progress (isi)`: percentage, message, nesting depth.
    #[zbus(property)]
    fn progress(&self) -> zbus::Result<(i32, String, i32)>;
    /// `Compatible`.
    #[zbus(property)]
    fn compatible(&self) -> zbus::Result<String>;
    /// `BootSlot`: the booted slot's boot name.
    #[zbus(property)]
    fn boot_slot(&self) -> zbus::Result<String>;
    /// `Completed(i result)`: 0 on success.
    #[zbus(signal)]
    fn completed(&self, result: i32) -> zbus::Result<()>;
}

/// RAUC on the system bus.
pub struct DbusRauc {
    conn: Connection,
    proxy: InstallerProxy<'static>,
    system_conf: PathBuf,
}

impl DbusRauc {
    /// Connects to the system bus (`DBUS_SYSTEM_BUS_ADDRESS` when set).
    pub async fn connect() -> Result<Self, RaucError> {
        let conn = Connection::system()
            .await
            .map_err(|source| RaucError::Unavailable { source })?;
        Self::connect_to(conn).await
    }

    /// Connects to the bus at `address`, e.g. a private dbus-daemon in tests.
    pub async fn connect_address(address: &str) -> Result<Self, RaucError> {
        let conn = zbus::connection::Builder::address(address)
            .build()
            .await
            .map_err(|source| RaucError::Unavailable { source })?;
        Self::connect_to(conn).await
    }

    /// Speaks to RAUC on `conn`. Properties are read from RAUC on every call
    /// (no cache), so a value is never older than the call.
    pub async fn connect_to(conn: Connection) -> Result<Self, RaucError> {
        let proxy = InstallerProxy::builder(&conn)
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(|source| RaucError::Unavailable { source })?;
        Ok(Self {
            conn,
            proxy,
            system_conf: PathBuf::from(grubenv::SYSTEM_CONF),
        })
    }

    /// Reads the boot loader settings (for trial boots) from `path` instead
    /// of /etc/rauc/system.conf.
    pub fn with_system_conf(mut self, path: PathBuf) -> Self {
        self.system_conf = path;
        self
    }
}

#[async_trait::async_trait]
impl Rauc for DbusRauc {
    async fn status(&self) -> Result<RaucStatus, RaucError> {
        let p = &self.proxy;
        let compatible = p.compatible().await.map_err(RaucError::from_call("Compatible"))?;
        let boot_slot = p.boot_slot().await.map_err(RaucError::from_call("BootSlot"))?;
        let operation = p.operation().await.map_err(RaucError::from_call("Operation"))?;
        let last_error = p.last_error().await.map_err(RaucError::from_call("LastError"))?;
        let progress = Progress::from(p.progress().await.map_err(RaucError::from_call("Progress"))?);
        let (primary, primary_error) = match p.get_primary().await {
            Ok(s) => (s, String::new()),
            Err(e) => match RaucError::from_call("GetPrimary")(e) {
                RaucError::Refused { message, .. } => (String::new(), message),
                other => return Err(other),
            },
        };
        let mut slots: Vec<SlotStatus> = p
            .get_slot_status()
            .await
            .map_err(RaucError::from_call("GetSlotStatus"))?
            .iter()
            .map(|(name, dict)| SlotStatus::from_dict(name, dict))
            .collect();
        slots.sort_by(|a, b| a.name.cmp(&b.name));
        let conf = self.system_conf.clone();
        let trials = tokio::task::spawn_blocking(move || grubenv::read_trials(&conf))
            .await
            .unwrap_or_else(|e| Err(format!("Reading the GRUB environment failed: {e}")));
        let trial_error = match trials {
            Ok(on_trial) => {
                for s in &mut slots {
                    s.trying = on_trial.contains(&s.bootname);
                }
                String::new()
            }
            Err(e) => {
                tracing::warn!("trial boots unknown: {e}");
                e
            }
        };
        Ok(RaucStatus {
            trial_error,
            compatible,
            boot_slot,
            operation,
            last_error,
            progress,
            primary,
            primary_error,
            slots,
        })
    }

    async fn mark(&self, state: MarkState, slot: &SlotRef) -> Result<MarkOutcome, RaucError> {
        let (slot, message) = self
            .proxy
            .mark(state.as_str(), slot.as_str())
            .await
            .map_err(RaucError::from_call("Mark"))?;
        Ok(MarkOutcome { slot, message })
    }

    async fn install(&self, bundle: &Path) -> Result<mpsc::Receiver<InstallEvent>, RaucError> {
        let source = bundle.to_str().ok_or_else(|| RaucError::Refused {
            call: "InstallBundle",
            message: format!("the bundle path {} is not UTF-8", bundle.display()),
        })?;
        // Subscribe before the call so that no event is missed.
        let props = progress_stream(&self.conn)
            .await
            .map_err(RaucError::from_call("AddMatch PropertiesChanged"))?;
        let completed = self
            .proxy
            .receive_completed()
            .await
            .map_err(RaucError::from_call("AddMatch Completed"))?;
        let owner = zbus::fdo::DBusProxy::new(&self.conn)
            .await
            .map_err(RaucError::from_call("AddMatch NameOwnerChanged"))?
            .receive_name_owner_changed_with_args(&[(0, SERVICE)])
            .await
            .map_err(RaucError::from_call("AddMatch NameOwnerChanged"))?;
        self.proxy
            .install_bundle(source, HashMap::new())
            .await
            .map_err(RaucError::from_call("InstallBundle"))?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(follow_install(self.proxy.clone(), props, completed, owner, tx));
        Ok(rx)
    }
}

/// [`DbusRauc`] on the system bus, connected on first use: a process starts
/// (and does everything else) where the bus or RAUC is missing, and each call
/// reports their absence instead. A failed connection is tried again on the
/// next call.
#[derive(Default)]
pub struct LazyRauc {
    inner: OnceCell<DbusRauc>,
}

impl LazyRauc {
    async fn get(&self) -> Result<&DbusRauc, RaucError> {
        self.inner.get_or_try_init(DbusRauc::connect).await
    }
}

#[async_trait::async_trait]
impl Rauc for LazyRauc {
    async fn status(&self) -> Result<RaucStatus, RaucError> {
        self.get().await?.status().await
    }
    async fn mark(&self, state: MarkState, slot: &SlotRef) -> Result<MarkOutcome, RaucError> {
        self.get().await?.mark(state, slot).await
    }
    async fn install(&self, bundle: &Path) -> Result<mpsc::Receiver<InstallEvent>, RaucError> {
        self.get().await?.install(bundle).await
    }
}

/// `PropertiesChanged` signals of RAUC's installer interface.
async fn progress_stream(conn: &Connection) -> zbus::Result<MessageStream> {
    let rule = MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender(SERVICE)
        .interface("org.freedesktop.DBus.Properties")
        .member("PropertiesChanged")
        .path("/")
        .arg(0, INTERFACE)
        .build()?;
    MessageStream::for_match_rule(rule, conn, NonZeroUsize::new(256)).await
}

/// The `Progress` value in a `PropertiesChanged` signal, if it carries one.
fn progress_of(msg: &Message) -> Option<Progress> {
    let (_iface, changed, _invalidated): (String, HashMap<String, OwnedVariant>, Vec<String>) =
        msg.body().deserialize().ok()?;
    let v = changed.get("Progress")?;
    let (p, m, d): (i32, String, i32) = v.try_clone().ok()?.try_into().ok()?;
    Some(Progress::from((p, m, d)))
}

/// Forwards the install's progress to `tx` until `Completed` arrives or
/// RAUC leaves the bus, then sends the completion.
async fn follow_install(
    proxy: InstallerProxy<'static>,
    mut props: MessageStream,
    mut completed: CompletedStream,
    mut owner: zbus::fdo::NameOwnerChangedStream,
    tx: mpsc::Sender<InstallEvent>,
) {
    let completion = loop {
        tokio::select! {
            msg = props.next() => match msg {
                Some(Ok(m)) => {
                    if let Some(p) = progress_of(&m) {
                        let _ = tx.send(InstallEvent::Progress(p)).await;
                    }
                }
                Some(Err(_)) => {}
                None => break gone("the D-Bus connection closed"),
            },
            sig = completed.next() => match sig.map(|s| s.args().map(|a| a.result)) {
                Some(Ok(0)) => break Completion::Succeeded,
                Some(Ok(result)) => {
                    let error = proxy
                        .last_error()
                        .await
                        .unwrap_or_else(|e| format!("install failed with result {result}; LastError unreadable: {e}"));
                    let kind = classify(&error);
                    break Completion::Failed { result, error, kind };
                }
                Some(Err(e)) => tracing::warn!("unreadable RAUC Completed signal: {e}"),
                None => break gone("the D-Bus connection closed"),
            },
            change = owner.next() => match change {
                Some(c) => {
                    let new_owner = c.args().ok().and_then(|a| a.new_owner.as_ref().map(|o| o.to_string()));
                    if new_owner.is_none() {
                        break gone("RAUC left the system bus (rauc.service stopped or crashed)");
                    }
                }
                None => break gone("the D-Bus connection closed"),
            },
        }
    };
    let _ = tx.send(InstallEvent::Completed(completion)).await;
}

fn gone(why: &str) -> Completion {
    Completion::Failed {
        result: -1,
        error: format!("RAUC did not finish the install: {why}"),
        kind: InstallErrorKind::RaucUnavailable,
    }
}
