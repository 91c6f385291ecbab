//! The worker's side of the metrics (`server::metrics`): the figures copied in once per loop
//! turn, and the page answered on the WebSocket port (`MetricsConfig::path`).

use super::*;
use crate::handler::Handler;
use crate::handshake::{Rejection, Request};
use crate::server::metrics::{Metrics, TurnFigures, CONTENT_TYPE};

impl<D> WorkerCtx<D> {
    /// Once per loop turn: copies in what the wheel, the driver and the deflate pool count, and
    /// (when the metrics are on) the turn's duration since its poll ended, read from `clock`.
    pub(super) fn publish_metrics(&mut self, clock: &impl Fn() -> Instant) {
        let took = self
            .cfg
            .metrics
            .is_on()
            .then(|| clock().saturating_duration_since(self.now));
        self.metrics.publish(TurnFigures {
            connections_held: self.conns.len(),
            backpressure_drops: self.dropped,
            timers_armed: self.wheel.armed,
            timers_fired: self.wheel.fired,
            driver: self.driver.stats(),
            deflate: self.compression.stats(),
            took,
        });
    }
}

impl<H: Handler> Worker<H> {
    /// The metrics, when `request` is a `GET` of `MetricsConfig::path`.
    pub(super) fn metrics_page(&self, request: &Request) -> Option<Rejection> {
        let path = self.ctx.cfg.metrics.path.as_deref()?;
        if request.method() != "GET" || request.path().split('?').next() != Some(path) {
            return None;
        }
        let mut body = String::new();
        Metrics {
            shared: Arc::clone(&self.shared),
        }
        .encode(&mut body);
        Some(Rejection {
            status: 200,
            headers: vec![("Content-Type".into(), CONTENT_TYPE.into())],
            body: body.into_bytes(),
        })
    }
}
