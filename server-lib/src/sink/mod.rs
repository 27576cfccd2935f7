//! The event stream: accepted events (after the store committed them), attribution decisions
//! and deletion requests, published for downstream systems (Flink, Spark, ClickHouse, a
//! warehouse loader). The server hands records to an [`EventSink`]; [`kafka::KafkaSink`]
//! (feature `kafka`) publishes them to Kafka. Without a sink nothing is published.
//!
//! The encoding ([`crate::domain::stream`]) is JSON, one object per record, described in `docs/stream.md`. Records are keyed
//! by the user id when the event has one, else by the anonymous id, so one user's (or one
//! device's) events land on one partition, in order.

#[cfg(feature = "kafka")]
pub mod kafka;

pub use crate::domain::stream::{
    DELETION_SCHEMA, EVENT_SCHEMA, FAMILIES, INSTALL_SCHEMA, SinkRecord, deletion_record, event_record, family,
    install_record,
};

/// Where records go. `publish` must not block: a sink queues and delivers in the background,
/// counting what it could not deliver.
pub trait EventSink: Send + Sync + 'static {
    fn publish(&self, records: Vec<SinkRecord>);
    /// Records queued and not yet acknowledged (for `/healthz` and metrics).
    fn backlog(&self) -> usize;
}
