//! A user's own cluster binary, as the README describes one: it registers its
//! jobs (over its own record type, with a side output) in a catalog and hands that to the library's
//! CLI entry point, so this one binary is the coordinator, the worker and the
//! client of a cluster that runs them. The `cluster_own_binary` tests drive it.

#![forbid(unsafe_code)]

use shardflow_engine::{Dataflow, Emitter, JobCatalog, OutputTag};

/// The user's record: strings, so it travels through rkyv.
#[derive(Debug, Clone, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct Visit {
    user: String,
    page: String,
    millis: u64,
}
shardflow_engine::rkyv_data!(Visit);

fn main() -> std::process::ExitCode {
    let mut jobs = JobCatalog::new();
    jobs.register(
        "visit-time",
        "visits of `users` users, each user's total time summed by key, visits of /page/0 counted aside; \
         visits=N, users=N, pin=CORE (a core hint: the visits' vertex on that core)",
        |p| {
            p.only(&["visits", "users", "pin"])?;
            let (visits, users) = (p.u64_or("visits", 10_000)?, p.u64_or("users", 100)?.max(1));
            let df = Dataflow::new("visit-time").parallelism(p.parallelism());
            let home = OutputTag::<Visit>::new("home");
            let tag = home.clone();
            let visits = df
                .generate("visits", visits, move |r| Visit {
                    user: format!("user-{}", r % users),
                    page: format!("/page/{}", r % 7),
                    millis: r,
                })
                .flat_map(move |v: &Visit, out: &mut Emitter<'_, Visit>| match v.page.as_str() {
                    "/page/0" => out.emit_side_ref(&tag, v),
                    _ => out.emit_ref(v),
                })
                .name("split");
            let visits = match p.has("pin") {
                true => visits.cores(&[p.u64_or("pin", 0)? as usize]),
                false => visits,
            };
            visits.side_output(&home).count_and_sum(|v: &Visit| v.millis).name("home");
            visits
                .key_by_ref::<String, _>(|v: &Visit| &v.user)
                .reduce_final(|acc: &Visit, v: &Visit| Visit { millis: acc.millis + v.millis, ..acc.clone() })
                .count_and_sum(|v: &Visit| v.millis)
                .name("per-user");
            df.build()
        },
    );
    shardflow_tools::main_with(jobs)
}
