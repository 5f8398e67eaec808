//! In-band events: they travel in order with the data of a channel, never need a
//! data credit, and have reserved room in every ring so data can never starve them.

/// A checkpoint barrier (aligned checkpoints come with the checkpoint coordinator).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CheckpointBarrier {
    /// Checkpoint this barrier belongs to.
    pub checkpoint_id: u64,
    /// When the coordinator triggered it, in ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// The sources stop after it (a job stopped with a snapshot): nothing
    /// follows it on a channel but the end of the partition, and each task
    /// snapshots its operators at the end of its input instead of finishing them.
    pub stop: bool,
}

/// An event on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// The producer subtask has emitted everything; nothing follows on this channel.
    EndOfPartition,
    /// Event time has advanced to this watermark.
    Watermark(u64),
    /// A checkpoint barrier.
    Barrier(CheckpointBarrier),
}
