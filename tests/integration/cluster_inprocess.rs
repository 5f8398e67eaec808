//! A coordinator and two workers in one process ([`MiniCluster`]): the cluster's
//! state machines, frames and worker wiring over in-process connections.

use std::collections::BTreeMap;
use std::time::Duration;

use shardflow_engine::cluster::MiniCluster;
use shardflow_engine::jobs::{catalog, named_job};
use shardflow_engine::protocol::{ErrorCode, WaitCondition};
use shardflow_engine::{CoordinatorConfig, Cores, Dataflow, EngineError, ExecutionState, JobStatus};

use crate::common::{small_engine, TIMEOUT};

fn worker(core: usize) -> shardflow_engine::EngineBuilder {
    small_engine().cores(Cores::List(vec![core])).slots_per_shard(2)
}

fn cores() -> (usize, usize) {
    let online = shardflow_engine::online_cores();
    (online[0], *online.last().unwrap_or(&online[0]))
}

#[test]
fn a_forward_job_runs_on_both_workers_and_finishes_with_the_right_sums() {
    let (c0, c1) = cores();
    let cluster = MiniCluster::start(CoordinatorConfig::default(), &catalog(), vec![worker(c0), worker(c1)]).unwrap();
    let mut client = cluster.client();
    assert_eq!(client.wait_for_workers(2, TIMEOUT).unwrap().workers, 2);
    let n = 200_000u64;
    let params = BTreeMap::from([("records".to_string(), n.to_string())]);
    let job = named_job("forward-count", &params, 2).unwrap();
    let id = client.submit(job.graph().clone(), "", "").unwrap();
    let done = client.wait(id, WaitCondition::Terminal, TIMEOUT).unwrap();
    assert_eq!(done.status, JobStatus::Finished, "{done:?}");
    let workers: std::collections::BTreeSet<_> =
        done.subtasks.iter().filter_map(|s| s.slot.map(|x| x.worker)).collect();
    assert_eq!(workers.len(), 2, "the job uses both workers: {done:?}");
    assert!(done.subtasks.iter().all(|s| s.state == ExecutionState::Finished));
    let (records, sum) = done
        .subtasks
        .iter()
        .filter_map(|s| s.result.as_ref())
        .flat_map(|r| r.sinks.iter())
        .fold((0u64, 0u64), |(r, v), s| (r + s.records, v.wrapping_add(s.value_sum)));
    assert_eq!(records, n);
    assert_eq!(sum, n * (n + 1) / 2, "values 1..=n after map +1");
    let overview = client.overview().unwrap();
    assert_eq!((overview.workers, overview.total_slots, overview.free_slots), (2, 4, 4));
    cluster.shutdown();
}

#[test]
fn unknown_jobs_and_invalid_graphs_are_typed_errors() {
    let (c0, _) = cores();
    // Submissions that do not fit are refused at once, not left to wait for slots.
    let config = CoordinatorConfig { submit_slot_wait: Duration::ZERO, ..CoordinatorConfig::default() };
    let cluster = MiniCluster::start(config, &catalog(), vec![worker(c0)]).unwrap();
    assert_eq!(cluster.client().wait_for_workers(1, TIMEOUT).unwrap().workers, 1);
    let err = cluster.client().cancel(shardflow_engine::JobId(999)).unwrap_err();
    assert!(matches!(err, EngineError::Remote { code: ErrorCode::UnknownJob, .. }), "{err}");
    let params = BTreeMap::from([("records".to_string(), "1000".to_string())]);
    let job = named_job("keyed-sum", &params, 3).unwrap();
    let err = cluster.client().submit(job.graph().clone(), "", "").unwrap_err();
    assert!(matches!(err, EngineError::Remote { code: ErrorCode::NotEnoughSlots, .. }), "{err}");
    cluster.shutdown();
}

#[test]
fn a_coordinator_that_never_answers_is_a_clear_error_not_a_hang() {
    use shardflow_engine::cluster::ClusterClient;
    // Accepts connections (the kernel's backlog) and never reads or answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let mut client =
        ClusterClient::connect(addr, TIMEOUT).unwrap().with_answer_timeout(std::time::Duration::from_millis(200));
    match client.list() {
        Err(EngineError::Io { what, reason }) => {
            assert!(what.contains("ListJobs"), "{what}");
            assert!(reason.contains("did not answer within 200 ms"), "{reason}");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    drop(silent);
}

#[test]
fn a_graph_whose_edge_format_differs_from_the_cluster_build_is_refused() {
    let (c0, _) = cores();
    let cluster = MiniCluster::start(CoordinatorConfig::default(), &catalog(), vec![worker(c0)]).unwrap();
    assert_eq!(cluster.client().wait_for_workers(1, TIMEOUT).unwrap().workers, 1);
    let params = BTreeMap::from([("records".to_string(), "1000".to_string())]);
    let mut graph = named_job("exchange", &params, 1).unwrap().graph().clone();
    // Another build of the job that disagrees about the record type.
    graph.edges[0].format.type_name = "shardflow_engine::jobs::OldKeyValue".into();
    let err = cluster.client().submit(graph, "", "").unwrap_err();
    match err {
        EngineError::Remote { code: ErrorCode::InvalidJob, message } => {
            assert!(message.contains("OldKeyValue") && message.contains("KeyValue"), "{message}");
        }
        other => panic!("expected a typed refusal, got {other}"),
    }
    assert!(cluster.client().list().unwrap().is_empty(), "nothing runs");
    cluster.shutdown();
}

#[test]
fn a_job_submitted_while_another_holds_the_slots_waits_created_and_runs_once_they_free() {
    let (c0, _) = cores();
    let mut jobs = catalog();
    jobs.register("endless", "numbers counted, without end", |p| {
        let df = Dataflow::new("endless").parallelism(p.parallelism());
        df.generate("numbers", u64::MAX, |r| r).count();
        df.build()
    });
    // One worker, two slots; the coordinator's default wait for slots.
    let cluster = MiniCluster::start(CoordinatorConfig::default(), &jobs, vec![worker(c0)]).unwrap();
    let mut client = cluster.client();
    assert_eq!(client.wait_for_workers(1, TIMEOUT).unwrap().workers, 1);
    let endless = jobs.build("endless", &BTreeMap::new(), 2).unwrap();
    let holder = client.submit(endless.graph().clone(), "", "").unwrap();
    assert_eq!(client.wait(holder, WaitCondition::AllRunning, TIMEOUT).unwrap().status, JobStatus::Running);

    let params = BTreeMap::from([("records".to_string(), "10000".to_string())]);
    let waiting = client.submit(named_job("forward-count", &params, 2).unwrap().graph().clone(), "", "").unwrap();
    assert_eq!(client.job(waiting).unwrap().status, JobStatus::Created, "accepted, waiting for slots");
    client.cancel(holder).unwrap();
    let done = client.wait(waiting, WaitCondition::Terminal, TIMEOUT).unwrap();
    assert_eq!(done.status, JobStatus::Finished, "it ran in the slots the cancelled job freed: {done:?}");
    cluster.shutdown();
}
