//! The command line: global connection and output flags, and one subcommand
//! per agent call. Arguments that are cheap to check (unit names, patterns,
//! states, priorities, times, reasons) are validated here, so that a typo is a
//! usage error (exit 2) naming the value before anything is sent.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use debvisor_api::validate::{JournalPriority, SingleLineString, UnitName, UnitPattern, UnitState, UnitType};
use time::OffsetDateTime;

use crate::timefmt::parse_time_arg;

/// The reason of a reboot or shutdown: one line, at most 200 characters.
pub type Reason = SingleLineString<200>;

/// Manage a DebVisor node through its agent.
///
/// Remote nodes are reached over mutual TLS with the client config bundle
/// (see --config); on a node, the agent's local socket is used when there is
/// no config file.
#[derive(Debug, Parser)]
#[command(name = "debvisorctl", version, about, long_about, propagate_version = true)]
pub struct Cli {
    /// How to reach the agent.
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Print JSON instead of tables: one object, or one object per line
    /// (JSON Lines) for streams.
    #[arg(long, global = true, help_heading = "Output")]
    pub json: bool,
    /// Seconds to wait for the connection and for each answer; follow
    /// streams (logs -f, status --watch) wait for ever.
    #[arg(long, value_name = "SECS", default_value_t = 30, global = true, help_heading = "Output",
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout: u64,
    /// The command.
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// The connection flags, global to every command.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Connection")]
pub struct ConnArgs {
    /// Client config file (the node's client bundle) [default: $XDG_CONFIG_HOME/debvisor/config.toml,
    /// else ~/.config/debvisor/config.toml]
    #[arg(long, env = "DEBVISORCONFIG", value_name = "PATH", global = true)]
    pub config: Option<PathBuf>,
    /// Context of the client config to use instead of its current one.
    #[arg(long, value_name = "NAME", global = true)]
    pub context: Option<String>,
    /// Agent address, replacing the context's endpoints (port 7443 when
    /// omitted).
    #[arg(long, env = "DEBVISOR_ENDPOINT", value_name = "HOST:PORT", global = true)]
    pub endpoint: Option<String>,
    /// Use the agent's local Unix socket at PATH instead of TLS [the default on a node without a config
    /// file: /run/debvisor/agent.sock]
    #[arg(long, value_name = "PATH", global = true)]
    pub socket: Option<PathBuf>,
    /// First contact without a bundle: trust exactly the server certificate with this SHA-256 (printed on
    /// the node's serial console); needs --endpoint.
    #[arg(long, env = "DEBVISOR_FINGERPRINT", value_name = "SHA256", global = true)]
    pub fingerprint: Option<String>,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Show the node's identity, image, boot slot and resource figures.
    Status(StatusArgs),
    /// List, inspect and control systemd units.
    #[command(subcommand)]
    Units(UnitsCmd),
    /// Print the journal (like journalctl -o short-iso).
    Logs(LogsArgs),
    /// Show the node's health checks, boot gate and alerts.
    ///
    /// Prints the node's state, the boot gate (state, slot, deadline or
    /// decision time, reason), the machine config's error if any, a table of
    /// the checks, then the recent alerts. The checks run in debvisor-init;
    /// the agent passes its answers on.
    ///
    /// Exit code: 0 when the node is not DEGRADED and no required check
    /// fails, 1 when it is DEGRADED or a required check fails (with --watch:
    /// the state last shown), or on an error.
    #[command(verbatim_doc_comment)]
    Health(HealthArgs),
    /// Query, export and verify the audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// A/B updates: the slot table, installs, boot marks and rollback.
    #[command(subcommand)]
    Update(UpdateCmd),
    /// The PXE provisioner (on a node that runs it): profiles, groups,
    /// machines seen and DHCP leases.
    #[command(subcommand)]
    Provision(ProvisionCmd),
    /// Virtual machines: create, start, stop, snapshots, clones, the
    /// storage pool's volumes.
    #[command(subcommand)]
    Vm(VmCmd),
    /// Reboot the node.
    Reboot(PowerArgs),
    /// Power the node off.
    Shutdown(PowerArgs),
}

/// `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Keep watching: redraw on every change until Ctrl-C.
    #[arg(short, long)]
    pub watch: bool,
    /// With --watch: minimum milliseconds between updates (agent default 1000, at least 250).
    #[arg(long, value_name = "MS", default_value_t = 0, requires = "watch")]
    pub interval: u32,
}

/// `health`.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// Also show each check's earlier results.
    #[arg(long)]
    pub history: bool,
    /// Only checks of this kind.
    #[arg(short, long, value_name = "KIND")]
    pub kind: Option<CheckKind>,
    /// Keep watching: print again on every change until Ctrl-C (the screen
    /// is cleared only on a terminal).
    #[arg(short, long)]
    pub watch: bool,
}

/// The kinds of health checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CheckKind {
    /// A unit active and its health endpoint answering.
    Service,
    /// The default route's gateway.
    Network,
    /// Name resolution.
    Dns,
    /// The data partition: free space, read-only remounts.
    Storage,
    /// Memory, load, disk.
    Resources,
    /// Certificate expiry.
    Certificate,
    /// The machine config.
    Config,
}

impl std::fmt::Display for CheckKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = self.to_possible_value().expect("no variant is skipped");
        f.write_str(v.get_name())
    }
}

/// `units ...`.
#[derive(Debug, Subcommand)]
pub enum UnitsCmd {
    /// List units, sorted by name.
    List(ListArgs),
    /// Show one unit's details.
    Show(UnitArg),
    /// Start a unit and wait for the job.
    Start(UnitArg),
    /// Stop a unit and wait for the job.
    Stop(UnitArg),
    /// Restart a unit (start it when stopped) and wait for the job.
    Restart(UnitArg),
    /// Enable a unit file (create its [Install] symlinks).
    Enable(UnitArg),
    /// Disable a unit file (remove its [Install] symlinks).
    Disable(UnitArg),
}

/// `units list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only units in this state (active, failed, running, ...); repeat for several.
    #[arg(long = "state", value_name = "STATE")]
    pub states: Vec<UnitState>,
    /// Only units of this type (service, timer, ...); repeat for several.
    #[arg(short = 't', long = "type", value_name = "TYPE")]
    pub types: Vec<UnitType>,
    /// Also list installed unit files that systemd has not loaded.
    #[arg(short, long)]
    pub all: bool,
    /// Glob patterns on the unit name, e.g. 'debvisor-*'.
    #[arg(value_name = "PATTERN")]
    pub patterns: Vec<UnitPattern>,
}

/// One unit name.
#[derive(Debug, Args)]
pub struct UnitArg {
    /// The unit, with its type suffix, e.g. ssh.service.
    #[arg(value_name = "NAME", value_parser = parse_unit_name)]
    pub name: UnitName,
}

/// `logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Only entries of this unit.
    #[arg(short, long, value_name = "UNIT", value_parser = parse_unit_name)]
    pub unit: Option<UnitName>,
    /// Only entries of this priority or more important: emerg, alert, crit, err, warning, notice, info,
    /// debug, or 0-7.
    #[arg(short, long, value_name = "PRIORITY")]
    pub priority: Option<JournalPriority>,
    /// Only entries at or after TIME: RFC 3339, a date, or relative (10m, 2h, 1d).
    #[arg(long, value_name = "TIME", value_parser = parse_time_arg)]
    pub since: Option<OffsetDateTime>,
    /// Show the last N entries [agent default: 100 without --since].
    #[arg(short = 'n', long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub lines: Option<u32>,
    /// Keep printing new entries until Ctrl-C.
    #[arg(short, long)]
    pub follow: bool,
}

/// `update ...`.
#[derive(Debug, Subcommand)]
pub enum UpdateCmd {
    /// Show the slots: booted, primary (next boot), boot marks, installed
    /// bundle versions, and the running or last install.
    Status,
    /// Install a RAUC bundle into the slot that is not booted, with a
    /// progress bar; reboot afterwards to run it.
    ///
    /// SOURCE is an http:// or https:// URL (the agent downloads it) or a
    /// local file (uploaded to the agent). Ctrl-C stops following, not the
    /// install; `debvisorctl update watch` follows it again.
    Install(InstallArgs),
    /// Follow the running install (or show how the last one ended).
    Watch,
    /// Make the other slot the one to boot next, if it is marked good;
    /// reboot afterwards.
    Rollback,
    /// Mark a slot good: the boot loader keeps booting it.
    MarkGood(MarkArgs),
    /// Mark a slot bad: the boot loader no longer boots it.
    MarkBad(MarkArgs),
}

/// `update install`.
#[derive(Debug, Args)]
pub struct InstallArgs {
    /// An http(s) URL of the bundle, or a local bundle file (update.raucb).
    #[arg(value_name = "URL|FILE")]
    pub source: String,
    /// The bundle's expected sha256 (64 hex digits); for files it is
    /// computed when omitted.
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
}

/// `provision ...`.
#[derive(Debug, Subcommand)]
pub enum ProvisionCmd {
    /// List the profiles (how machines boot: live or install, image, disk).
    Profiles,
    /// Show, create or replace, or delete one profile.
    #[command(subcommand)]
    Profile(CatalogCmd),
    /// List the groups (which machines get which profile).
    Groups,
    /// Show, create or replace, or delete one group.
    #[command(subcommand)]
    Group(CatalogCmd),
    /// List the machines the provisioner has seen, most recent first.
    Machines(MachinesArgs),
    /// Show one machine, label it, or forget its install.
    #[command(subcommand)]
    Machine(MachineCmd),
    /// List the DHCP leases of the provisioner's own DHCP server.
    Leases(LeasesArgs),
}

/// `provision profile|group ...`.
#[derive(Debug, Subcommand)]
pub enum CatalogCmd {
    /// Show one, with every field.
    Show(NameArg),
    /// Create or replace one from a TOML file (the format of
    /// `debvisor-provision put-profile` and `put-group`).
    Put(FileArg),
    /// Delete one (a profile only when no group uses it).
    Delete(NameArg),
}

/// A catalog name.
#[derive(Debug, Args)]
pub struct NameArg {
    /// The name (a-z 0-9 -).
    #[arg(value_name = "NAME")]
    pub name: String,
}

/// A definition file.
#[derive(Debug, Args)]
pub struct FileArg {
    /// The TOML file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// `provision machines`.
#[derive(Debug, Args)]
pub struct MachinesArgs {
    /// Only machines last given this profile.
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// Only machines that finished an install.
    #[arg(long, conflicts_with = "not_installed")]
    pub installed: bool,
    /// Only machines that have not installed.
    #[arg(long)]
    pub not_installed: bool,
}

/// `provision machine ...`.
#[derive(Debug, Subcommand)]
pub enum MachineCmd {
    /// Show one machine and the group and profile it would get now.
    Show(MacArg),
    /// Replace a machine's labels (group selectors match them).
    Label(LabelArgs),
    /// Forget that a machine installed: its next PXE boot follows its profile
    /// again instead of booting its disk.
    Reset(MacArg),
    /// Forget a machine's record (labels, install state); it is recorded
    /// again when it boots.
    Delete(MacArg),
}

/// A machine.
#[derive(Debug, Args)]
pub struct MacArg {
    /// Its MAC, e.g. 52:54:00:ab:cd:ef.
    #[arg(value_name = "MAC")]
    pub mac: String,
}

/// `provision machine label`.
#[derive(Debug, Args)]
pub struct LabelArgs {
    /// Its MAC, e.g. 52:54:00:ab:cd:ef.
    #[arg(value_name = "MAC")]
    pub mac: String,
    /// The labels, KEY=VALUE; none removes them all.
    #[arg(value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE (e.g. rack=r1)")),
    }
}

/// `provision leases`.
#[derive(Debug, Args)]
pub struct LeasesArgs {
    /// Also list expired leases still on record.
    #[arg(long)]
    pub all: bool,
}

/// `update mark-good|mark-bad`.
#[derive(Debug, Args)]
pub struct MarkArgs {
    /// booted, other, or a slot name such as rootfs.1.
    #[arg(value_name = "SLOT", default_value = "booted")]
    pub slot: String,
}

/// `audit ...`.
#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// List records, newest first.
    Query(QueryArgs),
    /// Write every matching record, oldest first, as JSON Lines or CSV.
    Export(ExportArgs),
    /// Check the hash chain; exit 3 when it is broken.
    Verify,
}

/// Filters shared by `audit query` and `audit export`.
#[derive(Debug, Clone, Args)]
pub struct AuditFilter {
    /// Only records of this actor, e.g. admin, uid:0, console:alice.
    #[arg(long, value_name = "ACTOR")]
    pub actor: Option<String>,
    /// Only records of this action, e.g. units.Restart; a trailing * matches a prefix (units.*).
    #[arg(long, value_name = "ACTION")]
    pub action: Option<String>,
    /// Only records about this target, e.g. ssh.service.
    #[arg(long, value_name = "TARGET")]
    pub target: Option<String>,
    /// Only successful or failed calls.
    #[arg(long, value_name = "RESULT")]
    pub result: Option<Outcome>,
    /// Only records at or after TIME: RFC 3339, a date, or relative (10m, 2h, 1d).
    #[arg(long, value_name = "TIME", value_parser = parse_time_arg)]
    pub since: Option<OffsetDateTime>,
    /// Only records before TIME.
    #[arg(long, value_name = "TIME", value_parser = parse_time_arg)]
    pub until: Option<OffsetDateTime>,
}

/// The outcome filter of audit records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Outcome {
    /// Calls that succeeded.
    Ok,
    /// Calls that failed.
    Error,
}

/// `audit query`.
#[derive(Debug, Args)]
pub struct QueryArgs {
    /// The filters.
    #[command(flatten)]
    pub filter: AuditFilter,
    /// Records per page (1-1000) [agent default: 100].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: Option<u32>,
    /// Fetch every page, not only the first.
    #[arg(long)]
    pub all: bool,
}

/// `audit export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The filters.
    #[command(flatten)]
    pub filter: AuditFilter,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
    pub format: ExportFormat,
    /// Write to FILE (complete or not at all) instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// One JSON object per line.
    Jsonl,
    /// CSV with a header line.
    Csv,
}

/// `reboot` and `shutdown`.
#[derive(Debug, Args)]
pub struct PowerArgs {
    /// Why, recorded in the audit log (one line, at most 200 characters).
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<Reason>,
    /// Do not ask for confirmation (required when stdin is not a terminal).
    #[arg(short = 'y', long)]
    pub yes: bool,
}

/// Parses a unit name, suggesting `NAME.service` when the suffix is missing
/// (systemctl would add it; the agent does not, so neither do we).
pub fn parse_unit_name(s: &str) -> Result<UnitName, String> {
    UnitName::try_from(s).map_err(|e| {
        let guess = format!("{s}.service");
        if UnitType::of_name(s).is_none() && UnitName::try_from(guess.as_str()).is_ok() {
            format!("{e}. Did you mean {guess}?")
        } else {
            e.to_string()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn unit_names_need_a_suffix_and_get_a_suggestion() {
        assert_eq!(parse_unit_name("ssh.service").unwrap().as_str(), "ssh.service");
        let e = parse_unit_name("ssh").unwrap_err();
        assert!(e.contains("\"ssh\"") && e.contains("Did you mean ssh.service?"), "{e}");
        let e = parse_unit_name("-rf.service").unwrap_err();
        assert!(e.contains("-rf.service") && !e.contains("Did you mean"), "{e}");
    }

    #[test]
    fn priorities_take_names_and_numbers() {
        let p = |s: &str| {
            Cli::try_parse_from(["debvisorctl", "logs", "-p", s]).map(|c| match c.cmd {
                Cmd::Logs(l) => l.priority.unwrap().value(),
                _ => unreachable!(),
            })
        };
        assert_eq!(p("err").unwrap(), 3);
        assert_eq!(p("warning").unwrap(), 4);
        assert_eq!(p("debug").unwrap(), 7);
        assert_eq!(p("0").unwrap(), 0);
        assert_eq!(p("6").unwrap(), 6);
        let e = p("8").unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("\"8\""), "{e}");
        assert!(p("loud").is_err());
    }

    #[test]
    fn bad_unit_names_are_usage_errors_naming_the_value() {
        let e = Cli::try_parse_from(["debvisorctl", "units", "restart", "x"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("\"x\""), "{e}");
    }

    #[test]
    fn global_flags_go_anywhere() {
        let c = Cli::try_parse_from([
            "debvisorctl",
            "units",
            "list",
            "--json",
            "--socket",
            "/s",
            "--state",
            "failed",
        ])
        .unwrap();
        assert!(c.json);
        assert_eq!(c.conn.socket.as_deref(), Some(std::path::Path::new("/s")));
        assert_eq!(c.timeout, 30);
    }

    #[test]
    fn health_kinds_are_checked_and_print_as_on_the_wire() {
        let c = Cli::try_parse_from(["debvisorctl", "health", "--kind", "certificate", "--history"]).unwrap();
        match c.cmd {
            Cmd::Health(h) => {
                assert_eq!(h.kind.unwrap().to_string(), "certificate");
                assert!(h.history && !h.watch);
            }
            _ => unreachable!(),
        }
        let e = Cli::try_parse_from(["debvisorctl", "health", "--kind", "disk"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("disk"), "{e}");
    }

    #[test]
    fn reasons_are_single_lines() {
        assert!(Cli::try_parse_from(["debvisorctl", "reboot", "--reason", "kernel update"]).is_ok());
        assert!(Cli::try_parse_from(["debvisorctl", "reboot", "--reason", "a\nb"]).is_err());
        assert!(Cli::try_parse_from(["debvisorctl", "reboot", "--reason", &"x".repeat(201)]).is_err());
    }
}

/// `vm ...`.
#[derive(Debug, Subcommand)]
pub enum VmCmd {
    /// List the VMs with their state, vCPUs and memory.
    List,
    /// Follow the VMs' lifecycle events (started, stopped, ...) as they
    /// happen, after a line for each VM as it is now; Ctrl-C stops.
    Watch(WatchVmArgs),
    /// Show one VM with its disks and interfaces.
    Show(VmArg),
    /// Create a VM (it is not started): disks, interfaces, boot order.
    Create(CreateVmArgs),
    /// Start a VM that is off.
    Start(VmArg),
    /// Ask the guest to shut down (ACPI power button).
    Shutdown(VmArg),
    /// Switch a VM off at once, like pulling the plug.
    Stop(VmArg),
    /// Ask the guest to reboot.
    Reboot(VmArg),
    /// Pause a running VM.
    Suspend(VmArg),
    /// Resume a paused VM.
    Resume(VmArg),
    /// Start a VM with the node, or not.
    Autostart(AutostartArgs),
    /// Delete a VM that is off, with its snapshots and (unless --keep-disks)
    /// its disk volumes; attached ISOs are kept.
    Delete(DeleteVmArgs),
    /// Copy a VM that is off: new disks (copies), new MACs.
    Clone(CloneVmArgs),
    /// Take, list, revert to and delete snapshots.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// List the storage pool's volumes (disks, images, ISOs).
    Volumes,
    /// Attach this terminal to a running VM's serial console; Ctrl-]
    /// leaves (the end of piped input too).
    Console(VmArg),
    /// Forward a running VM's VNC display to a local port for a VNC viewer;
    /// Ctrl-C stops.
    Display(DisplayArgs),
}

/// `vm display`.
#[derive(Debug, Args)]
pub struct DisplayArgs {
    /// The VM's name.
    #[arg(value_name = "VM")]
    pub name: String,
    /// Where viewers connect (port 0: any free port, printed).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:5900")]
    pub listen: std::net::SocketAddr,
}

/// The lifecycle actions that take a VM name and answer with the VM.
#[derive(Debug, Clone, Copy)]
pub enum VmAction {
    /// `vm start`.
    Start,
    /// `vm shutdown`.
    Shutdown,
    /// `vm stop`.
    Stop,
    /// `vm reboot`.
    Reboot,
    /// `vm suspend`.
    Suspend,
    /// `vm resume`.
    Resume,
}

impl VmAction {
    /// The verb, for errors (`Cannot shut down web-1`).
    pub fn verb(self) -> &'static str {
        match self {
            VmAction::Start => "start",
            VmAction::Shutdown => "shut down",
            VmAction::Stop => "stop",
            VmAction::Reboot => "reboot",
            VmAction::Suspend => "suspend",
            VmAction::Resume => "resume",
        }
    }

    /// What was done, for the answer.
    pub fn done(self) -> &'static str {
        match self {
            VmAction::Start => "started",
            VmAction::Shutdown => "asked to shut down",
            VmAction::Stop => "stopped",
            VmAction::Reboot => "asked to reboot",
            VmAction::Suspend => "suspended",
            VmAction::Resume => "resumed",
        }
    }
}

/// A VM.
#[derive(Debug, Args)]
pub struct VmArg {
    /// The VM's name.
    #[arg(value_name = "VM")]
    pub name: String,
}

/// `vm watch`.
#[derive(Debug, Args)]
pub struct WatchVmArgs {
    /// Only this VM's events.
    #[arg(value_name = "VM")]
    pub name: Option<String>,
}

/// `vm create`.
#[derive(Debug, Args)]
pub struct CreateVmArgs {
    /// The VM's name (A-Z a-z 0-9 . _ -).
    #[arg(value_name = "VM")]
    pub name: String,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    /// Memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 1024)]
    pub memory: u64,
    /// Boot with UEFI (OVMF) instead of BIOS.
    #[arg(long)]
    pub uefi: bool,
    /// A disk, repeatable, in order: new:SIZE (MiB, or 10G), import:VOLUME
    /// (a copy of an image of the pool) or iso:VOLUME (a CD-ROM).
    #[arg(long, value_name = "SPEC")]
    pub disk: Vec<String>,
    /// An interface, repeatable: nat or bridge:NAME, then ,vlan=N and
    /// ,mac=52:54:00:.. if wanted.
    #[arg(long, value_name = "SPEC")]
    pub nic: Vec<String>,
    /// Boot order: disk, cdrom, network, comma-separated (default: those the
    /// VM has, in that order).
    #[arg(long, value_name = "DEVICES")]
    pub boot: Vec<String>,
    /// Start the VM with the node.
    #[arg(long)]
    pub autostart: bool,
}

/// `vm autostart`.
#[derive(Debug, Args)]
pub struct AutostartArgs {
    /// The VM's name.
    #[arg(value_name = "VM")]
    pub name: String,
    /// on or off.
    #[arg(value_name = "on|off")]
    pub state: String,
}

/// `vm delete`.
#[derive(Debug, Args)]
pub struct DeleteVmArgs {
    /// The VM's name.
    #[arg(value_name = "VM")]
    pub name: String,
    /// Keep the VM's disk volumes in the pool.
    #[arg(long)]
    pub keep_disks: bool,
}

/// `vm clone`.
#[derive(Debug, Args)]
pub struct CloneVmArgs {
    /// The VM to copy (off).
    #[arg(value_name = "VM")]
    pub name: String,
    /// The new VM's name.
    #[arg(value_name = "NEW")]
    pub new_name: String,
}

/// `vm snapshot ...`.
#[derive(Debug, Subcommand)]
pub enum SnapshotCmd {
    /// List a VM's snapshots, oldest first.
    List(VmArg),
    /// Take a snapshot (running or not).
    Create(SnapshotCreateArgs),
    /// Return a VM to a snapshot.
    Revert(SnapshotArgs),
    /// Delete a snapshot.
    Delete(SnapshotArgs),
}

/// A snapshot of a VM.
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// The VM's name.
    #[arg(value_name = "VM")]
    pub name: String,
    /// The snapshot's name.
    #[arg(value_name = "SNAPSHOT")]
    pub snapshot: String,
}

/// `vm snapshot create`.
#[derive(Debug, Args)]
pub struct SnapshotCreateArgs {
    /// The VM's name.
    #[arg(value_name = "VM")]
    pub name: String,
    /// The snapshot's name.
    #[arg(value_name = "SNAPSHOT")]
    pub snapshot: String,
    /// What it is for (one line).
    #[arg(long, short)]
    pub description: Option<String>,
}
