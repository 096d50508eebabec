//! What a network-booting client is, and what it is told to load next.
//!
//! The chain is firmware PXE (TFTP) or UEFI HTTP boot -> iPXE -> the iPXE
//! script over HTTP. A client already running iPXE gets the script, never an
//! iPXE binary again, so the chain cannot loop.

use std::net::Ipv4Addr;

use crate::config::Boot;
use crate::dhcp::packet::Request;

/// Option 93 values (IANA "Processor Architecture Types"). dhcproto's
/// constant names follow RFC 4578's original table, which swapped 7 and 9;
/// EDK2 sends 7 for x64 UEFI, so numbers are matched, never names.
pub mod arch {
    /// x86 BIOS.
    pub const BIOS: u16 = 0;
    /// x64 UEFI (EDK2, as registered by IANA).
    pub const EFI_X64: u16 = 7;
    /// x64 UEFI as RFC 4578's original table numbered it; some firmware sends it.
    pub const EFI_X64_ALT: u16 = 9;
    /// arm64 UEFI.
    pub const EFI_ARM64: u16 = 11;
    /// x64 UEFI HTTP boot.
    pub const EFI_X64_HTTP: u16 = 16;
    /// arm64 UEFI HTTP boot.
    pub const EFI_ARM64_HTTP: u16 = 19;
}

/// The kind of client, as far as booting goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// iPXE (user class "iPXE" or its option 175).
    Ipxe,
    /// UEFI HTTP boot firmware (vendor class "HTTPClient...").
    HttpBoot {
        /// Option 93.
        arch: Option<u16>,
    },
    /// PXE firmware (vendor class "PXEClient...").
    Pxe {
        /// Option 93.
        arch: Option<u16>,
    },
    /// Anything else (an OS's DHCP client): an address only.
    Plain,
}

impl Client {
    /// Classifies `req`.
    pub fn of(req: &Request) -> Client {
        if req.user_class() == b"iPXE" || req.has_ipxe_options() {
            Client::Ipxe
        } else if req.vendor_class().starts_with(b"HTTPClient") {
            Client::HttpBoot { arch: req.arch() }
        } else if req.vendor_class().starts_with(b"PXEClient") {
            Client::Pxe { arch: req.arch() }
        } else {
            Client::Plain
        }
    }

    /// Whether the client network boots (answered in proxy mode).
    pub fn is_netboot(self) -> bool {
        self != Client::Plain
    }

    /// A short name for logs and the machine record.
    pub fn label(self) -> &'static str {
        match self {
            Client::Ipxe => "ipxe",
            Client::HttpBoot { .. } => "uefi-http",
            Client::Pxe { arch: Some(arch::BIOS) } => "pxe-bios",
            Client::Pxe { .. } => "pxe-uefi",
            Client::Plain => "dhcp",
        }
    }
}

/// What goes into a reply for a network-booting client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootFile {
    /// Option 67 and the BOOTP `file` field: a TFTP file name or a URL.
    pub file: String,
    /// Option 60 in the reply: "PXEClient" or "HTTPClient" (UEFI HTTP boot
    /// firmware ignores an offer without it).
    pub vendor_class: &'static str,
}

/// The iPXE script every iPXE client is sent to.
pub fn script_url(server: Ipv4Addr, boot: &Boot) -> String {
    format!("http://{server}:{}/boot.ipxe", boot.http_port)
}

/// The boot file for `client`, or None when it gets no boot file (a plain
/// DHCP client, or an architecture no binary is configured for).
pub fn boot_file(client: Client, server: Ipv4Addr, boot: &Boot) -> Option<BootFile> {
    let pxe = |file: &str| BootFile {
        file: file.to_string(),
        vendor_class: "PXEClient",
    };
    match client {
        Client::Ipxe => Some(BootFile {
            file: script_url(server, boot),
            vendor_class: "PXEClient",
        }),
        Client::HttpBoot { arch } => {
            let file = match arch {
                Some(arch::EFI_ARM64_HTTP) => boot.efi_arm64.as_deref()?,
                _ => &boot.efi_x64,
            };
            Some(BootFile {
                file: format!("http://{server}:{}/ipxe/{file}", boot.http_port),
                vendor_class: "HTTPClient",
            })
        }
        Client::Pxe { arch } => match arch {
            None | Some(arch::BIOS) => Some(pxe(&boot.bios)),
            Some(arch::EFI_X64 | arch::EFI_X64_ALT) => Some(pxe(&boot.efi_x64)),
            Some(arch::EFI_ARM64) => boot.efi_arm64.as_deref().map(pxe),
            Some(other) => {
                tracing::info!(arch = other, "no boot file for this client architecture");
                None
            }
        },
        Client::Plain => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::v4::{Architecture, DhcpOption, Message, MessageType, OptionCode, UnknownOption};

    fn req(opts: Vec<DhcpOption>) -> Request {
        let u = Ipv4Addr::UNSPECIFIED;
        let mut m = Message::new_with_id(1, u, u, u, u, &[2, 0, 0, 0, 0, 9]);
        m.opts_mut().insert(DhcpOption::MessageType(MessageType::Discover));
        for o in opts {
            m.opts_mut().insert(o);
        }
        Request::parse(&crate::dhcp::packet::encode(&m)).unwrap()
    }

    fn pxe(arch: u16) -> Request {
        req(vec![
            DhcpOption::ClassIdentifier(b"PXEClient:Arch:00007:UNDI:003016".to_vec()),
            DhcpOption::ClientSystemArchitecture(Architecture(arch)),
        ])
    }

    const S: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

    #[test]
    fn firmware_gets_the_ipxe_binary_for_its_architecture() {
        let b = Boot::default();
        assert_eq!(boot_file(Client::of(&pxe(0)), S, &b).unwrap().file, "undionly.kpxe");
        assert_eq!(boot_file(Client::of(&pxe(7)), S, &b).unwrap().file, "snponly.efi");
        assert_eq!(boot_file(Client::of(&pxe(9)), S, &b).unwrap().file, "snponly.efi");
        assert_eq!(
            boot_file(Client::of(&pxe(11)), S, &b),
            None,
            "Debian 12 ships no arm64 iPXE"
        );
        let arm = Boot {
            efi_arm64: Some("ipxe-arm64.efi".into()),
            ..Boot::default()
        };
        assert_eq!(boot_file(Client::of(&pxe(11)), S, &arm).unwrap().file, "ipxe-arm64.efi");
    }

    #[test]
    fn ipxe_gets_the_script_never_a_binary() {
        let b = Boot::default();
        let by_user_class = req(vec![
            DhcpOption::ClassIdentifier(b"PXEClient:Arch:00007".to_vec()),
            DhcpOption::UserClass(b"iPXE".to_vec()),
        ]);
        let by_175 = req(vec![
            DhcpOption::ClassIdentifier(b"PXEClient:Arch:00000".to_vec()),
            DhcpOption::Unknown(UnknownOption::new(OptionCode::from(175u8), vec![19, 1, 1])),
        ]);
        for r in [by_user_class, by_175] {
            assert_eq!(Client::of(&r), Client::Ipxe);
            assert_eq!(
                boot_file(Client::Ipxe, S, &b).unwrap().file,
                "http://198.51.100.1:8080/boot.ipxe"
            );
        }
    }

    #[test]
    fn http_boot_gets_a_url_and_its_vendor_class() {
        let r = req(vec![
            DhcpOption::ClassIdentifier(b"HTTPClient:Arch:00016:UNDI:003001".to_vec()),
            DhcpOption::ClientSystemArchitecture(Architecture(16)),
        ]);
        let f = boot_file(Client::of(&r), S, &Boot::default()).unwrap();
        assert_eq!(f.file, "http://198.51.100.1:8080/ipxe/snponly.efi");
        assert_eq!(f.vendor_class, "HTTPClient");
    }

    #[test]
    fn plain_clients_get_no_boot_file() {
        let r = req(vec![DhcpOption::ClassIdentifier(b"udhcp 1.35.0".to_vec())]);
        assert_eq!(Client::of(&r), Client::Plain);
        assert_eq!(boot_file(Client::Plain, S, &Boot::default()), None);
    }
}
