//! Conversions between agent-sdk's envelopes and the wire messages.
//!
//! The wire form is the Python client's: the header fields `event_id`,
//! `sequence`, `timestamp` and `type` are typed fields of the message; the
//! event's other fields are a JSON object in `body`, content type
//! `application/json`.

use agent_sdk_foundation::events::{AgentEvent, AgentEventEnvelope};
use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::error::{Error, ErrorKind, Result};
use crate::pb;

/// The content type of every body this client writes, and the only one it reads.
pub const JSON: &str = "application/json";

/// The keys of the flat JSON form that belong to the envelope, not the event.
const ENVELOPE_KEYS: [&str; 3] = ["event_id", "sequence", "timestamp"];

/// The wire message of an envelope.
///
/// Fails with [`ErrorKind::EventFormat`] when the event does not serialize to
/// a JSON object with a string `type`, when one of its fields has an
/// envelope key's name (the flat JSON form could not tell them apart), or
/// when the timestamp cannot be written as RFC 3339 (a year past 9999).
pub(crate) fn envelope_to_proto(envelope: &AgentEventEnvelope) -> Result<pb::EventEnvelope> {
    let format_error = |problem: String| {
        Error::local(
            ErrorKind::EventFormat,
            format!("event {} cannot be encoded: {problem}", envelope.event_id),
        )
    };
    let Value::Object(mut fields) =
        serde_json::to_value(&envelope.event).map_err(|e| format_error(e.to_string()))?
    else {
        return Err(format_error("it is not a JSON object".into()));
    };
    let Some(Value::String(event_type)) = fields.remove("type") else {
        return Err(format_error("it has no string \"type\"".into()));
    };
    if let Some(key) = ENVELOPE_KEYS.iter().find(|key| fields.contains_key(**key)) {
        return Err(format_error(format!(
            "its field {key:?} clashes with the envelope's"
        )));
    }
    let timestamp = envelope
        .timestamp
        .format(&Rfc3339)
        .map_err(|e| format_error(format!("timestamp: {e}")))?;
    Ok(pb::EventEnvelope {
        event_id: envelope.event_id.to_string(),
        sequence: envelope.sequence,
        timestamp,
        r#type: event_type,
        body: serde_json::to_vec(&fields).map_err(|e| format_error(e.to_string()))?,
        content_type: JSON.to_owned(),
    })
}

/// An envelope exactly as stored, not yet decoded into agent-sdk's types.
///
/// Every stored event can be represented: event types this crate's version
/// of [`AgentEvent`] does not know, ids that are not UUIDs and timestamps
/// that are not RFC 3339 (written by other clients) included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawEnvelope {
    /// The agent's id for the event (a UUID when agent-sdk wrote it).
    pub event_id: String,
    /// The agent's own counter, as given.
    pub sequence: u64,
    /// The timestamp as the writer wrote it (RFC 3339 from agent-sdk).
    pub timestamp: String,
    /// The event kind (`text_delta`, ...), the `type` key of the flat JSON form.
    pub event_type: String,
    /// The encoding of `body` ("application/json" for every client so far).
    pub content_type: String,
    /// The event's fields other than `type`, encoded as `content_type` says.
    pub body: Vec<u8>,
}

impl RawEnvelope {
    pub(crate) fn from_proto(message: pb::EventEnvelope) -> Self {
        Self {
            event_id: message.event_id,
            sequence: message.sequence,
            timestamp: message.timestamp,
            event_type: message.r#type,
            content_type: if message.content_type.is_empty() {
                JSON.to_owned()
            } else {
                message.content_type
            },
            body: message.body,
        }
    }

    pub(crate) fn to_proto(&self) -> pb::EventEnvelope {
        pb::EventEnvelope {
            event_id: self.event_id.clone(),
            sequence: self.sequence,
            timestamp: self.timestamp.clone(),
            r#type: self.event_type.clone(),
            body: self.body.clone(),
            content_type: self.content_type.clone(),
        }
    }

    fn format_error(&self, problem: impl std::fmt::Display) -> Error {
        Error::local(
            ErrorKind::EventFormat,
            format!(
                "event {:?} of type {:?} cannot be decoded: {problem}",
                self.event_id, self.event_type
            ),
        )
    }

    /// The event's fields: the JSON object of the body, with `type` added.
    ///
    /// Fails with [`ErrorKind::EventFormat`] for a body that is not JSON or
    /// not an object. An empty body is an event with no fields.
    pub fn event_fields(&self) -> Result<Map<String, Value>> {
        if self.content_type != JSON {
            return Err(self.format_error(format!(
                "it is encoded as {:?}; this client reads only {JSON}",
                self.content_type
            )));
        }
        let mut fields = if self.body.is_empty() {
            Map::new()
        } else {
            match serde_json::from_slice(&self.body) {
                Ok(Value::Object(fields)) => fields,
                Ok(_) => return Err(self.format_error("its body is not a JSON object")),
                Err(e) => return Err(self.format_error(format!("invalid JSON: {e}"))),
            }
        };
        fields.insert("type".to_owned(), Value::String(self.event_type.clone()));
        Ok(fields)
    }

    /// The flat JSON object of the contract: the envelope's keys beside the event's.
    pub fn to_json(&self) -> Result<Value> {
        let mut flat = self.event_fields()?;
        flat.insert("event_id".to_owned(), Value::String(self.event_id.clone()));
        flat.insert("sequence".to_owned(), Value::from(self.sequence));
        flat.insert(
            "timestamp".to_owned(),
            Value::String(self.timestamp.clone()),
        );
        Ok(Value::Object(flat))
    }

    /// The envelope as agent-sdk's type.
    ///
    /// Fails with [`ErrorKind::EventFormat`], naming the event, when the
    /// event id is not a UUID, the timestamp is not RFC 3339, or the type or
    /// fields are not an [`AgentEvent`] this crate version knows.
    pub fn decode(&self) -> Result<AgentEventEnvelope> {
        let event_id = uuid::Uuid::parse_str(&self.event_id)
            .map_err(|e| self.format_error(format!("event_id is not a UUID: {e}")))?;
        let timestamp = OffsetDateTime::parse(&self.timestamp, &Rfc3339)
            .map_err(|e| self.format_error(format!("timestamp is not RFC 3339: {e}")))?;
        let event: AgentEvent = serde_json::from_value(Value::Object(self.event_fields()?))
            .map_err(|e| self.format_error(e))?;
        Ok(AgentEventEnvelope {
            event_id,
            sequence: self.sequence,
            timestamp,
            event,
        })
    }
}

/// What the [`EventStore`](agent_sdk_tools::stores::EventStore) methods do
/// with a stored event they cannot turn into an [`AgentEventEnvelope`]: a
/// type newer than this crate's [`AgentEvent`], or one written by another
/// client that agent-sdk's types cannot hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UndecodableEvents {
    /// Leave the event out of the result and log a warning (target
    /// `turnstore_client`) naming the thread, the position, the event id
    /// and the type. The default: the trait can only return agent-sdk's
    /// envelopes, and one event an older agent cannot represent must not
    /// make its whole history unreadable (every store error ends the run).
    #[default]
    Skip,
    /// Fail the whole read with [`ErrorKind::EventFormat`] naming the event.
    Fail,
}

/// Decode stored events for the trait, applying `policy` to undecodable ones.
pub(crate) fn decode_for_trait(
    thread_id: &str,
    events: impl IntoIterator<Item = pb::StoredEvent>,
    policy: UndecodableEvents,
) -> Result<Vec<AgentEventEnvelope>> {
    let mut decoded = Vec::new();
    for stored in events {
        let raw = RawEnvelope::from_proto(stored.envelope.unwrap_or_default());
        match raw.decode() {
            Ok(envelope) => decoded.push(envelope),
            Err(error) if policy == UndecodableEvents::Skip => log::warn!(
                target: "turnstore_client",
                "skipping event at position {} of thread {thread_id:?}: {}",
                stored.position,
                error.message()
            ),
            Err(error) => return Err(error),
        }
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_sdk_foundation::events::SequenceCounter;

    #[test]
    fn round_trip_keeps_every_field() {
        let counter = SequenceCounter::with_offset(41);
        let envelope = AgentEventEnvelope::wrap(AgentEvent::text_delta("m1", "Hé 😀"), &counter);
        let message = envelope_to_proto(&envelope).unwrap();
        assert_eq!(message.r#type, "text_delta");
        assert_eq!(message.sequence, 41);
        assert_eq!(message.content_type, JSON);
        let body: Value = serde_json::from_slice(&message.body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"message_id": "m1", "delta": "Hé 😀"})
        );
        let back = RawEnvelope::from_proto(message).decode().unwrap();
        assert_eq!(back.event_id, envelope.event_id);
        assert_eq!(back.timestamp, envelope.timestamp);
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            serde_json::to_value(&envelope).unwrap()
        );
    }

    #[test]
    fn unknown_type_is_an_error_naming_the_event() {
        let raw = RawEnvelope {
            event_id: uuid::Uuid::new_v4().to_string(),
            sequence: 0,
            timestamp: "2026-01-02T03:04:05.5Z".into(),
            event_type: "hologram".into(),
            content_type: JSON.into(),
            body: br#"{"x":1}"#.to_vec(),
        };
        let error = raw.decode().unwrap_err();
        assert_eq!(error.kind(), ErrorKind::EventFormat);
        assert!(error.message().contains("\"hologram\""), "{error}");
        assert_eq!(raw.to_json().unwrap()["x"], 1);
        assert_eq!(raw.to_json().unwrap()["type"], "hologram");
    }
}
