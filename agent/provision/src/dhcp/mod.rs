//! DHCPv4: requests in, replies out, and the lease table between them.

pub mod boot;
pub mod leases;
pub mod packet;
pub mod respond;
