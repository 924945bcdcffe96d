//! The two ways a batch goes upstream, behind one interface so the sender loop does not care: HTTPS
//! ([`client::Client`], SPEC 6) or NATS JetStream ([`nats::NatsClient`], SPEC 6.1). Both answer with an `UploadAck`
//! (JetStream's publish ack becomes `accepted = true`) or a [`SendError`] that says retry or alarm.

use bytes::Bytes;

use crate::proto::upstream::UploadAck;
use crate::upstream::client::{self, SendError};
use crate::upstream::nats;

/// The transport of one link.
#[derive(Debug)]
pub enum Transport {
    Https(client::Client),
    Nats(Box<nats::NatsClient>),
}

impl Transport {
    /// Sends one batch and returns its acknowledgement. `outbox_id` names the outbox in the JetStream message id.
    /// Cancel-safe (see each transport).
    pub async fn post(&mut self, batch_seq: u64, outbox_id: &str, body: Bytes) -> Result<UploadAck, SendError> {
        match self {
            Transport::Https(c) => c.post(batch_seq, body).await,
            Transport::Nats(c) => c.post(batch_seq, outbox_id, body).await,
        }
    }

    /// The receiver, for logs: `host:port`, or the NATS servers and the subject.
    pub fn receiver(&self) -> String {
        match self {
            Transport::Https(c) => c.endpoint().authority.clone(),
            Transport::Nats(c) => format!("{} ({})", c.endpoint().servers.join(","), c.endpoint().subject),
        }
    }
}
