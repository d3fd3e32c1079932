//! `peerline contacts add|list|remove`: the people this account knows, by
//! name, kept in the data directory's store (`contacts` table).
//!
//! A contact is a name and the account key it resolved to when added
//! (after the owner's root rotations, as `lookup` shows). Contacts are who
//! this device reveals its direct addresses to when they call (hole
//! punching; strangers get a relayed path): the daemon hands them to the
//! core at start.

use crate::account::{
    checked_name, fail, in_use, required_data_dir, runtime, spinner, NetworkArgs, Session,
    EXIT_CODES, EXIT_NO, EXIT_NOT_NOW,
};
use crate::node::config::key_hex;
use crate::node::data_dir::{self, DataDir};
use anyhow::Result;
use peerline_core::names::{normalize, Name};
use peerline_net::clock::wall_clock_s;
use peerline_proto::PublicKey;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Subcommand)]
pub enum ContactsCommand {
    /// Add a contact by name: looks the name up on the network and keeps
    /// the account it belongs to now.
    #[command(after_help = EXIT_CODES)]
    Add(AddArgs),
    /// List the contacts (from the data directory only).
    #[command(after_help = EXIT_CODES)]
    List(LocalArgs),
    /// Remove a contact by name (from the data directory only).
    #[command(after_help = EXIT_CODES)]
    Remove(RemoveArgs),
    /// Look every contact up again and follow those whose account moved
    /// to a new root key (`peerline account rotate` on their side).
    #[command(after_help = EXIT_CODES)]
    Refresh(RefreshArgs),
}

#[derive(clap::Args)]
pub struct RefreshArgs {
    #[command(flatten)]
    pub network: NetworkArgs,
}

#[derive(clap::Args)]
pub struct AddArgs {
    /// The contact's name (normalized as at registration).
    pub name: String,
    #[command(flatten)]
    pub network: NetworkArgs,
}

#[derive(clap::Args)]
pub struct LocalArgs {
    /// This device's data directory.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct RemoveArgs {
    /// The contact's name.
    pub name: String,
    #[command(flatten)]
    pub local: LocalArgs,
}

/// The data directory's store; exit 1 when it holds no account.
fn account_dir(data_dir: &Option<PathBuf>) -> Result<DataDir> {
    let path = required_data_dir(data_dir)?;
    DataDir::open_existing(path).map_err(in_use)?.ok_or_else(|| {
        fail(
            EXIT_NO,
            format!(
                "no account in {}; create one with `peerline account create <name>` or log in with `peerline login <name>`",
                path.display()
            ),
        )
    })
}

/// Looks each name up through one short-lived client: the account that
/// owns it now, `None` when nobody does (a failed lookup is an error).
fn resolve(
    data: &DataDir,
    network: &NetworkArgs,
    names: &[Name],
) -> Result<Vec<Option<PublicKey>>> {
    let bar = spinner();
    bar.set_message("reaching the network");
    let outcome = runtime()?.block_on(async {
        let flush = Duration::from_millis(500);
        let mut session = Session::for_account(data, network, flush).await?;
        let mut owners = Vec::with_capacity(names.len());
        for name in names {
            bar.set_message(format!("looking up {}", name.as_str()));
            match session.lookup_name(name).await {
                Ok(answer) => owners.push(answer),
                Err(error) => {
                    session.finish(Some(data)).await;
                    return Err(error);
                }
            }
        }
        session.finish(Some(data)).await;
        Ok(owners)
    });
    bar.finish_and_clear();
    names
        .iter()
        .zip(outcome?)
        .map(|(name, answer)| match answer {
            Some(Ok(owned)) => Ok(owned.map(|owned| owned.owner)),
            Some(Err(failure)) => Err(fail(
                EXIT_NOT_NOW,
                format!(
                    "the network could not answer for {} ({}); try again in a minute",
                    name.as_str(),
                    crate::account::failure_text(failure)
                ),
            )),
            None => Err(fail(
                EXIT_NOT_NOW,
                format!(
                    "the network did not answer for {}; try again in a minute",
                    name.as_str()
                ),
            )),
        })
        .collect()
}

/// `peerline contacts add <name>`.
pub fn add(args: AddArgs) -> Result<ExitCode> {
    let name = checked_name(&args.name)?;
    let data = account_dir(&args.network.data_dir)?;
    let owners = resolve(&data, &args.network, std::slice::from_ref(&name))?;
    let Some(owner) = owners.into_iter().next().flatten() else {
        return Err(fail(
            EXIT_NO,
            format!("nobody has registered {}", name.as_str()),
        ));
    };
    let own = data.store().identity()?.cert.body.account_key;
    if owner == own {
        return Err(fail(
            EXIT_NO,
            format!("{} is this account's own name", name.as_str()),
        ));
    }
    data.store()
        .add_contact(name.as_str(), owner, wall_clock_s())?;
    println!("added    {} (account {})", name.as_str(), key_hex(&owner));
    println!("note: a running `peerline node` learns it at its next start");
    Ok(ExitCode::SUCCESS)
}

/// `peerline contacts refresh`.
pub fn refresh(args: RefreshArgs) -> Result<ExitCode> {
    let data = account_dir(&args.network.data_dir)?;
    let contacts = data.store().contacts()?;
    let names: Vec<Name> = contacts
        .iter()
        .filter_map(|contact| normalize(&contact.name).ok())
        .collect();
    let owners = resolve(&data, &args.network, &names)?;
    let mut moved = 0;
    for (name, owner) in names.iter().zip(owners) {
        let saved = contacts.iter().find(|c| c.name == name.as_str());
        match (owner, saved) {
            (Some(owner), Some(saved)) if owner != saved.account_key => {
                data.store()
                    .add_contact(name.as_str(), owner, wall_clock_s())?;
                moved += 1;
                println!(
                    "moved    {} from {} to {}",
                    name.as_str(),
                    key_hex(&saved.account_key),
                    key_hex(&owner)
                );
            }
            (None, _) => println!("gone     {} (nobody has registered it now)", name.as_str()),
            _ => {}
        }
    }
    println!("checked  {} contacts, {moved} moved", names.len());
    Ok(ExitCode::SUCCESS)
}

/// `peerline contacts list`.
pub fn list(args: LocalArgs) -> Result<ExitCode> {
    let data = account_dir(&args.data_dir)?;
    let contacts = data.store().contacts()?;
    if contacts.is_empty() {
        println!("no contacts yet (`peerline contacts add <name>` adds one)");
    }
    for contact in contacts {
        println!(
            "{:<20} {}  added {}",
            contact.name,
            key_hex(&contact.account_key),
            data_dir::utc_time(contact.added_unix_s)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `peerline contacts remove <name>`.
pub fn remove(args: RemoveArgs) -> Result<ExitCode> {
    let name = checked_name(&args.name)?;
    let data = account_dir(&args.local.data_dir)?;
    if !data.store().remove_contact(name.as_str())? {
        return Err(fail(
            EXIT_NO,
            format!("there is no contact named {}", name.as_str()),
        ));
    }
    println!("removed  {}", name.as_str());
    Ok(ExitCode::SUCCESS)
}
