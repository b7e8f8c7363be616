//! The plugin's reactor thread lives while an async handler does, and no longer: a hot reload
//! drops the old generation's handlers, which must not leave a thread behind. Its own test
//! binary, so no other test's handlers share the process.

use iniesta_plugin_api::testing::{Harness, TestMessage, TestOutcome};
use iniesta_plugin_api::{AsyncHandler, Context, HandlerResult, Message, Outcome};

struct Naps;

impl AsyncHandler for Naps {
    async fn handle(&self, _message: &Message<'_>, _ctx: &Context<'_>) -> HandlerResult {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        Ok(Outcome::Ack)
    }
}

/// Threads of this process named like the reactor (Linux keeps 15 bytes of a thread's name).
fn reactor_threads() -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|t| t.ok())
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .filter(|name| name.trim_end() == "iniesta-plugin-")
        .count()
}

fn settle(expected: usize) -> usize {
    for _ in 0..500 {
        if reactor_threads() == expected {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    reactor_threads()
}

#[test]
fn one_reactor_serves_every_async_handler_and_stops_with_the_last() {
    assert_eq!(reactor_threads(), 0);
    let first = Harness::new_async(Naps);
    let second = Harness::new_async(Naps);
    assert_eq!(settle(1), 1, "both handlers share one reactor thread");
    assert_eq!(first.call(&TestMessage::new("E")).outcome, TestOutcome::Ack);
    drop(first);
    assert_eq!(
        second.call(&TestMessage::new("E")).outcome,
        TestOutcome::Ack
    );
    drop(second);
    assert_eq!(settle(0), 0, "the reactor stops with its last handler");
    // And starts again for the next one.
    let third = Harness::new_async(Naps);
    assert_eq!(third.call(&TestMessage::new("E")).outcome, TestOutcome::Ack);
    assert_eq!(settle(1), 1);
}
