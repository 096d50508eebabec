//! Fakes of the host facilities, for tests and `--sim`. They keep state in
//! memory and behave like the real host; every answer says it is simulated.

use std::time::Instant;

use debvisor_api::node::v1::{Disk, GetStatusResponse, LoadAverage, Memory};

use crate::host::{HostError, HostFacts};

/// A simulated node: fixed identity, uptime counting from creation.
#[derive(Debug)]
pub struct FakeHost {
    hostname: String,
    started: Instant,
}

impl FakeHost {
    /// A simulated node with the given host name.
    pub fn new(hostname: impl Into<String>) -> Self {
        Self {
            hostname: hostname.into(),
            started: Instant::now(),
        }
    }
}

impl HostFacts for FakeHost {
    fn status(&self) -> Result<GetStatusResponse, HostError> {
        const GIB: u64 = 1 << 30;
        Ok(GetStatusResponse {
            hostname: self.hostname.clone(),
            image_version: env!("CARGO_PKG_VERSION").to_string(),
            image_id: "debvisor-node".to_string(),
            booted_slot: "A".to_string(),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            load: Some(LoadAverage {
                one: 0.1,
                five: 0.05,
                fifteen: 0.01,
            }),
            memory: Some(Memory {
                total_bytes: 8 * GIB,
                available_bytes: 6 * GIB,
                used_bytes: 2 * GIB,
            }),
            disks: vec![
                Disk {
                    name: "root".into(),
                    mount_point: "/".into(),
                    total_bytes: GIB,
                    available_bytes: 0,
                    used_bytes: GIB,
                    read_only: true,
                },
                Disk {
                    name: "data".into(),
                    mount_point: "/data".into(),
                    total_bytes: 100 * GIB,
                    available_bytes: 90 * GIB,
                    used_bytes: 10 * GIB,
                    read_only: false,
                },
            ],
            kernel: "sim".to_string(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            simulated: true,
            sampled_at_unix_ms: crate::host::now_unix_ms(),
        })
    }
}
