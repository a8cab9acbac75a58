//! `trellis token create` and `trellis ca roots|rotate|remove`: the identity
//! API (docs/api.md) from the command line.

use clap::{Args, Subcommand};
use http::Method;

use crate::client::Client;
use crate::{Failure, ServerArgs};

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Make a bootstrap token for one namespace and service account; prints
    /// the token (a secret: give it to that workload's proxy only).
    Create(TokenCreateArgs),
}

#[derive(Args, Debug)]
pub struct TokenCreateArgs {
    #[arg(long, short = 'n')]
    namespace: String,
    #[arg(long)]
    service_account: String,
    /// How long the token may be used to get certificates (e.g. 10m, 1h, 7d; at most 30d).
    #[arg(long, default_value = "1h")]
    ttl: String,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Subcommand, Debug)]
pub enum CaCommand {
    /// The trusted roots, and which one signs.
    Roots(ServerOnly),
    /// Make a new root that signs from now on; the old ones stay trusted.
    Rotate(ServerOnly),
    /// Stop trusting a root (not the signer), once every workload has a
    /// certificate from the new one.
    Remove(RemoveArgs),
}

#[derive(Args, Debug)]
pub struct ServerOnly {
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Args, Debug)]
pub struct RemoveArgs {
    /// The root's SHA-256 fingerprint, as `trellis ca roots` shows it.
    fingerprint: String,
    #[command(flatten)]
    server: ServerArgs,
}

pub fn token(c: TokenCommand) -> Result<(), Failure> {
    let TokenCommand::Create(a) = c;
    let client = Client::new(&a.server.server)?;
    let body = serde_json::json!({
        "namespace": a.namespace,
        "serviceAccount": a.service_account,
        "ttl": a.ttl,
    });
    let answer = client.call(
        Method::POST,
        "/api/v1/tokens",
        Some("application/json"),
        serde_json::to_vec(&body).unwrap_or_default(),
    )?;
    let token = answer["token"]
        .as_str()
        .ok_or_else(|| Failure::new("the control plane answered without a token"))?;
    // The token alone on stdout, so `TOKEN=$(trellis token create ...)` works.
    println!("{token}");
    eprintln!(
        "token {} for {}, expires at unix time {}",
        answer["id"].as_str().unwrap_or("?"),
        answer["spiffeId"].as_str().unwrap_or("?"),
        answer["expires"]
    );
    Ok(())
}

pub fn ca(c: CaCommand) -> Result<(), Failure> {
    match c {
        CaCommand::Roots(a) => {
            let client = Client::new(&a.server.server)?;
            let answer = client.call(Method::GET, "/api/v1/ca/roots", None, Vec::new())?;
            println!(
                "{:<64}  {:<6}  {:<20}  SUBJECT",
                "FINGERPRINT", "SIGNER", "NOT AFTER"
            );
            for r in answer["roots"].as_array().into_iter().flatten() {
                println!(
                    "{:<64}  {:<6}  {:<20}  {}",
                    r["fingerprint"].as_str().unwrap_or("?"),
                    if r["signer"].as_bool().unwrap_or(false) {
                        "yes"
                    } else {
                        "no"
                    },
                    r["notAfter"].as_str().unwrap_or("?"),
                    r["subject"].as_str().unwrap_or("?"),
                );
            }
        }
        CaCommand::Rotate(a) => {
            let client = Client::new(&a.server.server)?;
            let answer = client.call(Method::POST, "/api/v1/ca/roots", None, Vec::new())?;
            println!(
                "root {} created; it signs from now on, the old roots stay trusted until `trellis ca remove`",
                answer["root"]["fingerprint"].as_str().unwrap_or("?")
            );
        }
        CaCommand::Remove(a) => {
            let client = Client::new(&a.server.server)?;
            let answer = client.call(
                Method::DELETE,
                &format!("/api/v1/ca/roots/{}", a.fingerprint),
                None,
                Vec::new(),
            )?;
            println!(
                "root {} is no longer trusted",
                answer["removed"]["fingerprint"].as_str().unwrap_or("?")
            );
        }
    }
    Ok(())
}
