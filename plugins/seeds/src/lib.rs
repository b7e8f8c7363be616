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
//! - `simple` — microcosm-pubsub's `SimpleHandler`: takes messages of media type
//!   `application/vnd.globality.pubsub.simple` whose body the binding's JSON Schema
//!   (`examples/schemas/simple.json`, the port of `SimpleSchema`: `message` string and
//!   `timestamp` number, both required) has already validated, and hands them to a collaborator.
//! - `cart_item_added` — sqs-mega's `ShoppingCartItemAdded` subscriber: the binding's `match`
//!   rules select the MEGA events (`examples/seeds.toml`); the handler reads the event and the
//!   cart object through the plugin-api's MEGA helpers.

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

/// microcosm-pubsub's `SimpleHandler`: `collaborator.do_something(message)`, then ack.
pub struct Simple;

impl Handler for Simple {
    fn handle(&self, message: &Message<'_>, ctx: &Context<'_>) -> HandlerResult {
        // The schema guarantees the shape; reading it can still fail on a misbound message.
        let body: serde_json::Value = message.json()?;
        let text = body["message"].as_str().unwrap_or_default();
        let timestamp = body["timestamp"].as_f64().unwrap_or_default();
        ctx.info(&format!(
            "collaborator did something with {text:?} sent at {timestamp}"
        ));
        Ok(Outcome::Ack)
    }
}

/// sqs-mega's `ShoppingCartItemAdded` subscriber.
pub struct CartItemAdded;

impl Handler for CartItemAdded {
    fn handle(&self, message: &Message<'_>, ctx: &Context<'_>) -> HandlerResult {
        let mega = match message.mega() {
            Ok(mega) => mega,
            Err(e) => return Ok(Outcome::dead_letter(format!("not a MEGA event: {e}"))),
        };
        let item = mega
            .event
            .attribute("item_id")
            .and_then(|v| v.as_str())
            .unwrap_or("?");
        let quantity = mega
            .event
            .attribute("quantity")
            .and_then(|v| v.as_i64())
            .unwrap_or(0);
        let Some(cart) = mega.object.as_ref() else {
            return Ok(Outcome::dead_letter("a cart event needs its `object`"));
        };
        let now = cart
            .current
            .get("value")
            .and_then(|v| v.as_str())
            .unwrap_or("?");
        let before = cart
            .previous
            .as_ref()
            .and_then(|p| p.get("value"))
            .and_then(|v| v.as_str())
            .unwrap_or("?");
        ctx.info(&format!(
            "cart {} of user {}: {quantity} x item {item} added, value {before} -> {now}",
            cart.id.as_deref().unwrap_or("?"),
            mega.event.subject.as_deref().unwrap_or("?"),
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
        "simple" => |_config: Config| Ok::<_, String>(Simple),
        "cart_item_added" => |_config: Config| Ok::<_, String>(CartItemAdded),
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
    fn simple_hands_the_message_to_its_collaborator() {
        let r = Harness::new(Simple).call(
            &TestMessage::new("Simple.sent")
                .attribute("media_type", "application/vnd.globality.pubsub.simple")
                .json(json!({ "message": "hello", "timestamp": 1.5 })),
        );
        assert_eq!(r.outcome, TestOutcome::Ack);
        assert!(
            r.logged(r#"did something with "hello" sent at 1.5"#),
            "{:?}",
            r.logs
        );
    }

    #[test]
    fn cart_item_added_reads_the_mega_event() {
        let event = include_str!("../../../examples/events/cart-item-added.json");
        let r = Harness::new(CartItemAdded)
            .call(&TestMessage::new("ShoppingCart.ItemAdded.shop").text(event));
        assert_eq!(r.outcome, TestOutcome::Ack);
        assert!(
            r.logged("cart 18a3f92e-1fbf-45eb-8769-d836d0a1be55 of user 987650: 5 x item 61fcc874-624e-40f8-8fd7-0e663c7837e8 added, value 277.42 -> 377.37"),
            "{:?}",
            r.logs
        );
        let not_mega = Harness::new(CartItemAdded)
            .call(&TestMessage::new("ShoppingCart.ItemAdded.shop").json(json!({ "a": 1 })));
        assert!(matches!(not_mega.outcome, TestOutcome::DeadLetter { .. }));
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
