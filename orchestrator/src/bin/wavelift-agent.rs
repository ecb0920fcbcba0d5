//! `wavelift-agent`: the local engine's replication agent, installed on source servers.
//! It links the replication crate's agent only: no database, no web, no AWS SDK.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(replication::local::agent::main_with_args(args));
}
