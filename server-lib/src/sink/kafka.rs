//! The Kafka event sink (feature `kafka`): `rdkafka` with its bundled librdkafka.
//!
//! Records go to `<prefix>.<family>` topics (created at start when missing) through one
//! threaded producer: `publish` only queues, librdkafka batches, retries (for
//! `message.timeout.ms`, 5 minutes by default) and delivers in the background, and the delivery
//! callback counts each outcome (`trailmark_sink_records_total{outcome}`).

use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;

use super::{EventSink, FAMILIES, SinkRecord};

/// Settings of the Kafka sink.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `host:port[,host:port…]`.
    pub brokers: String,
    /// Topic names are `<prefix>.<family>`. Default `trailmark`.
    pub topic_prefix: String,
    /// Partitions of topics the sink creates. Default 6.
    pub partitions: i32,
    /// Replication factor of topics the sink creates. Default 1 (set 3 on a real cluster).
    pub replication: i32,
    /// Extra librdkafka producer properties (`acks`, `compression.type`, `security.protocol`, …).
    pub properties: Vec<(String, String)>,
}

impl KafkaConfig {
    pub fn new(brokers: impl Into<String>) -> Self {
        KafkaConfig {
            brokers: brokers.into(),
            topic_prefix: "trailmark".into(),
            partitions: 6,
            replication: 1,
            properties: Vec::new(),
        }
    }

    pub fn topic(&self, family: &str) -> String {
        format!("{}.{family}", self.topic_prefix)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KafkaSinkError {
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("Kafka topic {0}: {1}")]
    Topic(String, String),
}

/// Counts deliveries.
pub struct Deliveries;

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => metrics::counter!("trailmark_sink_records_total", "outcome" => "delivered").increment(1),
            Err((e, _)) => {
                metrics::counter!("trailmark_sink_records_total", "outcome" => "failed").increment(1);
                tracing::warn!(error = %e, "a record could not be delivered to Kafka");
            }
        }
    }
}

pub struct KafkaSink {
    producer: ThreadedProducer<Deliveries>,
    topics: Vec<(&'static str, String)>,
}

impl KafkaSink {
    /// Connects, creates missing topics and starts the producer.
    pub async fn connect(config: KafkaConfig) -> Result<Self, KafkaSinkError> {
        // The admin client (topic creation) connects like the producer: the same security
        // properties (`security.protocol`, `ssl.*`, `sasl.*`), or it could not reach a broker
        // that requires them.
        let mut client = ClientConfig::new();
        client.set("bootstrap.servers", &config.brokers);
        for (k, v) in &config.properties {
            client.set(k, v);
        }
        let admin: AdminClient<DefaultClientContext> = client.create()?;
        let topics: Vec<(&'static str, String)> = FAMILIES.iter().map(|f| (*f, config.topic(f))).collect();
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|(_, name)| NewTopic::new(name, config.partitions, TopicReplication::Fixed(config.replication)))
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for result in admin.create_topics(&new, &options).await? {
            match result {
                Ok(_) => {}
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => return Err(KafkaSinkError::Topic(name, code.to_string())),
            }
        }
        let mut producer = ClientConfig::new();
        producer.set("bootstrap.servers", &config.brokers).set("acks", "all").set("linger.ms", "20");
        for (k, v) in &config.properties {
            producer.set(k, v);
        }
        let producer: ThreadedProducer<Deliveries> = producer.create_with_context(Deliveries)?;
        Ok(KafkaSink { producer, topics })
    }

    fn topic(&self, family: &str) -> &str {
        self.topics.iter().find(|(f, _)| *f == family).map(|(_, t)| t.as_str()).unwrap_or(&self.topics[0].1)
    }

    /// Waits until everything queued is delivered (or `timeout` passes).
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)
    }
}

impl EventSink for KafkaSink {
    fn publish(&self, records: Vec<SinkRecord>) {
        for r in &records {
            let record = BaseRecord::to(self.topic(r.family)).key(&r.key).payload(&r.payload);
            if let Err((e, _)) = self.producer.send(record) {
                // The local queue is full (the cluster has been unreachable for a while).
                metrics::counter!("trailmark_sink_records_total", "outcome" => "dropped").increment(1);
                tracing::warn!(error = %e, "a record was not queued for Kafka");
            }
        }
    }

    fn backlog(&self) -> usize {
        self.producer.in_flight_count().max(0) as usize
    }
}
