//! The data plane of shardflow: result partitions, input gates, credit-based channels
//! and record framing in memory segments.
//!
//! A producer subtask writes records through a [`ResultPartition`] into the
//! subpartition its caller routed each record to, copying it once into that
//! subpartition's current segment. A full buffer leaves against a credit over a
//! [`channel`], or waits in the partition's queue: writing never blocks, and the
//! task awaits [`ResultPartition::poll_ready`] between records once the partition is
//! overdrawn. The consumer subtask's [`InputGate`] reads its channels, hands out
//! buffers read in place, and returns each credit when the buffer is dropped.
//!
//! ```text
//!  producer shard                                     consumer shard
//!  records ─► ResultPartition ─► subpartition k ─► channel k ─► InputGate ─► task
//!               (copy once)      (segment; queue)  (ring, credits)  (read in place)
//!                    ▲                                                   │
//!                    └─────────── credit back when the buffer drops ◄────┘
//! ```
//!
//! Invariants:
//! - a data buffer is sent only against a credit: memory in flight per channel is at
//!   most `exclusive + floating` segments (see [`CreditLedger`]); what waits beyond
//!   that is bounded by the partition's overdraft, checked between its caller's
//!   steps; segments a step writes beyond the partition's reservation are charged
//!   to the shard's network memory ([`ResultPartition::charge_overdraft_to`]), and
//!   past it spill to the heap ([`ResultPartition::spill_to`]); a record larger
//!   than a segment travels alone in a heap buffer of its size, charged alike
//!   ([`ResultPartition::write_var`], [`ResultPartition::write_pod`]);
//! - events ([`Event`]) need no credit and have reserved ring room: data never starves
//!   a barrier; they stay in order with the data of their channel;
//! - the consumer is woken at most once per buffer, and only if it parked.
//!
//! The channel types are executor-agnostic (`std` wakers), so the same code runs
//! inside shards (on their own scheduler) and in plain tests:
//!
//! ```
//! use std::future::poll_fn;
//! use std::rc::Rc;
//! use futures_lite::future::block_on;
//! use shardflow_memory::SegmentPoolBuilder;
//! use shardflow_netstack::{channel, CreditLedger, GateItem, InputGate, ResultPartition};
//!
//! let pool = Rc::new(SegmentPoolBuilder::new(0, 8).segment_bytes(4096).build()?);
//! let ledger = CreditLedger::new(1, 2, 1);
//! let (tx, rx) = channel(ledger.initial_credits(), ledger.max_in_flight_per_channel(), 2);
//! let mut out = ResultPartition::new(pool, vec![tx], 2);
//! let mut gate = InputGate::new(vec![rx], ledger);
//! block_on(async {
//!     out.write_pod(0, &[1u64, 10])?;
//!     out.write_pod(0, &[2u64, 20])?;
//!     out.finish()?;
//!     poll_fn(|cx| out.poll_ready(cx)).await?;
//!     let mut sum = 0;
//!     while let Some((_channel, item)) = gate.next().await? {
//!         if let GateItem::Data(buf) = item {
//!             sum += buf.pod::<[u64; 2]>()?.iter().map(|r| r[1]).sum::<u64>();
//!         }
//!     }
//!     assert_eq!(sum, 30);
//!     Ok::<(), shardflow_netstack::NetError>(())
//! })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]

mod buffer;
mod channel;
mod credit;
mod error;
mod event;
mod framing;
mod gate;
mod handoff;
mod partition;
mod storage;
mod sync;

pub use buffer::Buffer;
pub use channel::{channel, ChannelReceiver, ChannelSender, Envelope};
pub use credit::{CreditLedger, Recycle};
pub use error::{NetError, ProducerEnd};
pub use event::{CheckpointBarrier, Event};
pub use framing::{VarRecords, VAR_HEADER};
pub use gate::{GateItem, InputBuffer, InputGate};
pub use handoff::{ParkedWaker, RoomWaiters};
pub use partition::{fmix64, ResultPartition};
