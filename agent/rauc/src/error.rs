//! [`RaucError`]: a RAUC operation that failed, naming the operation.

/// A call to RAUC that failed.
#[derive(Debug, thiserror::Error)]
pub enum RaucError {
    /// The system bus, or RAUC on it, cannot be reached.
    #[error("RAUC (de.pengutronix.rauc on the system bus) is not reachable; is rauc.service running?")]
    Unavailable {
        /// Why.
        #[source]
        source: zbus::Error,
    },
    /// RAUC refused the call, e.g. another operation is running or the slot
    /// is unknown; RAUC's own message.
    #[error("RAUC refused {call}: {message}")]
    Refused {
        /// The D-Bus method.
        call: &'static str,
        /// RAUC's message.
        message: String,
    },
    /// The call failed on the bus for another reason.
    #[error("RAUC D-Bus call {call} failed")]
    Bus {
        /// The D-Bus method or property.
        call: &'static str,
        /// Why.
        #[source]
        source: zbus::Error,
    },
}

impl RaucError {
    /// Sorts a zbus error of `call`: method errors RAUC sent are refusals,
    /// a missing service is [`RaucError::Unavailable`].
    pub(crate) fn from_call(call: &'static str) -> impl Fn(zbus::Error) -> RaucError {
        move |source| match &source {
            zbus::Error::MethodError(name, msg, _) => {
                let name = name.as_str();
                if name.starts_with("org.freedesktop.DBus.Error.ServiceUnknown")
                    || name.starts_with("org.freedesktop.DBus.Error.NameHasNoOwner")
                    || name.starts_with("org.freedesktop.DBus.Error.NoReply")
                {
                    RaucError::Unavailable { source }
                } else {
                    RaucError::Refused {
                        call,
                        message: msg.clone().unwrap_or_else(|| name.to_string()),
                    }
                }
            }
            zbus::Error::FDO(e) => match **e {
                zbus::fdo::Error::ServiceUnknown(_)
                | zbus::fdo::Error::NameHasNoOwner(_)
                | zbus::fdo::Error::NoReply(_) => RaucError::Unavailable { source },
                ref other => RaucError::Refused {
                    call,
                    message: other.to_string(),
                },
            },
            zbus::Error::InputOutput(_) | zbus::Error::Address(_) | zbus::Error::Handshake(_) => {
                RaucError::Unavailable { source }
            }
            _ => RaucError::Bus { call, source },
        }
    }
}
