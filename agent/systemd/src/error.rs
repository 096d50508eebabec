//! [`UnitsError`], and the mapping of systemd's D-Bus error names to it.

/// A unit operation that failed, naming the unit.
#[derive(Debug, thiserror::Error)]
pub enum UnitsError {
    /// systemd knows no such unit, or no unit file for it.
    #[error("Unit {unit} not found")]
    NotFound {
        /// The unit.
        unit: String,
    },
    /// systemd refused the operation: permission, a masked unit, a unit that
    /// may only be started as a dependency, a conflicting transaction, ...
    #[error("systemd refused {call} of {unit}: {reason}")]
    Refused {
        /// The D-Bus method.
        call: &'static str,
        /// The unit.
        unit: String,
        /// Why, in words, followed by systemd's own message.
        reason: String,
    },
    /// The job was queued but did not finish in time; it may still run.
    #[error("The job for {unit} did not finish within {secs} s")]
    JobTimeout {
        /// The unit.
        unit: String,
        /// The time waited.
        secs: u64,
    },
    /// The bus connection closed while waiting for the job of `unit`.
    #[error("The D-Bus connection closed while waiting for the job of {unit}")]
    Disconnected {
        /// The unit.
        unit: String,
    },
    /// Connecting to systemd on the system bus failed.
    #[error("Connecting to systemd on the system bus failed")]
    Connect {
        /// Why.
        #[source]
        source: zbus::Error,
    },
    /// A D-Bus call to systemd failed for another reason.
    #[error("systemd D-Bus call {call} for {unit} failed")]
    Bus {
        /// The D-Bus method.
        call: &'static str,
        /// The unit.
        unit: String,
        /// Why.
        #[source]
        source: zbus::Error,
    },
}

/// What a D-Bus error name from systemd means to a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorClass {
    /// The unit or its file does not exist.
    NotFound,
    /// The operation is refused, for the reason given.
    Refused(&'static str),
}

/// Classifies a D-Bus error name (systemd's `bus-common-errors.h` and the
/// standard `org.freedesktop.DBus.Error.*`); `None` for errors that are not
/// about the request (no reply, bus gone, ...).
pub(crate) fn classify(error_name: &str) -> Option<ErrorClass> {
    use ErrorClass::{NotFound, Refused};
    let systemd = error_name.strip_prefix("org.freedesktop.systemd1.");
    let dbus = error_name.strip_prefix("org.freedesktop.DBus.Error.");
    Some(match (systemd, dbus) {
        (Some("NoSuchUnit"), _) | (_, Some("FileNotFound")) => NotFound,
        (_, Some("AccessDenied")) => Refused("permission denied"),
        (_, Some("InteractiveAuthorizationRequired")) => Refused("authorization required"),
        (Some("UnitMasked"), _) => Refused("the unit is masked"),
        (Some("OnlyByDependency"), _) => Refused("the unit may only be started or stopped as a dependency"),
        (Some("LoadFailed" | "BadUnitSetting"), _) => Refused("the unit failed to load"),
        (Some("JobTypeNotApplicable" | "NoIsolation"), _) => Refused("the operation does not apply to this unit"),
        (Some("TransactionIsDestructive" | "TransactionJobsConflicting" | "TransactionOrderIsCyclic"), _) => {
            Refused("the job conflicts with other jobs")
        }
        (Some("ShuttingDown"), _) => Refused("the system is shutting down"),
        (Some("UnitGenerated" | "UnitLinked" | "UnitBadPath" | "UnitExists"), _) => {
            Refused("the unit file cannot be changed this way")
        }
        (Some("ReadOnlyFilesystem" | "FileIsProtected"), _) | (_, Some("ReadOnly")) => {
            Refused("the unit file is read-only")
        }
        (Some("UnitInactive"), _) => Refused("the unit is not active"),
        (Some("DiskFull"), _) => Refused("the disk is full"),
        (_, Some("InvalidArgs")) => Refused("invalid arguments"),
        _ => return None,
    })
}

/// The D-Bus error name and message of a method error reply, if `e` is one.
pub(crate) fn error_name(e: &zbus::Error) -> Option<(String, Option<String>)> {
    use zbus::DBusError;
    match e {
        zbus::Error::MethodError(name, desc, _) => Some((name.to_string(), desc.clone())),
        zbus::Error::FDO(fdo) => match fdo.as_ref() {
            zbus::fdo::Error::ZBus(inner) => error_name(inner),
            fdo => Some((fdo.name().to_string(), fdo.description().map(str::to_string))),
        },
        _ => None,
    }
}

impl UnitsError {
    /// Maps the failure of D-Bus method `call` for `unit` to a variant.
    pub(crate) fn from_bus(call: &'static str, unit: &str, source: zbus::Error) -> Self {
        let unit = unit.to_string();
        let Some((name, desc)) = error_name(&source) else {
            return UnitsError::Bus { call, unit, source };
        };
        match classify(&name) {
            Some(ErrorClass::NotFound) => UnitsError::NotFound { unit },
            Some(ErrorClass::Refused(why)) => UnitsError::Refused {
                call,
                unit,
                reason: match desc {
                    Some(desc) if !desc.is_empty() => format!("{why} ({desc})"),
                    _ => why.to_string(),
                },
            },
            None => UnitsError::Bus { call, unit, source },
        }
    }

    /// A closure for `map_err` that maps errors (zbus's or `fdo`'s) of `call`
    /// for `unit`.
    pub(crate) fn bus<'u, E: Into<zbus::Error>>(call: &'static str, unit: &'u str) -> impl FnOnce(E) -> Self + 'u {
        move |e| Self::from_bus(call, unit, e.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error reply as it arrives from the bus, converted as zbus does.
    fn reply(name: &str, desc: &str) -> zbus::Error {
        let call = zbus::Message::method_call("/org/freedesktop/systemd1", "StartUnit")
            .build(&())
            .unwrap();
        let err = zbus::Message::error(&call.header(), name).build(&(desc,)).unwrap();
        zbus::Error::from(err)
    }

    #[test]
    fn maps_systemd_error_names() {
        let cases: &[(&str, &str)] = &[
            ("org.freedesktop.systemd1.NoSuchUnit", "NotFound"),
            ("org.freedesktop.DBus.Error.FileNotFound", "NotFound"),
            ("org.freedesktop.systemd1.UnitMasked", "masked"),
            ("org.freedesktop.DBus.Error.AccessDenied", "permission denied"),
            (
                "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired",
                "authorization required",
            ),
            ("org.freedesktop.systemd1.OnlyByDependency", "as a dependency"),
            ("org.freedesktop.systemd1.TransactionIsDestructive", "conflicts"),
            ("org.freedesktop.systemd1.ShuttingDown", "shutting down"),
            ("org.freedesktop.systemd1.ReadOnlyFilesystem", "read-only"),
            ("org.freedesktop.systemd1.BadUnitSetting", "failed to load"),
        ];
        for (name, want) in cases {
            let e = UnitsError::from_bus("StartUnit", "x.service", reply(name, "systemd says no."));
            match e {
                UnitsError::NotFound { unit } => assert_eq!((unit.as_str(), *want), ("x.service", "NotFound")),
                UnitsError::Refused { call, unit, reason } => {
                    assert_eq!((call, unit.as_str()), ("StartUnit", "x.service"));
                    assert!(
                        reason.contains(want) && reason.ends_with("(systemd says no.)"),
                        "{name}: {reason}"
                    );
                }
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn fdo_errors_built_locally_map_too() {
        let e = zbus::Error::FDO(Box::new(zbus::fdo::Error::AccessDenied("Access denied".into())));
        let msg = UnitsError::from_bus("EnableUnitFiles", "cron.service", e).to_string();
        assert_eq!(
            msg,
            "systemd refused EnableUnitFiles of cron.service: permission denied (Access denied)"
        );
    }

    #[test]
    fn other_errors_stay_bus_errors_with_source() {
        for e in [
            reply("org.freedesktop.DBus.Error.NoReply", "timeout"),
            reply("org.example.Weird", "?"),
            zbus::Error::InvalidReply,
        ] {
            let mapped = UnitsError::from_bus("GetAll", "cron.service", e);
            assert!(matches!(mapped, UnitsError::Bus { call: "GetAll", .. }), "{mapped:?}");
            assert!(std::error::Error::source(&mapped).is_some());
        }
        assert_eq!(classify("org.freedesktop.DBus.Error.ServiceUnknown"), None);
    }
}
