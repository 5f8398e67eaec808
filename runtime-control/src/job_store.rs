//! What a highly available coordinator keeps of each job in its job store
//! (Flink's JobGraphStore and the job's restart state): a [`JobRecord`] per
//! job, written whole whenever it changes, and its byte form.
//!
//! The leader writes a job's record before it acknowledges the submission, again
//! when the job restarts (new epoch) and when it ends (with its final details).
//! A new leader reads every record: jobs that had not ended run again from the
//! start (or, once checkpoints exist, from [`JobRecord::latest_checkpoint`]);
//! ended ones answer `list` and `status` as before.
//!
//! ```text
//!  offset 0      4           6            8              16
//!         [magic "SFJR"][version u16][reserved 0 × 10][rkyv archive of JobRecord]
//! ```
//!
//! Bytes from the store are outside input: [`JobRecord::decode`] checks the
//! header, copies the archive into an aligned buffer and validates it, so a
//! damaged record is a [`JobRecordError`], never a panic.

use rkyv::rancor;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

use crate::ids::{CheckpointId, JobId};
use crate::job_graph::JobGraph;
use crate::protocol::{JobDetails, JobSummary};
use crate::state::{ExecutionState, JobStatus};

/// The first bytes of every record.
const MAGIC: &[u8; 4] = b"SFJR";
/// The record layout this build writes and reads: 2 since a finished task's
/// result (`TaskResultInfo`, inside the final details) carried its
/// back-pressure, 3 since it carries where its time went (`TaskTimes`). A
/// record of another version is refused by type, and a new
/// leader skips it with that reason in its log.
pub const JOB_RECORD_VERSION: u16 = 3;
/// Bytes before the archive (keeps it 16-byte aligned).
const HEADER: usize = 16;

/// Where a job's latest completed checkpoint lives: nothing writes it yet (the
/// checkpoint protocol will), but the record has its place, so a new leader will
/// restore from it.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct CompletedCheckpointPointer {
    /// The checkpoint.
    pub checkpoint: CheckpointId,
    /// Where its metadata is (a path or URL).
    pub location: String,
}

/// One job as the job store keeps it.
#[derive(Debug, Clone, PartialEq, Archive, Serialize, Deserialize)]
pub struct JobRecord {
    /// The job's id: kept by every leader, so clients find it again.
    pub job: JobId,
    /// The graph as submitted.
    pub graph: JobGraph,
    /// The placement strategy as submitted (empty: the cluster's default).
    pub placement: String,
    /// The restart strategy as submitted (empty: the cluster's default).
    pub restart: String,
    /// Attempt number of the job's latest deployment; a new leader deploys the
    /// next one, so attempts never repeat.
    pub epoch: u32,
    /// Restarts so far (the restart strategy counts on from here).
    pub restarts: u32,
    /// The job's status when written: not globally terminal means "run it".
    pub status: JobStatus,
    /// Its final details, once it has ended.
    pub details: Option<JobDetails>,
    /// The latest completed checkpoint, once checkpoints exist.
    pub latest_checkpoint: Option<CompletedCheckpointPointer>,
    /// The resource ids of the workers its latest deployment ran on (empty
    /// before the first): a new leader gives them a while to register again
    /// before it deploys the job, so the job lands where it ran.
    pub workers: Vec<String>,
}

/// Why bytes from the job store are not a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobRecordError {
    /// Too short, or another magic.
    #[error("not a shardflow job record ({len} bytes)")]
    NotARecord {
        /// Bytes given.
        len: usize,
    },
    /// Written by a build with another record layout.
    #[error("job record version {got} (this build reads version {JOB_RECORD_VERSION})")]
    Version {
        /// The record's version.
        got: u16,
    },
    /// The archive does not validate.
    #[error("malformed job record: {reason}")]
    Malformed {
        /// rkyv's account.
        reason: String,
    },
}

impl JobRecord {
    /// Whether the job had ended when the record was written.
    pub fn has_ended(&self) -> bool {
        self.status.is_globally_terminal()
    }

    /// The record as bytes for the store.
    pub fn encode(&self) -> Result<Vec<u8>, JobRecordError> {
        let mut out = AlignedVec::<16>::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&JOB_RECORD_VERSION.to_le_bytes());
        out.extend_from_slice(&[0u8; HEADER - 6]);
        let out = rkyv::api::high::to_bytes_in::<_, rancor::BoxedError>(self, out)
            .map_err(|e| JobRecordError::Malformed { reason: e.to_string() })?;
        Ok(out.to_vec())
    }

    /// Reads bytes written by [`Self::encode`], checking everything.
    pub fn decode(bytes: &[u8]) -> Result<Self, JobRecordError> {
        if bytes.len() < HEADER || &bytes[..4] != MAGIC {
            return Err(JobRecordError::NotARecord { len: bytes.len() });
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        if version != JOB_RECORD_VERSION {
            return Err(JobRecordError::Version { got: version });
        }
        let mut aligned = AlignedVec::<16>::with_capacity(bytes.len() - HEADER);
        aligned.extend_from_slice(&bytes[HEADER..]);
        let malformed = |e: rancor::BoxedError| JobRecordError::Malformed { reason: e.to_string() };
        let archived = rkyv::access::<rkyv::Archived<JobRecord>, rancor::BoxedError>(&aligned).map_err(malformed)?;
        rkyv::deserialize::<JobRecord, rancor::BoxedError>(archived).map_err(malformed)
    }

    /// The job in a listing, from its record (for jobs that ended under an
    /// earlier leader).
    pub fn summary(&self) -> JobSummary {
        let count = |st: ExecutionState| {
            self.details.as_ref().map_or(0, |d| d.subtasks.iter().filter(|s| s.state == st).count() as u32)
        };
        JobSummary {
            job: self.job,
            name: self.graph.name.clone(),
            status: self.status,
            subtasks: self.graph.vertices.iter().map(|v| v.parallelism).sum(),
            running: count(ExecutionState::Running),
            finished: count(ExecutionState::Finished),
            restarts: self.restarts,
        }
    }

    /// The job in detail, from its record.
    pub fn details(&self) -> JobDetails {
        self.details.clone().unwrap_or_else(|| JobDetails {
            job: self.job,
            name: self.graph.name.clone(),
            status: self.status,
            restarts: self.restarts,
            failure: None,
            submit_to_running_us: None,
            subtasks: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job_graph::{JobVertex, OperatorSpec, PartitionerKind};

    fn record() -> JobRecord {
        let mut g = JobGraph::new("counted");
        let v = |n: &str| JobVertex {
            name: n.into(),
            chain: vec![OperatorSpec::new("x", vec![1, 2, 3])],
            parallelism: 2,
            slot_sharing_group: "default".into(),
        };
        let a = g.add_vertex(v("a"));
        let b = g.add_vertex(v("b"));
        g.connect(a, b, PartitionerKind::Hash);
        JobRecord {
            job: JobId(12),
            graph: g,
            placement: "spread".into(),
            restart: String::new(),
            epoch: 3,
            restarts: 2,
            status: JobStatus::Running,
            details: None,
            latest_checkpoint: Some(CompletedCheckpointPointer { checkpoint: CheckpointId(4), location: "x".into() }),
            workers: vec!["w0".into(), "w1".into()],
        }
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let r = record();
        let bytes = r.encode().unwrap();
        assert_eq!(&bytes[..4], b"SFJR");
        assert_eq!(JobRecord::decode(&bytes).unwrap(), r);
        assert_eq!(r.summary().subtasks, 4);
        assert!(!r.has_ended());
    }

    #[test]
    fn damaged_records_are_typed_errors() {
        let bytes = record().encode().unwrap();
        assert_eq!(JobRecord::decode(b"SFJR"), Err(JobRecordError::NotARecord { len: 4 }));
        assert_eq!(
            JobRecord::decode(b"{\"job\": 1, \"not\": \"a record\"}"),
            Err(JobRecordError::NotARecord { len: 29 })
        );
        for version in [JOB_RECORD_VERSION - 1, JOB_RECORD_VERSION + 1] {
            let mut other = bytes.clone();
            other[4..6].copy_from_slice(&version.to_le_bytes());
            assert_eq!(JobRecord::decode(&other), Err(JobRecordError::Version { got: version }));
        }
        for cut in [HEADER, HEADER + 1, bytes.len() / 2, bytes.len() - 1] {
            assert!(matches!(JobRecord::decode(&bytes[..cut]), Err(JobRecordError::Malformed { .. })), "cut {cut}");
        }
        let mut garbage = bytes.clone();
        for (i, b) in garbage[HEADER..].iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(151).wrapping_add(7);
        }
        assert!(matches!(JobRecord::decode(&garbage), Err(JobRecordError::Malformed { .. })));
    }
}
