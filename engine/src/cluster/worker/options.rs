//! What a worker is started with beyond its engine configuration: its options,
//! and how it reaches its coordinator (the connector).

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use super::super::link::{self, ConnectionLimits, FrameSink, Permit, PipeEnd, Received};

/// Settings of the worker beyond its engine configuration.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The name it registers under; default: host-pid-start time.
    pub resource_id: Option<String>,
    /// First wait before reconnecting. Default 50 ms.
    pub reconnect_min: Duration,
    /// Longest wait before reconnecting. Default 2 s.
    pub reconnect_max: Duration,
    /// How long it waits for the coordinator to accept its registration. Default 10 s.
    pub registration_timeout: Duration,
    /// What its connection to the coordinator may cost (frame size, queue,
    /// write timeout).
    pub limits: ConnectionLimits,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            resource_id: None,
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_secs(2),
            registration_timeout: Duration::from_secs(10),
            limits: ConnectionLimits::default(),
        }
    }
}

/// How a worker reaches its coordinator.
#[derive(Clone)]
pub(crate) enum Connector {
    /// Over TCP.
    Tcp(SocketAddr),
    /// In-process: each call yields a fresh pipe whose other end the coordinator
    /// serves.
    InProcess(Arc<dyn Fn() -> Option<PipeEnd> + Send + Sync>),
}

impl Connector {
    /// A new connection whose frames go to `deliver` from a reader thread, or why
    /// there is none.
    pub(super) fn connect(
        &self,
        limits: &ConnectionLimits,
        deliver: impl FnMut(Received, Permit) -> bool + Send + 'static,
    ) -> Result<Box<dyn FrameSink>, String> {
        match self {
            Connector::Tcp(addr) => {
                let stream =
                    TcpStream::connect_timeout(addr, Duration::from_secs(2)).map_err(|e| format!("{addr}: {e}"))?;
                let (sink, reader) = link::open_tcp("worker-conn", stream, limits, None).map_err(|e| e.to_string())?;
                link::spawn_reader("worker-conn-read".into(), reader, limits, deliver).map_err(|e| e.to_string())?;
                Ok(Box::new(sink))
            }
            Connector::InProcess(open) => {
                let PipeEnd { sink, reader } = open().ok_or("the in-process coordinator has stopped")?;
                link::spawn_reader("worker-conn-read".into(), reader, limits, deliver).map_err(|e| e.to_string())?;
                Ok(Box::new(sink))
            }
        }
    }
}
