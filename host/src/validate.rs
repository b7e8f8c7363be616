//! Every check of a config that needs no plugin loaded, collected in one fixed order.
//!
//! Each section checks its own shape beside its data (`config/<section>.rs`); checks that need
//! runtime knowledge live in the module that has it (`broker::fifo` for FIFO pairing and ids,
//! `egress::config` for egress and ingress entries, `ops::errors` for the webhook URL,
//! `lock::nodes` for the lock nodes, `route::check` for patterns, `match` and schemas). This
//! module only calls them: `config check`, `run`, the reloader and the tests all use
//! [`problems`] (or a `load*` helper), so they agree on what a valid config is. Nothing but
//! callers at the edge imports it.

use std::path::Path;

use crate::config::{plugins::bindings_problems, Config, ConfigError, Problem};

/// Every problem that can be found without loading plugins, in a fixed order: the root keys,
/// `[sns]`, `[sqs]`, FIFO, egress/ingress/outbox, metrics and errors, isolation, locks, the
/// broker, payloads, the plugin directories, then the bindings one by one.
pub fn problems(config: &Config) -> Vec<Problem> {
    let mut problems = config.root_problems();
    problems.extend(config.sns.problems(config.needs_topic()));
    problems.extend(config.sqs.problems(config));
    problems.extend(crate::broker::fifo::problems(config));
    problems.extend(crate::egress::config::problems(config));
    problems.extend(config.metrics.problems());
    problems.extend(crate::ops::errors::problems(config));
    problems.extend(config.errors.problems());
    problems.extend(config.plugins.isolate.problems());
    problems.extend(config.lock.problems());
    problems.extend(crate::lock::nodes::problems(config));
    problems.extend(config.broker.problems());
    problems.extend(
        config
            .payloads
            .problems(config.broker.kind == crate::config::BrokerKind::Aws),
    );
    problems.extend(config.tracing.problems());
    problems.extend(config.plugins.dir_problems(config));
    problems.extend(binding_problems(config));
    problems
}

/// The bindings: as a whole, then each entry's shape followed by its routing checks.
fn binding_problems(config: &Config) -> Vec<Problem> {
    let mut problems = bindings_problems(config);
    for (i, binding) in config.bindings.iter().enumerate() {
        let key = format!("bindings[{i}]");
        problems.extend(binding.problems(&key, config));
        problems.extend(crate::route::check::binding_problems(config, &key, binding));
    }
    problems
}

/// Read and parse a config file, then run every check that needs no plugins.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_keeping(path, |_| true)
}

/// Load for publishing: the checks that matter to a producer, not the consumer's (plugin
/// directories and bindings may not exist where events are only published, nor the error
/// reporters' settings, such as a `SENTRY_DSN` only the consumer's environment has).
pub fn load_for_publishing(path: &Path) -> Result<Config, ConfigError> {
    load_keeping(path, |p| {
        !p.key.starts_with("plugins.")
            && !p.key.starts_with("bindings")
            && !p.key.starts_with("errors.")
    })
}

/// Load for a routing dry run (`iniesta route`): every check except those about plugin
/// directories (plugins are not loaded) and error reporting (nothing fails in a dry run).
pub fn load_for_routing(path: &Path) -> Result<Config, ConfigError> {
    load_keeping(path, |p| {
        !p.key.starts_with("plugins.") && !p.key.starts_with("errors.")
    })
}

/// Read `path` and refuse it if any problem that `relevant` keeps remains.
fn load_keeping(path: &Path, relevant: impl Fn(&Problem) -> bool) -> Result<Config, ConfigError> {
    let config = Config::read(path)?;
    let problems: Vec<Problem> = problems(&config).into_iter().filter(relevant).collect();
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            problems,
        })
    }
}

/// The loading and checking entry points as methods of [`Config`], for callers written
/// before this module (tests, the fuzz target); they are the functions above.
impl Config {
    /// [`load`]: read, parse and check.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        load(path)
    }

    /// [`load_for_publishing`]: read, parse and run the producer's checks.
    pub fn load_for_publishing(path: &Path) -> Result<Config, ConfigError> {
        load_for_publishing(path)
    }

    /// [`problems`]: every problem that can be found without loading plugins.
    pub fn problems(&self) -> Vec<Problem> {
        problems(self)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn parse(text: &str) -> Config {
        Config::parse(text, Path::new(".")).expect("parses")
    }

    #[test]
    fn defaults_and_queue_name() {
        let c = parse("service = \"receiver\"\n[sns]\ntopic_arn = \"arn:aws:sns:us-east-1:000000000000:global\"\n");
        assert_eq!(c.queue_name(), "iniesta-development-receiver");
        assert_eq!(c.topic_name().as_deref(), Some("global"));
        assert_eq!(c.initialization_type(), "SNS_PRODUCER|EVENT_POLLING");
        assert_eq!(c.sqs.max_messages, 10);
        assert_eq!(c.lock.retry_count, 1);
    }

    #[test]
    fn envelopes_come_only_from_the_topic_of_an_aws_subscription_without_raw_delivery() {
        let aws = "service = \"s\"\n[broker]\nkind = \"aws\"\n[sns]\ntopic_arn = \"arn:aws:sns:us-east-1:1:global\"\n[sqs]\nfilters = [\"Order.*\"]\n";
        let raw = parse(aws);
        assert!(raw.sqs.raw_message_delivery, "raw by default");
        assert_eq!(raw.envelope_topic(), None);
        let keys = |c: &Config| -> Vec<String> {
            problems(c)
                .into_iter()
                .map(|p| p.key)
                .filter(|k| k.starts_with("sqs."))
                .collect()
        };
        let wrapped = parse(&format!("{aws}raw_message_delivery = false\n"));
        assert!(keys(&wrapped).is_empty(), "{:?}", problems(&wrapped));
        assert_eq!(
            wrapped.envelope_topic(),
            Some("arn:aws:sns:us-east-1:1:global")
        );
        let queue_only = parse(&format!(
            "initialization = [\"QUEUE_POLLING\"]\n{aws}raw_message_delivery = false\n"
        ));
        assert_eq!(queue_only.envelope_topic(), None);
        assert_eq!(
            keys(&queue_only),
            vec!["sqs.raw_message_delivery".to_string()]
        );
        // Senders straight to the queue could pass a body off as an envelope of the topic.
        let both = parse(&format!(
            "initialization = [\"EVENT_POLLING\", \"QUEUE_POLLING\"]\n{aws}raw_message_delivery = false\n"
        ));
        assert_eq!(keys(&both), vec!["sqs.raw_message_delivery".to_string()]);
        let local = parse(
            "service = \"s\"\n[sns]\ntopic_arn = \"arn:aws:sns:us-east-1:1:global\"\n[sqs]\nfilters = [\"Order.*\"]\nraw_message_delivery = false\n",
        );
        assert_eq!(
            local.envelope_topic(),
            None,
            "the local broker delivers raw"
        );
        assert_eq!(keys(&local), vec!["sqs.raw_message_delivery".to_string()]);
    }

    #[test]
    fn initialization_type_order_matches_python() {
        let c = parse("service = \"s\"\ninitialization = [\"QUEUE_POLLING\", \"SNS_PRODUCER\", \"EVENT_POLLING\"]\n");
        assert_eq!(
            c.initialization_type(),
            "SNS_PRODUCER|EVENT_POLLING|QUEUE_POLLING"
        );
    }

    #[test]
    fn unknown_key_names_the_key() {
        let err = Config::parse("service = \"s\"\n[sqs]\nmax_mesages = 3\n", Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_mesages"), "{err}");
    }

    #[test]
    fn unreachable_glob_is_a_problem() {
        let c = parse(
            "service = \"s\"\n[sns]\ntopic_arn = \"arn:aws:sns:us-east-1:1:global\"\n[sqs]\nfilters = [\"Order.*\"]\n\
             [[bindings]]\nevents = [\"Payment.*\"]\nplugin = \"echo\"\n[[bindings]]\nevents = [\"Ord*\", \"Order.Created.shop\"]\nplugin = \"echo\"\n",
        );
        let problems = problems(&c);
        let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"bindings[0].events[0]"), "{problems:?}");
        assert!(
            !keys.iter().any(|k| k.starts_with("bindings[1]")),
            "{problems:?}"
        );
    }

    #[test]
    fn with_an_ingress_any_pattern_may_be_reached() {
        // Ingress messages never pass the subscription's filter policy.
        let c = parse(
            "service = \"s\"\n[sns]\ntopic_arn = \"arn:aws:sns:us-east-1:1:global\"\n[sqs]\nfilters = [\"Order.*\"]\n\
             [[ingress]]\nplugin = \"nats\"\n[[bindings]]\nevents = [\"Payment.*\"]\nplugin = \"echo\"\n",
        );
        let problems = problems(&c);
        assert!(
            !problems.iter().any(|p| p.key.starts_with("bindings[0]")),
            "{problems:?}"
        );
    }

    #[test]
    fn fifo_metrics_and_error_keys_are_checked() {
        let c = parse(
            "service = \"s\"\n[sns]\ntopic_arn = \"arn:aws:sns:us-east-1:1:global\"\n\
             [sqs]\nfilters = [\"Order.*\"]\nqueue_name = \"q.fifo\"\ndead_letter_queue = \"d\"\n\
             max_visibility_extension_secs = 50000\nfifo_default_group = \"a b\"\nfifo_group_field = \"\"\n\
             [metrics]\nlisten = \"nowhere\"\n[errors]\nwebhook_url = \"ftp://x\"\ntimeout_secs = 0\n",
        );
        let keys: Vec<_> = problems(&c).into_iter().map(|p| p.key).collect();
        for k in [
            "sns.topic_arn",
            "sqs.dead_letter_queue",
            "sqs.max_visibility_extension_secs",
            "sqs.fifo_default_group",
            "sqs.fifo_group_field",
            "metrics.listen",
            "errors.webhook_url",
            "errors.timeout_secs",
        ] {
            assert!(keys.iter().any(|x| x == k), "missing {k} in {keys:?}");
        }
        let good = parse(
            "service = \"s\"\n[sns]\ntopic_arn = \"arn:aws:sns:us-east-1:1:global.fifo\"\n\
             [sqs]\nfilters = [\"Order.*\"]\nqueue_name = \"q.fifo\"\ndead_letter_queue = \"d.fifo\"\n\
             fifo_group_field = \"customer\"\n[metrics]\nlisten = \"127.0.0.1:9090\"\n\
             [errors]\nwebhook_url = \"https://hooks.example.com/iniesta?token=x\"\n",
        );
        let keys: Vec<_> = problems(&good).into_iter().map(|p| p.key).collect();
        for k in keys {
            assert!(
                k.starts_with("plugins") || k == "bindings",
                "unexpected problem with {k}"
            );
        }
        // A standard queue under a FIFO topic is refused the other way round.
        let c = parse(
            "service = \"s\"\n[sns]\ntopic_arn = \"arn:aws:sns:us-east-1:1:global.fifo\"\n\
             [sqs]\nfilters = [\"Order.*\"]\nqueue_name = \"q\"\n",
        );
        assert!(problems(&c).iter().any(|p| p.key == "sqs.queue_name"));
    }

    #[test]
    fn value_ranges_are_checked() {
        let c = parse("service = \"\"\ninitialization = [\"QUEUE_POLLING\"]\n[sqs]\nmax_messages = 11\nwait_time_seconds = 21\n[lock]\nurls = [\"redis://a\", \"redis://b\"]\n");
        let keys: Vec<_> = problems(&c).into_iter().map(|p| p.key).collect();
        for k in [
            "service",
            "sqs.max_messages",
            "sqs.wait_time_seconds",
            "lock.urls",
            "plugins.dirs",
            "bindings",
        ] {
            assert!(keys.iter().any(|x| x == k), "missing {k} in {keys:?}");
        }
    }
}
