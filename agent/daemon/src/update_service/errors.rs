//! What RAUC's failures mean on the wire.

use debvisor_api::update::v1 as pb;
use debvisor_rauc::{InstallErrorKind, RaucError};
use tonic::Status;

/// The wire status of a RAUC failure, with the whole error chain.
pub fn rauc_status(e: RaucError) -> Status {
    let msg = crate::error_chain(&e);
    match e {
        RaucError::Unavailable { .. } => Status::unavailable(msg),
        RaucError::Refused { message, .. } if message.contains("No slot") => Status::not_found(msg),
        RaucError::Refused { .. } => Status::failed_precondition(msg),
        RaucError::Bus { .. } => Status::unavailable(msg),
    }
}

pub(super) fn error_kind(kind: InstallErrorKind) -> pb::ErrorKind {
    match kind {
        InstallErrorKind::BadSignature => pb::ErrorKind::BadSignature,
        InstallErrorKind::WrongCompatible => pb::ErrorKind::WrongCompatible,
        InstallErrorKind::NotEnoughSpace => pb::ErrorKind::NotEnoughSpace,
        InstallErrorKind::InvalidBundle => pb::ErrorKind::InvalidBundle,
        InstallErrorKind::RaucUnavailable => pb::ErrorKind::RaucUnavailable,
        InstallErrorKind::Other => pb::ErrorKind::InstallFailed,
    }
}

/// RAUC's error text, prefixed with what it means.
pub(super) fn explain(kind: InstallErrorKind, error: &str, compatible: &str) -> String {
    match kind {
        InstallErrorKind::BadSignature => format!(
            "Bundle refused: its signature or verity hash does not verify (corrupt or tampered file, or signed by a \
             CA missing from /etc/rauc/keyring.pem): {error}"
        ),
        InstallErrorKind::WrongCompatible => {
            format!("Bundle refused: it is built for another kind of node (this node is '{compatible}'): {error}")
        }
        InstallErrorKind::NotEnoughSpace => format!("Not enough space for the image: {error}"),
        InstallErrorKind::InvalidBundle => format!("Not a bundle this node accepts: {error}"),
        InstallErrorKind::RaucUnavailable | InstallErrorKind::Other => format!("RAUC failed: {error}"),
    }
}
