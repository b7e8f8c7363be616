//! `iniesta acct encrypt FILE | show`: the credential profiles of egress/ingress plugins.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;

use crate::acct::{AcctSource, Profiles};

/// `iniesta acct ...`.
#[derive(Debug, clap::Subcommand)]
pub enum AcctCommand {
    /// Encrypt a file of profiles into FILE.fernet with a new key, and print the key: YAML
    /// (`plugin: profile: settings`, as the real `acct encrypt` reads it) or, for a `.toml`
    /// name, `[plugin.profile]` tables. The token holds msgpack of the data, as acct's does.
    Encrypt {
        /// The plaintext profiles.
        file: PathBuf,
    },
    /// Decrypt the acct file (--acct-file/--acct-key) and list its profiles with every value
    /// shown as `***`.
    Show,
}

/// `iniesta acct ...`.
pub fn run(command: AcctCommand, source: &AcctSource) -> anyhow::Result<ExitCode> {
    match command {
        AcctCommand::Encrypt { file } => {
            let (written, key) = crate::acct::encrypt_file(&file)?;
            println!("New encrypted file created at: {}", written.display());
            println!("The file was encrypted with this key:");
            println!("{}", key.expose());
            eprintln!(
                "Keep the key apart from the file (e.g. INIESTA_ACCT_KEY in a secret store) and delete the plaintext: {}",
                file.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        AcctCommand::Show => {
            let Some(profiles) = Profiles::from_source(source)? else {
                bail!("no acct file: set INIESTA_ACCT_FILE and INIESTA_ACCT_KEY (or pass --acct-file and --acct-key)");
            };
            print!("{}", profiles.redacted());
            Ok(ExitCode::SUCCESS)
        }
    }
}
