//! `seeds`: the handlers from the Python libraries iniesta replaces, as one plugin.
//!
//! Bound in `examples/python-iniesta.toml`:
//!
//! - `event_happened` — the Python iniesta's event handler:
//!   ```python
//!   @SQSClient.handler('EventHappened.producer')
//!   def event_happened_handler(message):
//!       # .. do some logic ..
//!       return True
//!   ```
//!   Returning normally acked (deleted) the message; raising left it for redelivery. Here: `Ok(Ack)`
//!   or `Err(..)`.
//! - `default` — the Python iniesta's default handler (`@SQSClient.handler` with no event):
//!   takes every event no other binding takes.
//! - `shipper` — a handler that publishes a follow-up event through the host: on an order
//!   event it publishes `Order.Shipped` with the order id. If the publish fails the message is
//!   redelivered (the follow-up is never silently lost).

use iniesta_plugin_api::{
    export_plugin, Config, Context, Handler, HandlerResult, Message, Outcome,
};

/// The Python iniesta's `event_happened_handler`.
pub struct EventHappened;

impl Handler for EventHappened {
    fn handle(&self, message: &Message<'_>, ctx: &Context<'_>) -> HandlerResult {
        let body: serde_json::Value = message.json()?;
        ctx.info(&format!("event happened: {} {body}", message.id()));
        Ok(Outcome::Ack)
    }
}

/// The Python iniesta's default handler.
pub struct Default;

impl Handler for Default {
    fn handle(&self, message: &Message<'_>, ctx: &Context<'_>) -> HandlerResult {
        ctx.info(&format!(
            "default handler: no specific handler for `{}` ({} bytes)",
            message.event(),
            message.body().len()
        ));
        Ok(Outcome::Ack)
    }
}

/// Publishes `Order.Shipped` (or the configured `follow_up` event) for every order it sees.
pub struct Shipper {
    follow_up: String,
}

impl Shipper {
    /// Config: `follow_up` (default `"Order.Shipped"`).
    pub fn new(config: Config) -> Result<Self, String> {
        let follow_up = config
            .get_str("follow_up")
            .unwrap_or("Order.Shipped")
            .to_string();
        if follow_up.is_empty() {
            return Err("`follow_up` must name an event".into());
        }
        Ok(Self { follow_up })
    }
}

impl Handler for Shipper {
    fn handle(&self, message: &Message<'_>, ctx: &Context<'_>) -> HandlerResult {
        let order: serde_json::Value = match message.json() {
            Ok(order) => order,
            Err(e) => return Ok(Outcome::dead_letter(format!("not an order: {e}"))),
        };
        let Some(id) = order.get("id").cloned() else {
            return Ok(Outcome::dead_letter("an order needs an `id`"));
        };
        let shipped = serde_json::json!({ "id": id, "from": message.event() });
        // `?`: if the host cannot publish, the order is redelivered and shipped later.
        let published = ctx.publish_json(&self.follow_up, &shipped)?;
        ctx.info(&format!(
            "shipped order {id} ({} {published})",
            self.follow_up
        ));
        Ok(Outcome::Ack)
    }
}

export_plugin! {
    name: "seeds",
    handlers: {
        "event_happened" => |_config: Config| Ok::<_, String>(EventHappened),
        "default" => |_config: Config| Ok::<_, String>(Default),
        "shipper" => Shipper::new,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use iniesta_plugin_api::testing::{Harness, TestMessage, TestOutcome};
    use serde_json::json;

    #[test]
    fn event_happened_acks_like_returning_true_and_retries_like_raising() {
        let h = Harness::new(EventHappened);
        let ok = h.call(
            &TestMessage::new("EventHappened.producer")
                .json(json!({ "id": 1 }))
                .id("m-1"),
        );
        assert_eq!(ok.outcome, TestOutcome::Ack);
        assert!(ok.logged("event happened: m-1"));
        let raised = h.call(&TestMessage::new("EventHappened.producer").text("not json"));
        assert!(
            matches!(raised.outcome, TestOutcome::Failed { .. }),
            "{:?}",
            raised.outcome
        );
    }

    #[test]
    fn the_default_handler_takes_anything() {
        let r =
            Harness::new(Default).call(&TestMessage::new("Something.else").bytes(vec![0, 1, 2]));
        assert_eq!(r.outcome, TestOutcome::Ack);
        assert!(r.logged("no specific handler for `Something.else` (3 bytes)"));
    }

    #[test]
    fn the_shipper_publishes_a_follow_up_or_is_redelivered() {
        let h = Harness::from_config(Shipper::new, json!({})).expect("valid config");
        let r = h.call(&TestMessage::new("Order.Created.shop").json(json!({ "id": 42 })));
        assert_eq!(r.outcome, TestOutcome::Ack);
        assert_eq!(r.published.len(), 1);
        assert_eq!(r.published[0].event, "Order.Shipped");
        let body: serde_json::Value = serde_json::from_slice(&r.published[0].body).expect("json");
        assert_eq!(body, json!({ "id": 42, "from": "Order.Created.shop" }));
        let bad = h.call(&TestMessage::new("Order.Created.shop").json(json!({ "no": "id" })));
        assert!(matches!(bad.outcome, TestOutcome::DeadLetter { .. }));
        h.fail_publish("broker unreachable");
        let down = h.call(&TestMessage::new("Order.Created.shop").json(json!({ "id": 43 })));
        assert!(
            matches!(down.outcome, TestOutcome::Failed { ref reason } if reason.contains("broker unreachable"))
        );
        assert!(Harness::from_config(Shipper::new, json!({ "follow_up": "" })).is_err());
    }
}
