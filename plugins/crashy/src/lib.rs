//! `crashy`: a plugin that takes its process down on purpose — for crash-isolation tests.
//! Never run it in the host: bind it only with `[plugins.isolate] names = ["crashy"]`.
//!
//! What it does depends on the body (the first marker found wins):
//! - `orphan`: starts `sleep 20` (left running) and exits with status 7 — the worker dies
//!   while a process it started lives on with whatever descriptors it inherited;
//! - `garble`: writes bytes that are not UTF-8 to stderr, then a readable line;
//! - `inherit`: runs `wc -c` on the stdin it inherits and logs `inherited stdin held N bytes`;
//! - `segfault`: writes through a null pointer (SIGSEGV);
//! - `abort`: `std::process::abort()` (SIGABRT, as `panic = "abort"` would);
//! - `exit`: `std::process::exit(3)`;
//! - `hang`: sleeps forever;
//! - `oom`: allocates and touches `oom_mb` MiB (config, default 4096) — under a memory limit
//!   the allocation fails and the process aborts;
//! - `print`: writes a line to stdout and one to stderr (both must end in the host's log);
//! - `env`: logs `env NAME=value` (or `env NAME unset`) through the context for every name in
//!   the config's `env` list;
//! - `publish`: publishes `Crashy.Published` with the same body through the context;
//!
//! then acks. With `path` in the config it appends one JSON line per acked message (`id`,
//! `body`, `receive_count`, `pid`) to that file first.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::Mutex;

use iniesta_plugin_api::{
    export_plugin, Config, Context, Handler, HandlerResult, Message, Outcome,
};

/// Crashes, hangs or acks, by body.
pub struct Crashy {
    path: Option<String>,
    env: Vec<String>,
    oom_mb: usize,
}

static WRITE_LOCK: Mutex<()> = Mutex::new(());

impl Crashy {
    /// `path`, `env` and `oom_mb` are optional.
    pub fn new(config: Config) -> Result<Self, String> {
        let env = match config.value().get("env") {
            None => Vec::new(),
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .map(|i| {
                    i.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| "`env` must be a list of names".to_string())
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err("`env` must be a list of names".into()),
        };
        Ok(Crashy {
            path: config.get_str("path").map(str::to_string),
            env,
            oom_mb: config.get_u64("oom_mb").unwrap_or(4096) as usize,
        })
    }
}

impl Handler for Crashy {
    fn handle(&self, message: &Message<'_>, ctx: &Context<'_>) -> HandlerResult {
        let body = String::from_utf8_lossy(message.body()).to_string();
        if body.contains("orphan") {
            std::process::Command::new("sleep")
                .arg("20")
                .spawn()
                .map_err(|e| format!("cannot start sleep: {e}"))?;
            std::process::exit(7);
        } else if body.contains("inherit") {
            let out = std::process::Command::new("wc")
                .arg("-c")
                .stdin(std::process::Stdio::inherit())
                .output()
                .map_err(|e| format!("cannot run wc: {e}"))?;
            let bytes = String::from_utf8_lossy(&out.stdout).trim().to_string();
            ctx.info(&format!("inherited stdin held {bytes} bytes"));
        } else if body.contains("garble") {
            std::io::stderr().write_all(b"\xff\xfe garbled \xc3\x28\n")?;
            eprintln!("crashy wrote past the garbled bytes");
        } else if body.contains("segfault") {
            // SAFETY: none — this is the point: the process dies with SIGSEGV.
            unsafe { std::ptr::null_mut::<u8>().write_volatile(1) };
        } else if body.contains("abort") {
            std::process::abort();
        } else if body.contains("exit") {
            std::process::exit(3);
        } else if body.contains("hang") {
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        } else if body.contains("oom") {
            let mut v: Vec<u8> = Vec::with_capacity(self.oom_mb * 1024 * 1024);
            v.resize(self.oom_mb * 1024 * 1024, 1);
            ctx.info(&format!(
                "allocated {} MiB",
                std::hint::black_box(&v).len() >> 20
            ));
        } else if body.contains("print") {
            println!("crashy says hello on stdout");
            eprintln!("crashy says hello on stderr");
        } else if body.contains("env") {
            for name in &self.env {
                match std::env::var(name) {
                    Ok(value) => ctx.info(&format!("env {name}={value}")),
                    Err(_) => ctx.info(&format!("env {name} unset")),
                }
            }
        } else if body.contains("publish") {
            ctx.publish("Crashy.Published", message.body())?;
        }
        if let Some(path) = &self.path {
            let line = serde_json::json!({
                "id": message.id(),
                "body": body,
                "receive_count": message.receive_count(),
                "pid": std::process::id(),
            });
            let _guard = WRITE_LOCK.lock().unwrap_or_else(|p| p.into_inner());
            let mut file = OpenOptions::new().create(true).append(true).open(path)?;
            // One write per line: workers are separate processes sharing the file.
            file.write_all(format!("{line}\n").as_bytes())?;
        }
        Ok(Outcome::Ack)
    }
}

export_plugin! {
    name: "crashy",
    handlers: {
        "crashy" => Crashy::new,
    },
}
