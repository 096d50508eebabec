//! Roles and what each may do: the one table every route is checked against.
//!
//! | permission | admin | operator | developer | viewer |
//! |---|:-:|:-:|:-:|:-:|
//! | `ViewDashboard`: dashboard, health checks, services list, about | ✓ | ✓ | ✓ | ✓ |
//! | `ViewLogs`: journal tail of a service | ✓ | ✓ | ✓ | |
//! | `ViewConfig`: the machine config | ✓ | ✓ | ✓ | |
//! | `ControlServices`: start, stop, restart units | ✓ | ✓ | | |
//! | `PowerNode`: reboot, shut down | ✓ | ✓ | | |
//! | `ViewAudit`: audit log and its CSV export | ✓ | ✓ | | |
//! | `ViewVms`: the VMs, their devices and snapshots | ✓ | ✓ | ✓ | ✓ |
//! | `ManageVms`: create, start, stop, snapshot, clone, delete VMs | ✓ | ✓ | ✓ | |
//! | `ManageUpdates`: install, roll back (S5) | ✓ | | | |
//! | `ManageProvisioning`: let an installed machine install again (S6) | ✓ | ✓ | | |
//! | `ManageUsers`: create, disable, reset, assign roles | ✓ | | | |
//! | `DownloadClientBundle`: the debvisorctl admin bundle | ✓ | | | |
//!
//! A viewer watches; a developer builds workloads (reads everything a
//! workload needs, runs VMs) without touching the host; an operator runs
//! the node; an admin also owns its people, its updates and its keys.

use std::fmt;
use std::str::FromStr;

/// A console user's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Everything.
    Admin,
    /// Runs the node: services, power, VMs, audit.
    Operator,
    /// Builds workloads: reads everything a workload needs, runs VMs.
    Developer,
    /// Reads the dashboard, health and services.
    Viewer,
}

/// Something a route does that not every role may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Dashboard, health checks, services list, about.
    ViewDashboard,
    /// A service's journal.
    ViewLogs,
    /// The machine config.
    ViewConfig,
    /// Start, stop, restart units.
    ControlServices,
    /// Reboot, shut down.
    PowerNode,
    /// The audit log and its export.
    ViewAudit,
    /// The VMs as they are.
    ViewVms,
    /// VM lifecycle.
    ManageVms,
    /// OS updates and rollback.
    ManageUpdates,
    /// The PXE provisioner's machines.
    ManageProvisioning,
    /// Users and roles.
    ManageUsers,
    /// The debvisorctl admin client bundle.
    DownloadClientBundle,
}

use Permission as P;
use Role as R;

/// The table: each permission and the roles that hold it.
pub const TABLE: &[(Permission, &[Role])] = &[
    (P::ViewDashboard, &[R::Admin, R::Operator, R::Developer, R::Viewer]),
    (P::ViewLogs, &[R::Admin, R::Operator, R::Developer]),
    (P::ViewConfig, &[R::Admin, R::Operator, R::Developer]),
    (P::ControlServices, &[R::Admin, R::Operator]),
    (P::PowerNode, &[R::Admin, R::Operator]),
    (P::ViewAudit, &[R::Admin, R::Operator]),
    (P::ViewVms, &[R::Admin, R::Operator, R::Developer, R::Viewer]),
    (P::ManageVms, &[R::Admin, R::Operator, R::Developer]),
    (P::ManageUpdates, &[R::Admin]),
    (P::ManageProvisioning, &[R::Admin, R::Operator]),
    (P::ManageUsers, &[R::Admin]),
    (P::DownloadClientBundle, &[R::Admin]),
];

impl Role {
    /// Every role, most powerful first.
    pub const ALL: [Role; 4] = [Role::Admin, Role::Operator, Role::Developer, Role::Viewer];

    /// Whether this role holds `p` (from [`TABLE`]).
    pub fn allows(self, p: Permission) -> bool {
        TABLE
            .iter()
            .find(|(q, _)| *q == p)
            .is_some_and(|(_, roles)| roles.contains(&self))
    }

    /// The name used in forms, the database and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Developer => "developer",
            Role::Viewer => "viewer",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is not one of [`Role::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}: choose admin, operator, developer or viewer")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRole(s.chars().take(32).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_permission_is_in_the_table_once_and_admin_holds_all() {
        let all = [
            P::ViewDashboard,
            P::ViewLogs,
            P::ViewConfig,
            P::ControlServices,
            P::PowerNode,
            P::ViewAudit,
            P::ViewVms,
            P::ManageVms,
            P::ManageUpdates,
            P::ManageProvisioning,
            P::ManageUsers,
            P::DownloadClientBundle,
        ];
        assert_eq!(TABLE.len(), all.len());
        for p in all {
            assert_eq!(TABLE.iter().filter(|(q, _)| *q == p).count(), 1, "{p:?}");
            assert!(Role::Admin.allows(p), "{p:?}");
        }
    }

    #[test]
    fn the_table_separates_the_roles() {
        assert!(Role::Viewer.allows(P::ViewDashboard));
        assert!(!Role::Viewer.allows(P::ViewLogs));
        assert!(!Role::Viewer.allows(P::ControlServices));
        assert!(Role::Developer.allows(P::ManageVms));
        assert!(Role::Viewer.allows(P::ViewVms));
        assert!(!Role::Viewer.allows(P::ManageVms));
        assert!(!Role::Developer.allows(P::ControlServices));
        assert!(Role::Operator.allows(P::ControlServices));
        assert!(!Role::Operator.allows(P::ManageUsers));
        assert!(!Role::Operator.allows(P::DownloadClientBundle));
        assert!(Role::Operator.allows(P::ManageProvisioning));
        assert!(!Role::Developer.allows(P::ManageProvisioning));
    }

    #[test]
    fn names_round_trip_and_garbage_is_named() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
        }
        let e = "root".parse::<Role>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown role \"root\": choose admin, operator, developer or viewer"
        );
    }
}
