//! The operator console end to end: a real host serves it, headless Chromium (Debian's
//! `chromium`, driven through `chromedriver` over WebDriver) loads the page with the token,
//! sees the plugins, a handler failure and each binding's latency, searches the dead letters
//! by reason, deletes one, clicks a redrive button and sees the dead-letter list shrink. The
//! API pages and searches the dead letters and gives each binding's failure rate, latency and
//! chart points (only the new ones with `since`). Requests without the token, without the CSRF token or from another origin are
//! refused; a console on a non-loopback address without a token refuses to start.
//!
//! Chromium and chromedriver come from `$INIESTA_CHROMIUM` / `$INIESTA_CHROMEDRIVER`, else
//! /usr/bin (scripts/test.sh installs them with apt-get).

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Scratch;
use fantoccini::{ClientBuilder, Locator};

const LIMIT: Duration = Duration::from_secs(60);
const TOKEN: &str = "t0k3n-for-the-console-test";
const DLQ: &str = "iniesta-test-receiver-dlq";

fn tool(var: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    assert!(
        path.exists(),
        "{} not found: run scripts/test.sh, which installs chromium and chromium-driver (apt-get), or set {var}",
        path.display()
    );
    path
}

/// A process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One HTTP/1.1 request over a fresh connection: (status, body).
fn http(port: u16, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    stream.write_all(request.as_bytes()).expect("send");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn get(port: u16, path: &str, headers: &str) -> (u16, String) {
    http(
        port,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{headers}Connection: close\r\n\r\n"
        ),
    )
}

/// The CSRF token the console page carries.
fn csrf_of(page: &str) -> String {
    page.split("name=\"csrf-token\" content=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page carries a CSRF token")
        .to_string()
}

fn post(port: u16, path: &str, headers: &str, body: &str) -> (u16, String) {
    http(
        port,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{headers}Content-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

fn bearer() -> String {
    format!("Authorization: Bearer {TOKEN}\r\n")
}

fn dlq_depth(config: &Path) -> usize {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let config = iniesta::config::Config::load(config).expect("config");
        let broker = iniesta::broker::local::LocalBroker::open(&config)
            .await
            .expect("broker");
        broker.messages(DLQ).await.expect("messages").len()
    })
}

/// A console on `port` whose token is in `$INIESTA_CONSOLE_TOKEN`.
fn console_config(s: &Scratch, port: u16, bindings: &str) -> PathBuf {
    console_config_with(s, port, "token_env = \"INIESTA_CONSOLE_TOKEN\"\n", bindings)
}

/// A console on `port` with no token (it answers loopback names only) and `Order.*` bound to
/// `echo`.
fn tokenless_console_config(s: &Scratch, port: u16) -> PathBuf {
    console_config_with(
        s,
        port,
        "",
        "[[bindings]]\nevents = [\"Order.*\"]\nplugin = \"echo\"\n",
    )
}

/// A console on `port`; `token` is its `token_env` line (or nothing).
fn console_config_with(s: &Scratch, port: u16, token: &str, bindings: &str) -> PathBuf {
    s.config(
        "",
        &format!(
            "[metrics]\nlisten = \"127.0.0.1:{port}\"\nqueue_depth_interval_secs = 1\n[console]\nenabled = true\n{token}{bindings}"
        ),
    )
}

fn state(port: u16, query: &str) -> serde_json::Value {
    let (status, body) = get(port, &format!("/api/state{query}"), &bearer());
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("state is JSON")
}

fn dlq_page(port: u16, query: &str) -> (u16, serde_json::Value) {
    let (status, body) = get(port, &format!("/api/dlq{query}"), &bearer());
    (
        status,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)),
    )
}

fn start_host(config: &Path, log: PathBuf) -> common::Host {
    let file = std::fs::File::create(&log).expect("log");
    let child = Command::new(common::bin())
        .arg("-c")
        .arg(config)
        .arg("run")
        .env("INIESTA_LOG", "info")
        .env("NO_COLOR", "1")
        .env("INIESTA_CONSOLE_TOKEN", TOKEN)
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("host starts");
    let host = common::Host { child, log };
    let start = Instant::now();
    while !host.log_text().contains("consuming") {
        assert!(
            start.elapsed() < LIMIT,
            "host did not start:\n{}",
            host.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    host
}

#[test]
fn the_console_shows_plugins_and_failures_and_redrives_from_the_browser() {
    let chromium = tool("INIESTA_CHROMIUM", "/usr/bin/chromium");
    let chromedriver = tool("INIESTA_CHROMEDRIVER", "/usr/bin/chromedriver");
    let s = Scratch::new();
    // Orders are dead-lettered by the flaky handler.
    let config = console_config(
        &s,
        0,
        "[[bindings]]\nevents = [\"Order.*\"]\nplugin = \"flaky\"\nconfig = { mode = \"dead-letter\" }\n",
    );
    let host = start_host(&config, s.path("host.log"));
    let port = host.port();
    // The binding's history has its first sample before anything is handled.
    s.wait_for("the binding's first sample", LIMIT, || {
        !state(port, "")["bindings"][0]["last_minute"].is_null()
    });
    for n in 1..=3 {
        common::publish(
            &config,
            &[
                "Order.Created",
                &format!(r#"{{"order":{n},"card":"4111-{n}"}}"#),
            ],
        );
    }
    s.wait_for("three dead letters", LIMIT, || dlq_depth(&config) == 3);
    // The last minute of a binding that dead-letters everything: three calls, all failed.
    s.wait_for("the failure rate", LIMIT, || {
        let minute = &state(port, "")["bindings"][0]["last_minute"];
        minute["calls"] == 3 && minute["failed"] == 3 && minute["failure_rate"] == 1.0
    });

    // Without the token, with a wrong one, without CSRF, from another origin: refused.
    let (status, body) = get(port, "/", "");
    assert_eq!(status, 401, "{body}");
    assert_eq!(get(port, "/api/state", "").0, 401);
    assert_eq!(
        get(port, "/api/dlq", "Authorization: Bearer wrong\r\n").0,
        401
    );
    assert_eq!(get(port, "/?token=wrong", "").0, 401);
    assert_eq!(
        get(port, "/api/dlq", "Cookie: iniesta_console=wrong\r\n").0,
        401
    );
    assert_eq!(
        post(port, "/api/dlq/redrive", "", r#"{"all":true}"#).0,
        401,
        "actions need the token too"
    );
    let (status, page) = get(port, "/", &bearer());
    assert_eq!(status, 200);
    let csrf = csrf_of(&page);
    let (status, body) = post(port, "/api/dlq/redrive", &bearer(), r#"{"all":true}"#);
    assert_eq!(status, 403, "no CSRF token: {body}");
    let (status, body) = post(
        port,
        "/api/dlq/redrive",
        &format!(
            "{}X-CSRF-Token: {csrf}\r\nOrigin: http://evil.example\r\n",
            bearer()
        ),
        r#"{"all":true}"#,
    );
    assert_eq!(status, 403, "cross-origin: {body}");
    let (status, body) = get(port, "/api/state", &bearer());
    assert_eq!(status, 200);
    assert!(
        body.contains("\"flaky\"") && body.contains("by design"),
        "{body}"
    );
    assert!(
        !body.contains("4111-"),
        "bodies are never in the state: {body}"
    );
    let (_, dlq) = get(port, "/api/dlq", &bearer());
    assert!(
        !dlq.contains("4111-") && dlq.contains("bytes hidden"),
        "bodies hidden: {dlq}"
    );
    // True depths (the queue-depth reader's), not a count of what one listing saw.
    s.wait_for("the DLQ's depth in the state", LIMIT, || {
        let (_, state) = get(port, "/api/state", &bearer());
        serde_json::from_str::<serde_json::Value>(&state).is_ok_and(|v| {
            v["depths"]["dead_letter_queue"]["visible"] == 3.0
                && v["depths"]["queue"]["visible"] == 0.0
        })
    });
    assert_eq!(
        dlq_depth(&config),
        3,
        "nothing was redriven by the refused requests"
    );

    // The handler is fixed: orders are now acked by echo (SIGHUP reloads the config).
    console_config(
        &s,
        0,
        "[[bindings]]\nevents = [\"Order.*\"]\nplugin = \"echo\"\n",
    );
    let pid = host.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill")
        .success());
    s.wait_for("the config reload", LIMIT, || {
        get(port, "/api/state", &bearer())
            .1
            .contains("bindings[0] (echo/echo)")
    });

    // The echo binding's history (a new binding, or the same name's) has a sample.
    s.wait_for("the echo binding's first sample", LIMIT, || {
        !state(port, "")["bindings"][0]["last_minute"].is_null()
    });
    // Some traffic for the throughput chart: bursts of events the echo binding acks, one per
    // sample of the console's counters.
    let mut sent = 0;
    for burst in 0..4 {
        let lines: String = (0..(6 + 6 * burst))
            .map(|n| format!("{{\"event\":\"Order.Viewed\",\"body\":{{\"n\":{n}}}}}\n"))
            .collect();
        sent += 6 + 6 * burst;
        let file = s.write("burst.jsonl", &lines);
        let samples = |s: &str| {
            serde_json::from_str::<serde_json::Value>(s).expect("state is JSON")["series"]
                .as_array()
                .map(|a| a.last().map(|x| x["t"].as_u64()))
                .unwrap_or_default()
        };
        let before = samples(&get(port, "/api/state", &bearer()).1);
        common::publish(&config, &["--file", file.to_str().expect("utf-8 path")]);
        s.wait_for("the next sample", LIMIT, || {
            samples(&get(port, "/api/state", &bearer()).1) != before
        });
    }
    s.wait_for("echo to ack the bursts", LIMIT, || {
        let (_, state) = get(port, "/api/state", &bearer());
        let state: serde_json::Value = serde_json::from_str(&state).expect("state is JSON");
        state["bindings"][0]["acked"] == sent
    });
    // Each binding's chart points: calls that succeeded, with a latency.
    let name = state(port, "")["bindings"][0]["name"]
        .as_str()
        .expect("the binding's name")
        .to_string();
    s.wait_for("the bursts in the binding's points", LIMIT, || {
        let now = state(port, "");
        let points = now["binding_series"][&name]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let calls: u64 = points.iter().filter_map(|p| p["calls"].as_u64()).sum();
        let acked_points = points
            .iter()
            .filter(|p| p["calls"].as_u64() > Some(0) && p["failed"] == 0)
            .count();
        calls >= sent
            && acked_points > 0
            && points
                .iter()
                .filter(|p| p["calls"].as_u64() > Some(0))
                .all(|p| {
                    p["p95_ms"].as_f64().is_some_and(|ms| ms >= 0.0) && p["p50_ms"].is_number()
                })
            && now["bindings"][0]["last_minute"]["p95_ms"].is_number()
    });
    // `since`: only the points after it.
    let now = state(port, "");
    let last = now["series"]
        .as_array()
        .and_then(|a| a.last())
        .and_then(|p| p["t"].as_u64())
        .expect("a sample");
    let newer = state(port, &format!("?since={last}"));
    for points in [&newer["series"], &newer["binding_series"][&name]] {
        assert!(
            points
                .as_array()
                .expect("points")
                .iter()
                .all(|p| p["t"].as_u64() > Some(last)),
            "{newer}"
        );
    }
    assert!(
        newer["series"].as_array().map(Vec::len) < now["series"].as_array().map(Vec::len),
        "{newer}"
    );
    assert_eq!(get(port, "/api/state?since=yesterday", &bearer()).0, 400);

    // The dead letters, paged and searched through the API.
    // Without a search a page reads just itself (and one more, to know more follow).
    let (status, page) = dlq_page(port, "?limit=1&offset=1");
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["messages"].as_array().map(Vec::len), Some(1), "{page}");
    assert_eq!(page["scanned"], 2, "{page}");
    assert_eq!(page["complete"], false, "{page}");
    let (_, counted) = dlq_page(port, "?limit=1&offset=1&scan=10");
    assert_eq!(counted["matching"], 3, "{counted}");
    assert_eq!(counted["complete"], true, "{counted}");
    assert_eq!(counted["messages"], page["messages"], "the same page");
    let (_, all) = dlq_page(port, "");
    let second = all["messages"][1]["id"]
        .as_str()
        .expect("an id")
        .to_string();
    assert_eq!(page["messages"][0]["id"], second.as_str(), "{page}");
    let (_, nothing) = dlq_page(port, "?event=Invoice.*");
    assert_eq!(nothing["matching"], 0, "{nothing}");
    let (_, by_reason) = dlq_page(port, &format!("?reason={}", second.to_uppercase()));
    assert_eq!(by_reason["matching"], 1, "{by_reason}");
    assert_eq!(dlq_page(port, "?limit=ten").0, 400);
    assert_eq!(dlq_page(port, "?event=Order.%20*").0, 400, "a bad glob");
    let page = get(port, "/", &bearer()).1;
    let csrf = csrf_of(&page);
    let action = |path: &str, body: &str| {
        post(
            port,
            path,
            &format!("{}X-CSRF-Token: {csrf}\r\n", bearer()),
            body,
        )
    };
    for refused in [
        r#"{"all":true}"#,
        r#"{}"#,
        r#"{"ids":[""]}"#,
        r#"{"reasons":[" "]}"#,
        r#"{"nope":1}"#,
    ] {
        let (status, body) = action("/api/dlq/delete", refused);
        assert_eq!(status, 400, "{refused}: {body}");
    }
    let (status, body) = action("/api/dlq/redrive", r#"{"all":true,"ids":["x"]}"#);
    assert_eq!(status, 400, "{body}");
    let (status, body) = action("/api/dlq/delete", r#"{"ids":["no-such-id"]}"#);
    assert_eq!(status, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).expect("a report");
    assert_eq!(report["done"], 0, "{report}");
    assert_eq!(report["kept"], 3, "{report}");
    assert_eq!(
        report["missing"],
        serde_json::json!(["no-such-id"]),
        "{report}"
    );
    assert_eq!(dlq_depth(&config), 3, "nothing was deleted");

    // The browser.
    let (driver, driver_port) = common::ports::spawn_listening("chromedriver", |port| {
        let mut cmd = Command::new(&chromedriver);
        cmd.arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    });
    let _driver = Proc(driver);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let shot = rt.block_on(async {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": chromium.display().to_string(),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,2000", "--hide-scrollbars"],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{driver_port}"))
            .await
            .expect("a WebDriver session in headless Chromium");
        let result = async {
            // The token once in the address; the console keeps it in a cookie and redirects.
            client.goto(&format!("http://127.0.0.1:{port}/?token={TOKEN}")).await?;
            let url = client.current_url().await?;
            assert_eq!(url.path(), "/");
            assert!(url.query().is_none(), "the token is dropped from the address: {url}");
            let wait = || client.wait().at_most(LIMIT);
            wait()
                .for_element(Locator::XPath("//table[@id='plugins']//td[text()='flaky']"))
                .await?;
            wait()
                .for_element(Locator::XPath("//table[@id='plugins']//td[text()='echo']"))
                .await?;
            wait()
                .for_element(Locator::XPath(
                    "//table[@id='failures']//td[contains(., 'flaky dead-letters') and contains(., 'by design')]",
                ))
                .await?;
            let rows = |n: usize| {
                let client = client.clone();
                async move {
                    let start = Instant::now();
                    loop {
                        let found = client.find_all(Locator::Css("#dlq tbody tr")).await?.len();
                        if found == n {
                            return Ok::<(), fantoccini::error::CmdError>(());
                        }
                        assert!(start.elapsed() < LIMIT, "the DLQ table has {found} rows, expected {n}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            };
            rows(3).await?;
            let page = client.source().await?;
            assert!(!page.contains("4111-"), "bodies are not shown unless enabled");
            // The binding's latency over the last minute.
            wait()
                .for_element(Locator::XPath(
                    "//table[@id='bindings']//td[contains(@class, 'p95') and contains(., 'ms')]",
                ))
                .await?;
            let shot = client.screenshot().await?;
            // Search by reason (flaky's names the message), delete the one found.
            let doomed = client
                .find(Locator::Css("#dlq tbody tr"))
                .await?
                .attr("data-id")
                .await?
                .expect("rows name their message");
            client.find(Locator::Id("dlq-reason")).await?.send_keys(&doomed).await?;
            client.find(Locator::Id("dlq-search-go")).await?.click().await?;
            rows(1).await?;
            assert!(client.find(Locator::Id("dlq-delete-matching")).await?.is_displayed().await?);
            let found = client.find(Locator::Css("#dlq tbody")).await?.text().await?;
            assert!(found.contains(&doomed), "{found}");
            client.find(Locator::Css("#dlq button.delete")).await?.click().await?;
            client.accept_alert().await?;
            rows(0).await?;
            let pager = client.find(Locator::Id("dlq-page")).await?.text().await?;
            assert!(pager.contains("of 0 matching"), "{pager}");
            // Back to everything: two left.
            client.find(Locator::Id("dlq-reason")).await?.clear().await?;
            client.find(Locator::Id("dlq-search-go")).await?.click().await?;
            rows(2).await?;
            assert!(!client.find(Locator::Id("dlq-delete-matching")).await?.is_displayed().await?);
            let buttons = client.find_all(Locator::Css("#dlq button.redrive")).await?;
            assert_eq!(buttons.len(), 2);
            let chosen = buttons[0].attr("data-id").await?.expect("the button names its message");
            buttons[0].click().await?;
            rows(1).await?;
            let left = client.find(Locator::Css("#dlq tbody")).await?.text().await?;
            assert!(!left.contains(&chosen), "the redriven message left the list: {left}");
            Ok::<_, fantoccini::error::CmdError>(shot)
        }
        .await;
        let _ = client.close().await;
        result.expect("the console works in the browser")
    });
    // The redriven message is acked by the fixed handler; the deleted one is gone, one stays.
    s.wait_for("echo to ack the redriven message", LIMIT, || {
        let (_, state) = get(port, "/api/state", &bearer());
        let state: serde_json::Value = serde_json::from_str(&state).expect("state is JSON");
        state["bindings"][0]["acked"] == sent + 1
    });
    assert_eq!(dlq_depth(&config), 1);
    host.stop();
    let out = common::workspace_root().join("target/console-e2e.png");
    std::fs::write(&out, shot).expect("write the screenshot");
}

#[test]
fn the_console_refuses_to_start_exposed_without_a_token() {
    let s = Scratch::new();
    let bind = |listen: &str, token: &str| {
        s.config(
            "",
            &format!(
                "[metrics]\nlisten = \"{listen}\"\n[console]\nenabled = true\n{token}\n\
                 [[bindings]]\nevents = [\"Order.*\"]\nplugin = \"echo\"\n"
            ),
        )
    };
    // Refused before anything binds; port 0 in case it were not.
    let config = bind("0.0.0.0:0", "");
    let out = Command::new(common::bin())
        .arg("-c")
        .arg(&config)
        .arg("run")
        .env_remove("INIESTA_CONSOLE_TOKEN")
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a loopback address") && err.contains("console.token_env"),
        "{err}"
    );
    // A token variable that is named but unset is refused too.
    let config = bind("127.0.0.1:0", "token_env = \"INIESTA_CONSOLE_TOKEN\"");
    let out = Command::new(common::bin())
        .arg("-c")
        .arg(&config)
        .arg("run")
        .env_remove("INIESTA_CONSOLE_TOKEN")
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("$INIESTA_CONSOLE_TOKEN is unset or empty"),
        "{err}"
    );
}

#[test]
fn without_a_token_the_console_answers_only_loopback_names() {
    let s = Scratch::new();
    let config = tokenless_console_config(&s, 0);
    let host = start_host(&config, s.path("host.log"));
    let port = host.port();
    assert_eq!(get(port, "/api/state", "").0, 200);
    let (status, _) = http(
        port,
        "GET /api/state HTTP/1.1\r\nHost: rebound.example:80\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 403, "a DNS-rebound name is refused");
    assert_eq!(
        post(port, "/api/dlq/redrive", "", r#"{"all":true}"#).0,
        403,
        "no CSRF token"
    );
    // Listing the DLQ (on SQS it receives the messages) cannot be triggered by another page
    // either: it needs the page's CSRF token.
    let (status, body) = get(port, "/api/dlq", "");
    assert_eq!(status, 403, "a DLQ listing without the CSRF token: {body}");
    let page = get(port, "/", "").1;
    let csrf = csrf_of(&page);
    let (status, body) = get(port, "/api/dlq", &format!("X-CSRF-Token: {csrf}\r\n"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(get(port, "/metrics", "").0, 200, "/metrics is unchanged");
    host.stop();
}

/// The DLQ listing's CSRF check does not depend on headers the console does not verify: an
/// `Authorization` header of any kind (`Bearer x`, `Basic …`) exempts nothing unless it is the
/// verified console token. Without a token, or with the token in the cookie, a listing still
/// needs the page's CSRF token.
#[test]
fn an_unverified_authorization_header_does_not_skip_the_csrf_check() {
    let unverified = [
        "Authorization: Bearer x\r\n",
        "Authorization: Basic dXNlcjpwYXNz\r\n",
        "Authorization: Negotiate abc\r\n",
    ];
    // No token: nothing in an Authorization header is checked, so nothing in it counts.
    let s = Scratch::new();
    let config = tokenless_console_config(&s, 0);
    let host = start_host(&config, s.path("host.log"));
    let port = host.port();
    for header in unverified {
        let (status, body) = get(port, "/api/dlq", header);
        assert_eq!(status, 403, "no token, {header:?}, no CSRF token: {body}");
    }
    let csrf = csrf_of(&get(port, "/", "").1);
    let (status, body) = get(
        port,
        "/api/dlq",
        &format!("Authorization: Basic dXNlcjpwYXNz\r\nX-CSRF-Token: {csrf}\r\n"),
    );
    assert_eq!(status, 200, "with the CSRF token: {body}");
    host.stop();

    // A token in the cookie, and an Authorization header that is not the bearer token.
    let s = Scratch::new();
    let config = console_config(
        &s,
        0,
        "[[bindings]]\nevents = [\"Order.*\"]\nplugin = \"echo\"\n",
    );
    let host = start_host(&config, s.path("host.log"));
    let port = host.port();
    let cookie = format!("Cookie: iniesta_console={TOKEN}\r\n");
    for header in &unverified[1..] {
        let (status, body) = get(port, "/api/dlq", &format!("{cookie}{header}"));
        assert_eq!(status, 403, "cookie + {header:?}, no CSRF token: {body}");
    }
    let (status, body) = get(port, "/api/dlq", &bearer());
    assert_eq!(
        status, 200,
        "the verified bearer token needs no CSRF token: {body}"
    );
    host.stop();
}
