//! `gatewayd token create|list|revoke`: through the running daemon's control socket, else against the store directly
//! ([`crate::app::control::run_cli`]).

use super::{CliError, TokenCommand};
use crate::app;
use crate::app::control::Request;
use crate::tokens::NewToken;

pub fn execute(cmd: TokenCommand) -> Result<(), CliError> {
    let (config_arg, req) = match cmd {
        TokenCommand::Create { role, departments, employee, config } => {
            let new = NewToken { role, departments, employee };
            new.validate().map_err(CliError::TokenUsage)?;
            let NewToken { role, departments, employee } = new;
            (config, Request::TokenCreate { role, departments, employee })
        }
        TokenCommand::List { config } => (config, Request::TokenList),
        TokenCommand::Revoke { id, config } => (config, Request::TokenRevoke { id }),
    };
    let config = app::load_config(&config_arg.path()).map_err(CliError::Config)?;
    let resp = crate::app::control::run_cli(&config.gateway.data_dir, config.store.cache_mb, req.clone())
        .map_err(CliError::Token)?;
    let result = match (resp.ok, resp.result) {
        (true, Some(r)) => r,
        (_, _) => return Err(CliError::Token(resp.error.unwrap_or_else(|| "no answer".into()))),
    };
    match req {
        Request::TokenCreate { .. } => {
            println!("{}", result["token"].as_str().unwrap_or_default());
            eprintln!("token id {} created; the token is shown only this once", result["record"]["id"]);
        }
        Request::TokenList => {
            for t in result.as_array().into_iter().flatten() {
                let revoked = if t["revoked_ms"].is_null() { "" } else { " revoked" };
                println!(
                    "{} {} departments={} employee={}{revoked}",
                    t["id"], t["role"], t["departments"], t["employee"]
                );
            }
        }
        Request::TokenRevoke { id } => println!("token {id} revoked"),
    }
    Ok(())
}
