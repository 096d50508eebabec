//! The slot table on the wire, and when a slot may be overwritten.

use debvisor_api::update::v1 as pb;
use debvisor_rauc::RaucStatus;
use tonic::Status;

/// The slot table from RAUC's status.
pub fn slots_state(st: &RaucStatus, install: Option<pb::InstallProgress>, simulated: bool) -> pb::SlotsState {
    let booted = st.booted();
    pb::SlotsState {
        compatible: st.compatible.clone(),
        booted_bootname: st.boot_slot.clone(),
        booted_slot: booted.map(|s| s.name.clone()).unwrap_or_default(),
        primary_slot: st.primary.clone(),
        primary_error: st.primary_error.clone(),
        booted_good: booted.is_some_and(|s| s.is_confirmed_good()) && st.trial_error.is_empty(),
        trial_error: st.trial_error.clone(),
        slots_note: st.slots_note.clone(),
        operation: st.operation.clone(),
        last_error: st.last_error.clone(),
        slots: st
            .slots
            .iter()
            .map(|s| pb::Slot {
                name: s.name.clone(),
                class: s.class.clone(),
                bootname: s.bootname.clone(),
                device: s.device.clone(),
                r#type: s.slot_type.clone(),
                state: s.state.clone(),
                boot_status: s.boot_status.clone(),
                booted: booted.is_some_and(|b| b.name == s.name),
                primary: !st.primary.is_empty() && st.primary == s.name,
                bundle_compatible: s.bundle_compatible.clone(),
                bundle_version: s.bundle_version.clone(),
                bundle_description: s.bundle_description.clone(),
                bundle_build: s.bundle_build.clone(),
                sha256: s.sha256.clone(),
                size_bytes: s.size,
                installed_unix_s: s.installed_unix_s,
                installed_count: s.installed_count,
                activated_unix_s: s.activated_unix_s,
                activated_count: s.activated_count,
                trying: s.trying,
            })
            .collect(),
        install,
        simulated,
    }
}

/// Refuses (FAILED_PRECONDITION, saying what to wait for) an install while
/// RAUC is busy or the booted slot is not confirmed good: the other slot
/// then holds the only known-good system.
pub fn check_installable(st: &RaucStatus) -> Result<(), Status> {
    if st.operation != "idle" {
        return Err(Status::failed_precondition(format!(
            "RAUC is busy ({}) with an operation this agent did not start; wait for it to end",
            st.operation
        )));
    }
    let Some(booted) = st.booted() else {
        return Err(Status::failed_precondition(format!(
            "RAUC knows no booted slot (BootSlot {:?}): the node did not boot from a RAUC slot (rauc.slot= \
                 missing on the kernel command line), so no slot may be overwritten",
            st.boot_slot
        )));
    };
    if !st.trial_error.is_empty() {
        let hint = if st.trial_error.contains("GRUB environment") {
            " (check that the ESP is mounted at /boot/efi)"
        } else {
            " (check RAUC's system configuration)"
        };
        return Err(Status::failed_precondition(format!(
            "Cannot tell whether the booted slot {} ({}) was confirmed good: {}; no slot is overwritten until it can \
             be told{hint}",
            booted.name, booted.bootname, st.trial_error
        )));
    }
    if booted.trying {
        return Err(Status::failed_precondition(format!(
            "The booted slot {} ({}) is on trial: this boot has not been confirmed good yet, and the other slot \
                 holds the only known-good system; wait for the boot gate (`debvisorctl health`) or mark it with \
                 `debvisorctl update mark-good`",
            booted.name, booted.bootname
        )));
    }
    if !booted.is_good() {
        return Err(Status::failed_precondition(format!(
            "The booted slot {} ({}) is not marked good yet (boot status {:?}); the other slot holds the only \
                 known-good system and is not overwritten until this boot is confirmed: wait for the boot gate \
                 (`debvisorctl health`) or mark it with `debvisorctl update mark-good`",
            booted.name, booted.bootname, booted.boot_status
        )));
    }
    Ok(())
}
