//! AWS credentials the way platform teams have them: a `credential_process` profile (what
//! `aws configure export-credentials`, 1Password, aws-vault and most SSO helpers produce), and
//! no part of any credential in any log line, at any log level (`INIESTA_LOG=trace`).

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common;
use common::aws::Moto;
use common::Scratch;

const KEY_ID: &str = "AKIAPROCESSKEY123456";
const SECRET: &str = "process/Secret+Key/abcdefghijklmn0123456";
const TOKEN: &str = "IQoJb3JpZ2luX2VjEProcessSessionToken0987654321";

fn config(s: &Scratch, endpoint: &str) -> std::path::PathBuf {
    s.write(
        "iniesta.toml",
        &format!(
            "service = \"worker\"\nenv = \"test\"\ninitialization = [\"QUEUE_POLLING\"]\n\
             [broker]\nkind = \"aws\"\nregion = \"us-east-1\"\nendpoint_url = \"{endpoint}\"\n\
             [sqs]\nwait_time_seconds = 1\n\
             [plugins]\ndirs = [\"{}\"]\n\
             [[bindings]]\ndefault = true\nplugin = \"ledger\"\nconfig = {{ path = \"{}\" }}\n",
            common::plugin_dir().display(),
            s.path("ledger.jsonl").display()
        ),
    )
}

/// `iniesta ARGS` with only the `proc` profile of `s`'s AWS config file to find credentials.
fn with_profile(s: &Scratch, config: &std::path::Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(common::bin());
    cmd.arg("-c")
        .arg(config)
        .args(args)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env("AWS_CONFIG_FILE", s.path("aws-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", s.path("no-credentials"))
        .env("AWS_PROFILE", "proc")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("INIESTA_LOG", "trace")
        .env("NO_COLOR", "1");
    cmd
}

fn assert_no_credential(what: &str, log: &str) {
    for part in [KEY_ID, SECRET, TOKEN, &SECRET[..16], &TOKEN[..16]] {
        assert!(
            !log.contains(part),
            "{what}: a log line carries a credential part ({part}):\n{}",
            log.lines()
                .filter(|l| l.contains(part))
                .take(3)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

#[test]
fn a_credential_process_profile_works_and_no_log_line_carries_a_credential() {
    let moto = Moto::start();
    let s = Scratch::new();
    let script = s.write(
        "credentials.sh",
        &format!(
            "#!/bin/sh\necho '{{\"Version\": 1, \"AccessKeyId\": \"{KEY_ID}\", \"SecretAccessKey\": \"{SECRET}\", \"SessionToken\": \"{TOKEN}\"}}'\n"
        ),
    );
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    s.write(
        "aws-config",
        &format!(
            "[profile proc]\nregion = us-east-1\ncredential_process = {}\n",
            script.display()
        ),
    );
    let config = config(&s, &moto.url());

    let setup = with_profile(&s, &config, &["setup"])
        .output()
        .expect("setup runs");
    let setup_log = String::from_utf8_lossy(&setup.stderr).to_string();
    assert!(
        setup.status.success(),
        "setup with the profile:\n{setup_log}"
    );
    assert_no_credential("setup", &setup_log);

    let publish = with_profile(
        &s,
        &config,
        &["publish", "Job.Run", r#"{"n":1}"#, "--queue"],
    )
    .output()
    .expect("publish runs");
    let publish_log = String::from_utf8_lossy(&publish.stderr).to_string();
    assert!(publish.status.success(), "publish:\n{publish_log}");
    assert_no_credential("publish", &publish_log);

    let log_path = s.path("host.log");
    let mut host = with_profile(&s, &config, &["run"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).expect("log"))
        .spawn()
        .expect("run starts");
    s.wait_for("the message handled", Duration::from_secs(60), || {
        !s.ledger("ledger.jsonl").is_empty()
    });
    // SIGTERM, so the drain and the last log lines happen too.
    unsafe {
        libc::kill(host.id() as i32, libc::SIGTERM);
    }
    let _ = host.wait();
    let log = std::fs::read_to_string(&log_path).expect("log");
    assert!(log.contains("consuming"), "{log}");
    assert!(
        log.lines().count() > 20,
        "trace logging was on (the SDK's own lines are held at warn, ours are not)"
    );
    assert_no_credential("run", &log);
}
