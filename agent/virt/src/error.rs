//! What can go wrong with a VM operation.

use crate::spec::SpecError;

/// A refused or failed VM operation. The message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum VirtError {
    /// A field of the request is invalid.
    #[error(transparent)]
    Invalid(#[from] SpecError),
    /// No such VM, snapshot or volume.
    #[error("{0}")]
    NotFound(String),
    /// A VM or volume of that name exists already.
    #[error("{0}")]
    Exists(String),
    /// The VM is in the wrong state for the operation.
    #[error("{0}")]
    WrongState(String),
    /// Not enough memory or pool space.
    #[error("{0}")]
    Insufficient(String),
    /// libvirt's event loop or callback could not be set up.
    #[error("{0}")]
    Events(String),
    /// libvirt refused or failed.
    #[error("{op}: {message}")]
    Libvirt {
        /// The operation, with its target (`Starting VM web-1`).
        op: String,
        /// libvirt's message.
        message: String,
    },
}

impl VirtError {
    /// `op` failed with libvirt's error `e`: a missing object is
    /// [`VirtError::NotFound`], an operation the state forbids
    /// [`VirtError::WrongState`], anything else [`VirtError::Libvirt`].
    pub(crate) fn libvirt(op: impl Into<String>, e: &virt::error::Error) -> VirtError {
        use virt::error::ErrorNumber as N;
        let op = op.into();
        let message = e.message().to_string();
        match e.code() {
            N::NoDomain | N::NoDomainSnapshot | N::NoStorageVolume | N::NoStoragePool | N::NoNetwork => {
                VirtError::NotFound(format!("{op}: {message}"))
            }
            N::OperationInvalid => VirtError::WrongState(format!("{op}: {message}")),
            N::StorageVolExist => VirtError::Exists(format!("{op}: {message}")),
            _ => VirtError::Libvirt { op, message },
        }
    }
}
