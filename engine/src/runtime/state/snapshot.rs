//! Snapshots: the bytes an operator's state is written to and restored from,
//! and a whole job's snapshot as bytes and as a file.
//!
//! Snapshot bytes of one key group of one operator: for each of its states, by
//! name, `[name len u32][name][entries u32]` then per entry `[key len u32][key]
//! [value len u32][value]` (keys and values as
//! [`Data::to_bytes`](crate::data::Data::to_bytes) writes them).
//!
//! A whole [`JobSnapshot`] goes to bytes (and a file) as a 16-byte header —
//! magic, format version, the CRC-32 of what follows — and the snapshot's rkyv
//! archive, read back checked (the CRC, then rkyv's validation): a file may come
//! from anywhere, and a damaged one must not restore other state.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::path::Path;

use crate::data::NetError;
use crate::error::{OperatorError, SnapshotError};
use crate::runtime::keyed::{TIMERS, TTL_PREFIX};

/// One operator's state as snapshotted by one or more subtasks.
#[derive(Debug, Clone, PartialEq, Eq, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct OperatorSnapshot {
    /// The operator (its name, unique in the job).
    pub operator: String,
    /// The job's key groups when the snapshot was taken.
    pub max_parallelism: u32,
    /// Keyed state, per key group.
    pub key_groups: BTreeMap<u32, Vec<u8>>,
    /// Non-keyed operator state: one list per subtask, its items as bytes.
    pub operator_state: Vec<Vec<Vec<u8>>>,
}

impl OperatorSnapshot {
    /// One subtask's operator list `items` under `entry` (`operator/list`).
    pub(crate) fn of_list(entry: String, max_parallelism: u32, items: Vec<Vec<u8>>) -> Self {
        OperatorSnapshot { operator: entry, max_parallelism, key_groups: BTreeMap::new(), operator_state: vec![items] }
    }

    /// Adds another subtask's part of the same operator's snapshot.
    pub fn merge(&mut self, other: OperatorSnapshot) {
        self.key_groups.extend(other.key_groups);
        self.operator_state.extend(other.operator_state);
    }

    /// What it holds, in numbers: its keyed states and their entries, its
    /// pending timers, its lists. Keyed bytes that do not read as state are
    /// an error.
    pub fn summary(&self) -> Result<OperatorSummary, SnapshotError> {
        let mut keyed_states: BTreeMap<String, u64> = BTreeMap::new();
        let mut timer_keys = 0;
        let mut expiring = 0;
        for (group, bytes) in &self.key_groups {
            let mut r = SnapshotReader::new(bytes);
            let bad =
                |e: OperatorError| SnapshotError::Malformed(format!("key group {group} of '{}': {e}", self.operator));
            while !r.is_empty() {
                let (name, entries) = r.state().map_err(bad)?;
                for _ in 0..entries {
                    r.entry().map_err(bad)?;
                }
                match name {
                    TIMERS => timer_keys += u64::from(entries),
                    // A state's write times, for its time-to-live: not a state of its own.
                    _ if name.starts_with(TTL_PREFIX) => expiring += u64::from(entries),
                    _ => *keyed_states.entry(name.to_string()).or_default() += u64::from(entries),
                }
            }
        }
        let items = self.operator_state.iter().flatten();
        Ok(OperatorSummary {
            operator: self.operator.clone(),
            max_parallelism: self.max_parallelism,
            key_groups: self.key_groups.len(),
            keyed_bytes: self.key_groups.values().map(|b| b.len() as u64).sum(),
            keyed_states,
            timer_keys,
            expiring,
            lists: self.operator_state.len(),
            list_items: items.clone().count(),
            list_bytes: items.map(|i| i.len() as u64).sum(),
        })
    }
}

/// What one operator's snapshot holds ([`OperatorSnapshot::summary`]), to
/// look at before a restore (`shardflow snapshot FILE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorSummary {
    /// The operator.
    pub operator: String,
    /// The job's key groups when the snapshot was taken.
    pub max_parallelism: u32,
    /// Key groups with keyed state.
    pub key_groups: usize,
    /// Bytes of keyed state (timers included).
    pub keyed_bytes: u64,
    /// Keyed states by name: their entries (keys with a value).
    pub keyed_states: BTreeMap<String, u64>,
    /// Keys with pending processing-time timers.
    pub timer_keys: u64,
    /// Entries of states with a time-to-live that carry their last write
    /// time (one per key and such state).
    pub expiring: u64,
    /// Operator-state lists (one per subtask that snapshotted one; a
    /// source's position is one too).
    pub lists: usize,
    /// Items in those lists.
    pub list_items: usize,
    /// Bytes of those items.
    pub list_bytes: u64,
}

/// Every stateful operator's snapshot of a job: what a job restores from. It
/// goes to bytes and back ([`JobSnapshot::to_bytes`], [`JobSnapshot::from_bytes`])
/// and to a file ([`JobSnapshot::save`], [`JobSnapshot::load`]), to restore a job
/// in another process or after an upgrade (Flink's savepoint).
#[derive(Debug, Clone, PartialEq, Eq, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct JobSnapshot {
    /// By operator name.
    pub operators: BTreeMap<String, OperatorSnapshot>,
}

/// The first bytes of a snapshot's bytes.
const SNAPSHOT_MAGIC: &[u8; 8] = b"SFSNAPSH";
/// The format of the bytes after the header; another is refused.
const SNAPSHOT_VERSION: u32 = 1;
/// Magic, version, the archive's CRC-32.
const SNAPSHOT_HEADER: usize = 16;

impl JobSnapshot {
    /// The snapshot as bytes: a header (magic, format version, checksum) and
    /// its rkyv archive.
    pub fn to_bytes(&self) -> Result<Vec<u8>, SnapshotError> {
        let (header, archive) = self.archived()?;
        let mut out = Vec::with_capacity(SNAPSHOT_HEADER + archive.len());
        out.extend_from_slice(&header);
        out.extend_from_slice(&archive);
        Ok(out)
    }

    /// The snapshot's rkyv archive and the header that goes before it.
    fn archived(&self) -> Result<([u8; SNAPSHOT_HEADER], rkyv::util::AlignedVec), SnapshotError> {
        let archive = rkyv::to_bytes::<rkyv::rancor::BoxedError>(self)
            .map_err(|e| SnapshotError::Malformed(format!("cannot archive it: {e}")))?;
        let mut header = [0; SNAPSHOT_HEADER];
        header[..8].copy_from_slice(SNAPSHOT_MAGIC);
        header[8..12].copy_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
        header[12..].copy_from_slice(&crc32fast::hash(&archive).to_le_bytes());
        Ok((header, archive))
    }

    /// A snapshot from bytes [`JobSnapshot::to_bytes`] wrote, checked: bytes
    /// that are not a snapshot of this format are an error, never a panic.
    pub fn from_bytes(bytes: &[u8]) -> Result<JobSnapshot, SnapshotError> {
        let Some((header, archive)) = bytes.split_first_chunk::<SNAPSHOT_HEADER>() else {
            return Err(SnapshotError::NotASnapshot);
        };
        let crc = Self::checked_header(header)?;
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(archive.len());
        aligned.extend_from_slice(archive);
        Self::from_archive(&aligned, crc)
    }

    /// The archive's checksum a header gives, if it is a header of this format.
    fn checked_header(header: &[u8; SNAPSHOT_HEADER]) -> Result<u32, SnapshotError> {
        if &header[..8] != SNAPSHOT_MAGIC {
            return Err(SnapshotError::NotASnapshot);
        }
        let [version, crc] = [&header[8..12], &header[12..]].map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        if version != SNAPSHOT_VERSION {
            return Err(SnapshotError::Version { found: version, supported: SNAPSHOT_VERSION });
        }
        Ok(crc)
    }

    /// The snapshot in `archive`, checked against `crc`, then by rkyv.
    fn from_archive(archive: &rkyv::util::AlignedVec<16>, crc: u32) -> Result<JobSnapshot, SnapshotError> {
        if crc32fast::hash(archive) != crc {
            return Err(SnapshotError::Malformed(format!(
                "its {} bytes do not match its checksum (truncated or damaged)",
                archive.len()
            )));
        }
        rkyv::from_bytes::<JobSnapshot, rkyv::rancor::BoxedError>(archive)
            .map_err(|e| SnapshotError::Malformed(e.to_string()))
    }

    /// Writes the snapshot to `path`, whole or not at all: into a file beside
    /// it, synced, then renamed over it (a full disk leaves any earlier file
    /// at `path` as it was), and the directory synced so that the rename
    /// outlasts a crash of the machine.
    pub fn save(&self, path: &Path) -> Result<(), SnapshotError> {
        let io = |what: &str, e: std::io::Error| SnapshotError::Io {
            what: format!("{what} {}", path.display()),
            reason: e.to_string(),
        };
        let (header, archive) = self.archived()?;
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        let partial = std::path::PathBuf::from(partial);
        let written = std::fs::File::create(&partial).and_then(|mut f| {
            f.write_all(&header)?;
            f.write_all(&archive)?;
            f.sync_all()
        });
        if let Err(e) = written {
            let _ = std::fs::remove_file(&partial);
            return Err(io("writing the snapshot", e));
        }
        std::fs::rename(&partial, path).map_err(|e| {
            let _ = std::fs::remove_file(&partial);
            io("renaming the written snapshot to", e)
        })?;
        std::fs::File::open(directory_of(path))
            .and_then(|d| d.sync_all())
            .map_err(|e| io("syncing the directory of", e))
    }

    /// Reads a snapshot [`JobSnapshot::save`] wrote.
    pub fn load(path: &Path) -> Result<JobSnapshot, SnapshotError> {
        let io = |e: std::io::Error| SnapshotError::Io {
            what: format!("reading {}", path.display()),
            reason: e.to_string(),
        };
        let mut file = std::fs::File::open(path).map_err(io)?;
        let mut header = [0; SNAPSHOT_HEADER];
        match file.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(SnapshotError::NotASnapshot),
            Err(e) => return Err(io(e)),
        }
        let crc = Self::checked_header(&header)?;
        // Read straight into aligned memory: the archive is read in place.
        let mut archive = rkyv::util::AlignedVec::<16>::new();
        archive.extend_from_reader(&mut file).map_err(io)?;
        Self::from_archive(&archive, crc)
    }

    /// Adds a subtask's snapshot of an operator.
    pub fn add(&mut self, part: OperatorSnapshot) {
        match self.operators.get_mut(&part.operator) {
            Some(existing) => existing.merge(part),
            None => {
                self.operators.insert(part.operator.clone(), part);
            }
        }
    }

    /// The key groups of `operator` that `task` restores, checked against the
    /// job's key groups; `None` if the snapshot has no such operator.
    pub(crate) fn key_groups_for(
        &self,
        operator: &str,
        task: &crate::runtime::collector::TaskInfo,
    ) -> Result<Option<Vec<&[u8]>>, OperatorError> {
        let Some(s) = self.operators.get(operator) else { return Ok(None) };
        // No keyed state (no key had any): nothing to redistribute.
        if s.max_parallelism != task.max_parallelism && !s.key_groups.is_empty() {
            return Err(OperatorError::User(format!(
                "the snapshot has {} key groups, the job {}: state cannot be redistributed across different \
                 maximum parallelisms",
                s.max_parallelism, task.max_parallelism
            )));
        }
        Ok(Some(task.key_groups().filter_map(|g| s.key_groups.get(&g).map(Vec::as_slice)).collect()))
    }

    /// The operator-state items of `operator` that subtask `subtask` of
    /// `parallelism` restores: the snapshot's items dealt round robin.
    pub(crate) fn operator_items_for(&self, operator: &str, subtask: u32, parallelism: u32) -> Vec<&[u8]> {
        let Some(s) = self.operators.get(operator) else { return Vec::new() };
        s.operator_state
            .iter()
            .flatten()
            .enumerate()
            .filter(|(i, _)| (*i as u32) % parallelism.max(1) == subtask)
            .map(|(_, b)| b.as_slice())
            .collect()
    }

    /// The broadcast-state items of `operator` that subtask `subtask`
    /// restores: one old subtask's whole list (each holds the same), the
    /// subtask's own where it had one.
    pub(crate) fn operator_copy_for(&self, operator: &str, subtask: u32) -> Vec<&[u8]> {
        let Some(s) = self.operators.get(operator) else { return Vec::new() };
        match s.operator_state.len() {
            0 => Vec::new(),
            n => s.operator_state[subtask as usize % n].iter().map(Vec::as_slice).collect(),
        }
    }
}

/// A snapshot's state `state` that does not decode as the state declared
/// under its name: the state's types changed since the snapshot.
pub(crate) fn undecodable(state: &str, e: NetError) -> OperatorError {
    OperatorError::User(format!(
        "state '{state}' of the snapshot does not decode as the state the operator declares under that name (did \
         its key or value type change?): {e}"
    ))
}

/// Writes the entries of one state of one key group.
pub(crate) struct GroupWriter<'a> {
    out: &'a mut Vec<u8>,
    count_at: usize,
    count: u32,
}

impl<'a> GroupWriter<'a> {
    /// Starts state `name` in `out`.
    pub(crate) fn new(out: &'a mut Vec<u8>, name: &str) -> Self {
        put_bytes(out, name.as_bytes());
        let count_at = out.len();
        out.extend_from_slice(&0u32.to_le_bytes());
        GroupWriter { out, count_at, count: 0 }
    }

    /// One entry.
    pub(crate) fn entry(&mut self, key: &[u8], value: &[u8]) {
        put_bytes(self.out, key);
        put_bytes(self.out, value);
        self.count += 1;
    }
}

impl Drop for GroupWriter<'_> {
    fn drop(&mut self) {
        self.out[self.count_at..self.count_at + 4].copy_from_slice(&self.count.to_le_bytes());
    }
}

/// The directory a file at `path` is in (`.` for a bare file name).
fn directory_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// Reads snapshot bytes, every length checked.
pub(crate) struct SnapshotReader<'a> {
    bytes: &'a [u8],
    at: usize,
}

fn malformed(what: &str) -> OperatorError {
    OperatorError::User(format!("malformed state snapshot: {what}"))
}

impl<'a> SnapshotReader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        SnapshotReader { bytes, at: 0 }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.at >= self.bytes.len()
    }

    fn u32(&mut self) -> Result<u32, OperatorError> {
        let b = self.bytes.get(self.at..self.at + 4).ok_or_else(|| malformed("truncated length"))?;
        self.at += 4;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn bytes(&mut self) -> Result<&'a [u8], OperatorError> {
        let len = self.u32()? as usize;
        let b = self.at.checked_add(len).and_then(|end| self.bytes.get(self.at..end));
        let b = b.ok_or_else(|| malformed("a length runs past the end"))?;
        self.at += len;
        Ok(b)
    }

    /// The next state's name and entry count.
    pub(crate) fn state(&mut self) -> Result<(&'a str, u32), OperatorError> {
        let name = std::str::from_utf8(self.bytes()?).map_err(|_| malformed("a state name is not UTF-8"))?;
        Ok((name, self.u32()?))
    }

    /// The next entry: key and value bytes.
    pub(crate) fn entry(&mut self) -> Result<(&'a [u8], &'a [u8]), OperatorError> {
        Ok((self.bytes()?, self.bytes()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_file_is_synced_in_its_own_directory() {
        assert_eq!(directory_of(Path::new("job.snapshot")), Path::new("."));
        assert_eq!(directory_of(Path::new("saved/job.snapshot")), Path::new("saved"));
        assert_eq!(directory_of(Path::new("/var/saved/job.snapshot")), Path::new("/var/saved"));
    }

    /// A snapshot with keyed state, operator lists and an empty operator.
    fn sample() -> JobSnapshot {
        let mut s = JobSnapshot::default();
        let keyed = OperatorSnapshot {
            operator: "per-word".into(),
            max_parallelism: 128,
            key_groups: BTreeMap::from([(3, vec![1, 2, 3]), (77, vec![9; 40])]),
            operator_state: Vec::new(),
        };
        s.add(keyed);
        let lists = |items: Vec<Vec<u8>>| OperatorSnapshot {
            operator: "matcher/held".into(),
            max_parallelism: 128,
            key_groups: BTreeMap::new(),
            operator_state: vec![items],
        };
        s.add(lists(vec![b"a".to_vec(), b"bc".to_vec()]));
        s.add(lists(vec![]));
        s.add(OperatorSnapshot { operator: "idle".into(), max_parallelism: 64, ..OperatorSnapshot::default() });
        s
    }

    #[test]
    fn a_job_snapshot_goes_to_bytes_and_back_whole() {
        let s = sample();
        let bytes = s.to_bytes().expect("archives");
        assert_eq!(JobSnapshot::from_bytes(&bytes), Ok(s));
        assert_eq!(JobSnapshot::from_bytes(&JobSnapshot::default().to_bytes().unwrap()), Ok(JobSnapshot::default()));
    }

    #[test]
    fn bytes_that_are_not_a_job_snapshot_are_a_typed_error_never_a_panic() {
        let good = sample().to_bytes().expect("archives");
        assert_eq!(JobSnapshot::from_bytes(&[]), Err(SnapshotError::NotASnapshot));
        assert_eq!(JobSnapshot::from_bytes(&good[..10]), Err(SnapshotError::NotASnapshot), "shorter than a header");
        let mut other = good.clone();
        other[0] = b'X';
        assert_eq!(JobSnapshot::from_bytes(&other), Err(SnapshotError::NotASnapshot));
        let mut newer = good.clone();
        newer[8..12].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(JobSnapshot::from_bytes(&newer), Err(SnapshotError::Version { found: 2, supported: 1 }));
        // Truncated, or any byte of the archive flipped: the checksum says so.
        assert!(matches!(JobSnapshot::from_bytes(&good[..good.len() - 1]), Err(SnapshotError::Malformed(_))));
        for i in SNAPSHOT_HEADER..good.len() {
            let mut damaged = good.clone();
            damaged[i] ^= 0x20;
            assert!(matches!(JobSnapshot::from_bytes(&damaged), Err(SnapshotError::Malformed(_))), "byte {i}");
        }
        // An archive that matches its checksum but is no snapshot: rkyv's check says so.
        let mut forged = good[..SNAPSHOT_HEADER].to_vec();
        let junk = vec![0xFF; 64];
        forged[12..16].copy_from_slice(&crc32fast::hash(&junk).to_le_bytes());
        forged.extend_from_slice(&junk);
        assert!(matches!(JobSnapshot::from_bytes(&forged), Err(SnapshotError::Malformed(_))));
    }

    proptest::proptest! {
        /// Any archive bytes behind a valid header and a matching checksum —
        /// what a forged or foreign file holds — read as a snapshot or fail
        /// typed, never panic.
        #[test]
        fn any_archive_behind_a_valid_header_reads_or_fails_typed(
            junk in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
        ) {
            let mut bytes = SNAPSHOT_MAGIC.to_vec();
            bytes.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
            bytes.extend_from_slice(&crc32fast::hash(&junk).to_le_bytes());
            bytes.extend_from_slice(&junk);
            let _ = JobSnapshot::from_bytes(&bytes);
        }

        /// Any snapshot goes to bytes and back as it was.
        #[test]
        fn any_snapshot_round_trips(
            groups in proptest::collection::btree_map(0u32..128, proptest::collection::vec(proptest::prelude::any::<u8>(), 0..16), 0..8),
            items in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..8), 0..4),
        ) {
            let mut s = JobSnapshot::default();
            s.add(OperatorSnapshot { operator: "keyed".into(), max_parallelism: 128, key_groups: groups, operator_state: Vec::new() });
            s.add(OperatorSnapshot { operator: "op/list".into(), max_parallelism: 128, key_groups: BTreeMap::new(), operator_state: vec![items] });
            proptest::prop_assert_eq!(JobSnapshot::from_bytes(&s.to_bytes().unwrap()), Ok(s));
        }
    }

    #[test]
    fn snapshot_bytes_round_trip_and_bad_bytes_are_typed() {
        let mut out = Vec::new();
        {
            let mut w = GroupWriter::new(&mut out, "count");
            w.entry(b"k1", b"v1");
            w.entry(b"key-two", b"");
        }
        let mut r = SnapshotReader::new(&out);
        assert_eq!(r.state().unwrap(), ("count", 2));
        assert_eq!(r.entry().unwrap(), (&b"k1"[..], &b"v1"[..]));
        assert_eq!(r.entry().unwrap(), (&b"key-two"[..], &b""[..]));
        assert!(r.is_empty());
        let mut cut = SnapshotReader::new(&out[..out.len() - 3]);
        cut.state().unwrap();
        cut.entry().unwrap();
        assert!(cut.entry().is_err(), "a cut snapshot is a typed error");
    }

    #[test]
    fn a_summary_counts_entries_by_state_timers_apart_and_refuses_bad_bytes() {
        let group = |states: &[(&str, usize)]| {
            let mut out = Vec::new();
            for (name, n) in states {
                let mut w = GroupWriter::new(&mut out, name);
                (0..*n).for_each(|i| w.entry(format!("k{i}").as_bytes(), b"v"));
            }
            out
        };
        let op = OperatorSnapshot {
            operator: "per-user".into(),
            max_parallelism: 128,
            key_groups: [
                (3, group(&[("sum", 2), (TIMERS, 1), ("\0ttl:sum", 2)])),
                (70, group(&[("sum", 1), ("seen", 4), ("\0ttl:sum", 1)])),
            ]
            .into(),
            operator_state: vec![vec![b"ab".to_vec()], vec![], vec![b"c".to_vec(), b"".to_vec()]],
        };
        let s = op.summary().unwrap();
        assert_eq!(s.keyed_states, [("seen".to_string(), 4), ("sum".to_string(), 3)].into());
        assert_eq!((s.timer_keys, s.expiring, s.key_groups, s.max_parallelism), (1, 3, 2, 128));
        assert_eq!(s.keyed_bytes, op.key_groups.values().map(|b| b.len() as u64).sum::<u64>());
        assert_eq!((s.lists, s.list_items, s.list_bytes), (3, 3, 3));

        let mut cut = op;
        cut.key_groups.get_mut(&70).unwrap().pop();
        match cut.summary() {
            Err(SnapshotError::Malformed(why)) => assert!(why.contains("key group 70 of 'per-user'"), "{why}"),
            other => panic!("a cut key group must be refused, got {other:?}"),
        }
    }
}
