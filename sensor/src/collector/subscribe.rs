//! `nhisensor.v1.Subscriptions/Subscribe`: the live feed for SIEM-side consumers, filtered on
//! the server. Fan-out goes through a broadcast ring: publishing never waits for a
//! subscriber, and one that falls more than the ring behind skips what it missed and is told
//! how much with a `sensor.loss` event.

use std::{pin::Pin, sync::Arc};

use nhi_proto::v1::{self as pb, subscriptions_server::Subscriptions};
use tokio::sync::{Notify, broadcast, mpsc};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

use super::metrics::CollectorMetrics;

/// Events a subscriber may fall behind before it skips: at ~1 KiB an event, 64 Mi of
/// memory at most, and a few seconds of a busy fleet's rate.
pub const SUBSCRIBER_BUFFER: usize = 65_536;

/// Where committed events go live: subscribers, and a wake-up for the file sinks.
pub struct Hub {
    tx: broadcast::Sender<Arc<pb::Event>>,
    /// Woken after each commit: the OCSF writer follows the store.
    pub committed: Notify,
}

impl Hub {
    pub fn new(buffer: usize) -> Self {
        Self {
            tx: broadcast::channel(buffer).0,
            committed: Notify::new(),
        }
    }

    pub fn publish(&self, stored: Vec<(i64, Arc<pb::Event>)>) {
        for (_, ev) in stored {
            // No receivers is fine: nobody subscribed.
            let _ = self.tx.send(ev);
        }
        self.committed.notify_one();
    }
}

/// A validated `SubscribeRequest`.
#[derive(Debug, Default)]
pub struct Filter {
    kinds: Vec<i32>,
    namespaces: Vec<String>,
    identities: Vec<String>,
    sensor_ids: Vec<String>,
    node_names: Vec<String>,
}

impl Filter {
    pub fn new(req: pb::SubscribeRequest) -> Result<Self, Status> {
        for k in &req.kinds {
            match pb::EventKind::try_from(*k) {
                Ok(pb::EventKind::Unspecified) | Err(_) => {
                    return Err(Status::invalid_argument(format!(
                        "SubscribeRequest.kinds: {k} is not an event kind"
                    )));
                }
                Ok(_) => {}
            }
        }
        let total = req.kinds.len()
            + req.namespaces.len()
            + req.identities.len()
            + req.sensor_ids.len()
            + req.node_names.len();
        if total > 1024 {
            return Err(Status::invalid_argument("more than 1024 filter values"));
        }
        Ok(Self {
            kinds: req.kinds,
            namespaces: req.namespaces,
            identities: req.identities,
            sensor_ids: req.sensor_ids,
            node_names: req.node_names,
        })
    }

    pub fn matches(&self, ev: &pb::Event) -> bool {
        fn any(list: &[String], v: Option<&str>) -> bool {
            list.is_empty() || v.is_some_and(|v| list.iter().any(|x| x == v))
        }
        let sensor = ev.sensor.as_ref();
        (self.kinds.is_empty() || self.kinds.contains(&ev.kind))
            && any(
                &self.namespaces,
                ev.workload.as_ref().map(|w| w.namespace.as_str()),
            )
            && any(
                &self.identities,
                ev.identity.as_ref().map(|i| i.id.as_str()),
            )
            && any(&self.sensor_ids, sensor.map(|s| s.sensor_id.as_str()))
            && any(&self.node_names, sensor.map(|s| s.node_name.as_str()))
    }
}

pub struct SubscriptionService {
    pub hub: Arc<Hub>,
    pub metrics: Arc<CollectorMetrics>,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

fn lag_notice(missed: u64) -> pb::Event {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    pb::Event {
        kind: pb::EventKind::SensorLoss as i32,
        time: Some(prost_types::Timestamp {
            seconds: now.as_secs() as i64,
            nanos: now.subsec_nanos() as i32,
        }),
        payload: Some(pb::event::Payload::Loss(pb::Loss {
            reason: pb::LossReason::SubscriberLagged as i32,
            count: missed,
            ..Default::default()
        })),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl Subscriptions for SubscriptionService {
    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let peer = request.remote_addr();
        let filter = Filter::new(request.into_inner())?;
        let mut rx = self.hub.tx.subscribe();
        // Small: the broadcast ring is the buffer; this only decouples the gRPC writer.
        let (tx, out) = mpsc::channel(256);
        let metrics = self.metrics.clone();
        tracing::info!(?peer, ?filter, "subscriber connected");
        tokio::spawn(async move {
            metrics.subscribers.inc();
            loop {
                let ev = match rx.recv().await {
                    Ok(ev) => ev,
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        metrics.subscriber_lagged.add(missed);
                        tracing::warn!(
                            ?peer,
                            missed,
                            "subscriber fell behind; told what it missed"
                        );
                        if tx.send(Ok(lag_notice(missed))).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                };
                if filter.matches(&ev) && tx.send(Ok((*ev).clone())).await.is_err() {
                    break;
                }
            }
            metrics.subscribers.dec();
            tracing::info!(?peer, "subscriber gone");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        let ev = pb::Event {
            kind: pb::EventKind::FileOpen as i32,
            workload: Some(pb::Workload {
                namespace: "prod".into(),
                ..Default::default()
            }),
            identity: Some(pb::Identity {
                id: "system:serviceaccount:prod:app".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let f = |req| Filter::new(req).unwrap().matches(&ev);
        assert!(f(pb::SubscribeRequest::default()));
        assert!(f(pb::SubscribeRequest {
            kinds: vec![pb::EventKind::FileOpen as i32, 7],
            namespaces: vec!["prod".into()],
            ..Default::default()
        }));
        assert!(!f(pb::SubscribeRequest {
            namespaces: vec!["dev".into()],
            ..Default::default()
        }));
        assert!(!f(pb::SubscribeRequest {
            sensor_ids: vec!["x".into()],
            ..Default::default()
        }));
        assert!(f(pb::SubscribeRequest {
            identities: vec!["system:serviceaccount:prod:app".into()],
            ..Default::default()
        }));
        assert!(
            Filter::new(pb::SubscribeRequest {
                kinds: vec![0],
                ..Default::default()
            })
            .is_err()
        );
        assert!(
            Filter::new(pb::SubscribeRequest {
                kinds: vec![999],
                ..Default::default()
            })
            .is_err()
        );
    }
}
