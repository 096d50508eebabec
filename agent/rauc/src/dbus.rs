//! [`DbusRauc`]: the [`Rauc`] facility over RAUC's D-Bus API, spoken with
//! zbus. Method, property and signal names and signatures are those of the
//! installed RAUC 1.8 (`busctl introspect de.pengutronix.rauc /`).

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use tokio::sync::{OnceCell, mpsc};
use zbus::proxy::CacheProperties;
use zbus::{Connection, MatchRule, Message, MessageStream, OwnedVariant, Variant};

use crate::{
    Completion, InstallErrorKind, InstallEvent, MarkOutcome, MarkState, Progress, Rauc, RaucError, RaucStatus, SlotRef,
    SlotStatus, classify, grubenv, slots_note,
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
    /// RAUC's system configuration, read (on first use, again until it
    /// could be read) for the GRUB environment.
    system_conf: PathBuf,
    /// The GRUB environment RAUC's GRUB backend keeps, from system.conf
    /// (`None` for another boot loader).
    grubenv: std::sync::OnceLock<Option<PathBuf>>,
    /// The last slot table RAUC gave: RAUC 1.8 answers no `GetSlotStatus`
    /// while it installs, and this is shown meanwhile.
    last_slots: std::sync::Mutex<Option<Vec<SlotStatus>>>,
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
            grubenv: std::sync::OnceLock::new(),
            last_slots: std::sync::Mutex::new(None),
        })
    }

    /// Reads the boot loader settings (for trial boots) from `path` instead
    /// of /etc/rauc/system.conf, e.g. the `--conf` a test gave RAUC.
    pub fn with_system_conf(mut self, path: PathBuf) -> Self {
        self.system_conf = path;
        self.grubenv = std::sync::OnceLock::new();
        self
    }

    /// The variables of the GRUB environment (empty for another boot
    /// loader), or why they are unknown.
    async fn grub_env(&self) -> Result<BTreeMap<String, String>, String> {
        let path = match self.grubenv.get() {
            Some(p) => p.clone(),
            None => {
                let found = grubenv::grubenv_of(&self.system_conf)?;
                self.grubenv.get_or_init(|| found).clone()
            }
        };
        let Some(path) = path else {
            return Ok(BTreeMap::new());
        };
        tokio::task::spawn_blocking(move || grubenv::read(&path))
            .await
            .unwrap_or_else(|e| Err(format!("Reading the GRUB environment failed: {e}")))
    }

    fn lock_slots(&self) -> std::sync::MutexGuard<'_, Option<Vec<SlotStatus>>> {
        self.last_slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `GetSlotStatus`, sorted by name and remembered; while RAUC is busy
    /// (it answers none then), the table read before with the reason it is
    /// not current.
    async fn slots(&self) -> Result<(Vec<SlotStatus>, String), RaucError> {
        let p = &self.proxy;
        let mut asked = 0;
        loop {
            asked += 1;
            let refused = match p.get_slot_status().await.map_err(RaucError::from_call("GetSlotStatus")) {
                Ok(raw) => {
                    let mut slots: Vec<SlotStatus> = raw.iter().map(|(n, d)| SlotStatus::from_dict(n, d)).collect();
                    slots.sort_by(|a, b| a.name.cmp(&b.name));
                    *self.lock_slots() = Some(slots.clone());
                    return Ok((slots, String::new()));
                }
                Err(RaucError::Refused { message, .. }) => message,
                Err(other) => return Err(other),
            };
            let operation = p.operation().await.map_err(RaucError::from_call("Operation"))?;
            if operation != "idle" {
                let last = self.lock_slots().clone();
                let note = slots_note(&operation, &refused, last.is_some());
                return Ok((last.unwrap_or_default(), note));
            }
            // Refused, yet idle: the install ended in between; ask again.
            if asked == 2 {
                return Err(RaucError::Refused {
                    call: "GetSlotStatus",
                    message: refused,
                });
            }
        }
    }

    /// One reading of RAUC's properties, primary and slots.
    async fn read(&self) -> Result<RaucStatus, RaucError> {
        let p = &self.proxy;
        let compatible = p.compatible().await.map_err(RaucError::from_call("Compatible"))?;
        let boot_slot = p.boot_slot().await.map_err(RaucError::from_call("BootSlot"))?;
        let operation = p.operation().await.map_err(RaucError::from_call("Operation"))?;
        let last_error = p.last_error().await.map_err(RaucError::from_call("LastError"))?;
        let progress = Progress::from(p.progress().await.map_err(RaucError::from_call("Progress"))?);
        let (primary, primary_error) = match p.get_primary().await {
            Ok(s) => (s, String::new()),
            Err(e) => match RaucError::from_call("GetPrimary")(e) {
                RaucError::Refused { .. } if operation != "idle" => (
                    String::new(),
                    format!("RAUC names no primary slot while it is {operation}"),
                ),
                RaucError::Refused { message, .. } => (String::new(), message),
                other => return Err(other),
            },
        };
        let (slots, slots_note) = self.slots().await?;
        Ok(RaucStatus {
            compatible,
            boot_slot,
            operation,
            last_error,
            progress,
            primary,
            primary_error,
            trial_error: String::new(),
            slots_note,
            slots,
        })
    }
}

#[async_trait::async_trait]
impl Rauc for DbusRauc {
    /// One consistent reading: the GRUB environment is read before and
    /// after RAUC is asked, and the whole reading is taken again when a mark
    /// or a switch changed it in between (a primary read before the boot
    /// gate's mark and slot states read after it would describe no moment).
    async fn status(&self) -> Result<RaucStatus, RaucError> {
        const ATTEMPTS: u32 = 3;
        let mut before = self.grub_env().await;
        let mut attempt = 1;
        loop {
            let mut st = self.read().await?;
            let after = self.grub_env().await;
            if after != before {
                if attempt < ATTEMPTS {
                    tracing::debug!(
                        attempt,
                        "the GRUB environment changed while RAUC was read; reading again"
                    );
                    before = after;
                    attempt += 1;
                    continue;
                }
                tracing::warn!("the GRUB environment changed during each of {ATTEMPTS} readings; answering the last");
            }
            match after {
                Ok(env) => {
                    // Only the booted slot can be on trial; another slot
                    // with X_TRY=1 failed its trial, and RAUC calls it bad.
                    let tried = grubenv::tried_bootnames(&env);
                    let booted = st.booted().map(|s| s.name.clone());
                    for s in &mut st.slots {
                        s.trying = booted.as_deref() == Some(s.name.as_str()) && tried.contains(&s.bootname);
                    }
                }
                Err(e) => st.trial_error = e,
            }
            return Ok(st);
        }
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
            // Property changes first: RAUC sends the last Progress (100%)
            // before Completed, and both are already queued when Completed
            // is read; an unbiased select could take Completed first and
            // drop that last step.
            biased;
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
