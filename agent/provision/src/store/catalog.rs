//! Profiles, groups and what machines report about their boots. These
//! change rarely, so they are written directly (not through the lease
//! writer's group commits).

use std::collections::BTreeMap;

use sqlx::Row;

use super::{Store, StoreError};
use crate::config::Mac;
use crate::profiles::{Group, Invalid, Profile};

/// A catalog change refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// A field breaks its rule.
    #[error("Invalid {0}")]
    Invalid(#[from] Invalid),
    /// A group names a profile that does not exist.
    #[error("Group {group}: no profile {profile:?}: create the profile first")]
    NoProfile {
        /// The group.
        group: String,
        /// The missing profile.
        profile: String,
    },
    /// A profile still used by groups cannot be deleted.
    #[error("Profile {profile} is used by group(s) {groups}: delete or change them first")]
    InUse {
        /// The profile.
        profile: String,
        /// The groups using it.
        groups: String,
    },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Store {
    fn write_err(&self, source: sqlx::Error) -> StoreError {
        StoreError::Write {
            db: self.db.clone(),
            source,
        }
    }

    async fn specs<T: serde::de::DeserializeOwned>(&self, sql: &'static str) -> Result<Vec<T>, StoreError> {
        self.rows(sql)
            .await?
            .iter()
            .map(|r| {
                let (name, spec): (String, String) = (r.get(0), r.get(1));
                serde_json::from_str(&spec).map_err(|e| StoreError::BadRow {
                    db: self.db.clone(),
                    mac: name,
                    reason: e.to_string(),
                })
            })
            .collect()
    }

    async fn put_spec(&self, sql: &'static str, name: &str, spec: &impl serde::Serialize) -> Result<(), StoreError> {
        let spec = serde_json::to_string(spec).map_err(|e| StoreError::Commit(e.to_string()))?;
        sqlx::query(sql)
            .bind(name)
            .bind(spec)
            .execute(&self.pool)
            .await
            .map_err(|e| self.write_err(e))?;
        Ok(())
    }

    /// Every profile, by name.
    pub async fn profiles(&self) -> Result<Vec<Profile>, StoreError> {
        self.specs("SELECT name, spec FROM profiles ORDER BY name").await
    }

    /// Every group, by name.
    pub async fn groups(&self) -> Result<Vec<Group>, StoreError> {
        self.specs("SELECT name, spec FROM groups ORDER BY name").await
    }

    /// Creates or replaces a profile.
    pub async fn put_profile(&self, p: &Profile) -> Result<(), CatalogError> {
        p.validate()?;
        Ok(self
            .put_spec("INSERT OR REPLACE INTO profiles (name, spec) VALUES (?, ?)", &p.name, p)
            .await?)
    }

    /// Deletes a profile no group uses; false when there was none.
    pub async fn delete_profile(&self, name: &str) -> Result<bool, CatalogError> {
        let users: Vec<String> = self
            .groups()
            .await?
            .into_iter()
            .filter(|g| g.profile == name)
            .map(|g| g.name)
            .collect();
        if !users.is_empty() {
            return Err(CatalogError::InUse {
                profile: name.to_string(),
                groups: users.join(", "),
            });
        }
        let done = sqlx::query("DELETE FROM profiles WHERE name = ?")
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(|e| self.write_err(e))?;
        Ok(done.rows_affected() > 0)
    }

    /// Creates or replaces a group; its profile must exist.
    pub async fn put_group(&self, g: &Group) -> Result<(), CatalogError> {
        g.validate()?;
        if !self.profiles().await?.iter().any(|p| p.name == g.profile) {
            return Err(CatalogError::NoProfile {
                group: g.name.clone(),
                profile: g.profile.clone(),
            });
        }
        Ok(self
            .put_spec("INSERT OR REPLACE INTO groups (name, spec) VALUES (?, ?)", &g.name, g)
            .await?)
    }

    /// Deletes a group; false when there was none.
    pub async fn delete_group(&self, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM groups WHERE name = ?")
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(|e| self.write_err(e))?;
        Ok(done.rows_affected() > 0)
    }

    /// Records that `mac` asked for its iPXE script and got `profile`.
    pub async fn machine_booted(
        &self,
        mac: Mac,
        uuid: Option<&str>,
        profile: Option<&str>,
        now: u64,
    ) -> Result<(), StoreError> {
        let now = i64::try_from(now).unwrap_or(i64::MAX);
        sqlx::query(
            "INSERT INTO machines (mac, client, first_seen, last_seen, uuid, profile) VALUES (?1, 'ipxe', ?2, ?2, ?3, ?4)
             ON CONFLICT(mac) DO UPDATE SET client = 'ipxe', last_seen = ?2, uuid = coalesce(?3, uuid), profile = ?4",
        )
        .bind(mac.to_string())
        .bind(now)
        .bind(uuid)
        .bind(profile)
        .execute(&self.pool)
        .await
        .map_err(|e| self.write_err(e))?;
        Ok(())
    }

    /// Marks `mac` installed (or not); false when the machine is unknown.
    pub async fn set_installed(&self, mac: Mac, installed: bool) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE machines SET installed = ? WHERE mac = ?")
            .bind(i64::from(installed))
            .bind(mac.to_string())
            .execute(&self.pool)
            .await
            .map_err(|e| self.write_err(e))?;
        Ok(done.rows_affected() > 0)
    }

    /// Forgets the record of `mac` (its lease, if any, stays until it
    /// expires); false when the machine is unknown. Seen again, it is
    /// recorded again.
    pub async fn delete_machine(&self, mac: Mac) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM machines WHERE mac = ?")
            .bind(mac.to_string())
            .execute(&self.pool)
            .await
            .map_err(|e| self.write_err(e))?;
        Ok(done.rows_affected() > 0)
    }

    /// Sets the labels of `mac`; false when the machine is unknown.
    pub async fn set_labels(&self, mac: Mac, labels: &BTreeMap<String, String>) -> Result<bool, StoreError> {
        let json = serde_json::to_string(labels).map_err(|e| StoreError::Commit(e.to_string()))?;
        let done = sqlx::query("UPDATE machines SET labels = ? WHERE mac = ?")
            .bind(json)
            .bind(mac.to_string())
            .execute(&self.pool)
            .await
            .map_err(|e| self.write_err(e))?;
        Ok(done.rows_affected() > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profiles::{BootMode, Selector};

    fn profile(name: &str) -> Profile {
        Profile {
            name: name.into(),
            mode: BootMode::Live,
            image: "0.1.0".into(),
            kernel_args: vec![],
            config: String::new(),
            install_disk: None,
        }
    }

    #[tokio::test]
    async fn groups_need_their_profile_and_profiles_in_use_stay() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("p.db")).await.unwrap();
        let g = Group {
            name: "all".into(),
            profile: "live".into(),
            selector: Selector::default(),
        };
        assert!(matches!(store.put_group(&g).await, Err(CatalogError::NoProfile { .. })));
        store.put_profile(&profile("live")).await.unwrap();
        store.put_group(&g).await.unwrap();
        let e = store.delete_profile("live").await.unwrap_err();
        assert!(e.to_string().contains("used by group(s) all"), "{e}");
        assert!(store.put_profile(&profile("Bad")).await.is_err());
        assert!(store.delete_group("all").await.unwrap());
        assert!(store.delete_profile("live").await.unwrap());
        assert!(!store.delete_profile("live").await.unwrap());

        let mac: Mac = "52:54:00:00:00:11".parse().unwrap();
        assert!(!store.set_installed(mac, true).await.unwrap(), "unknown machine");
        store
            .machine_booted(mac, Some("5c3a8e2e-0f4e-4c1a-9d0e-3f1b2a4c5d6e"), Some("live"), 10)
            .await
            .unwrap();
        assert!(store.set_installed(mac, true).await.unwrap());
        store
            .set_labels(mac, &[("rack".to_string(), "r1".to_string())].into())
            .await
            .unwrap();
        let m = store.machine(mac).await.unwrap().unwrap();
        assert!(m.installed);
        assert_eq!(m.profile.as_deref(), Some("live"));
        assert_eq!(m.labels.get("rack").map(String::as_str), Some("r1"));
        assert!(store.delete_machine(mac).await.unwrap());
        assert!(store.machine(mac).await.unwrap().is_none());
        assert!(!store.delete_machine(mac).await.unwrap());
    }
}
