//! `debvisorctl`: the command-line client of the DebVisor node agent.
//!
//! It reaches the agent over mutual TLS with a client config bundle, over the
//! local Unix socket on a node, or over TLS pinned by `--fingerprint` for
//! first contact (see [`connect`]). Each service of the v1 API has its
//! module of commands; [`output`] draws tables and JSON.
//!
//! Exit codes: 0 success, 1 error or (`health`) a degraded node or failing
//! required check, 2 usage (bad arguments), 3 broken audit chain
//! (`audit verify`).

mod audit;
mod cli;
mod connect;
mod console;
mod diagnose;
mod display;
mod health;
mod logs;
mod node;
mod output;
mod provision;
mod rpc;
mod timefmt;
mod units;
mod update;
mod vm;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::cli::{Cli, Cmd};
use crate::node::Power;
use crate::rpc::{Ctx, RpcError};

/// An invalid command line found after parsing; exits with 2 like clap's own
/// usage errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

fn main() -> ExitCode {
    // Before any thread exists (see `init_local_offset`).
    timefmt::init_local_offset();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("debvisorctl: Cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprint!("{}", render_error(&e));
            if e.chain().any(|c| c.is::<UsageError>()) {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    let timeout = Duration::from_secs(cli.timeout);
    let plan = connect::plan(&cli.conn)?;
    let channel = connect::connect(&plan, timeout).await?;
    let ctx = Ctx {
        channel,
        via: plan.via(),
        json: cli.json,
        timeout,
    };
    match &cli.cmd {
        Cmd::Status(args) => node::status(&ctx, args).await?,
        Cmd::Units(cmd) => units::run(&ctx, cmd).await?,
        Cmd::Logs(args) => logs::run(&ctx, args).await?,
        Cmd::Health(args) => return health::run(&ctx, args).await,
        Cmd::Audit(cmd) => return audit::run(&ctx, cmd).await,
        Cmd::Update(cmd) => update::run(&ctx, cmd).await?,
        Cmd::Provision(cmd) => provision::run(&ctx, cmd).await?,
        Cmd::Vm(cmd) => vm::run(&ctx, cmd).await?,
        Cmd::Reboot(args) => node::power(&ctx, Power::Reboot, args).await?,
        Cmd::Shutdown(args) => node::power(&ctx, Power::Shutdown, args).await?,
    }
    Ok(0)
}

/// True when stdout was closed by its reader (`debvisorctl logs | head`):
/// not an error.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}

/// The error chain, once: the message, each cause on its own line, and the
/// next step when one is known.
fn render_error(e: &anyhow::Error) -> String {
    let mut out = format!("debvisorctl: {e}\n");
    let mut last = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        // Transparent wrappers repeat their source's message.
        if text != last {
            out.push_str(&format!("  caused by: {text}\n"));
        }
        last = text;
    }
    if let Some(next) = next_step(e) {
        out.push_str(&format!("  next: {next}\n"));
    }
    out
}

/// The first next step that an error of the chain knows.
fn next_step(e: &anyhow::Error) -> Option<String> {
    e.chain().find_map(|c| {
        if let Some(r) = c.downcast_ref::<RpcError>() {
            Some(r.diagnosis().next)
        } else {
            c.downcast_ref::<connect::ConnectError>().and_then(|ce| ce.hint())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::Via;

    #[test]
    fn errors_print_the_chain_once_with_the_next_step() {
        let rpc = RpcError {
            status: tonic::Status::not_found("unit nope.service is not loaded"),
            via: Via::Socket("/run/debvisor/agent.sock".into()),
        };
        let e = anyhow::Error::new(rpc).context("Cannot restart nope.service");
        assert_eq!(
            render_error(&e),
            "debvisorctl: Cannot restart nope.service\n  \
             caused by: not found: unit nope.service is not loaded\n  \
             next: Check the name; `debvisorctl units list --all` lists the units the node knows.\n"
        );
    }

    #[test]
    fn broken_pipes_are_not_errors() {
        let e = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(is_broken_pipe(&e));
        assert!(!is_broken_pipe(&anyhow::anyhow!("x")));
    }
}
