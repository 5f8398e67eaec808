//! Sessions by inactivity: each user's clicks are held in keyed list state
//! until the user has been idle for a gap of processing time (a timer per
//! user, moved on by each click), then handed on as one session. Click lines
//! are parsed by a closure that may fail: a malformed one fails the job with
//! its reason instead of a panic.
//!
//! `cargo run --release -p shardflow-engine --example sessions`

use shardflow_engine::{
    Dataflow, Emitter, Engine, EngineError, KeyedContext, KeyedProcessFunction, ListState, OperatorError, OrFail,
    StateDeclarations, ValueState,
};

/// How long a user may be idle before their session ends, in microseconds.
const GAP_US: u64 = 2_000;

/// A user's clicks until a gap of `GAP_US` without one: the session's clicks
/// are kept in `clicks`, and the time its timer is set for in `timer` (to
/// move it on at the next click).
#[derive(Clone, Default)]
struct Sessions {
    clicks: ListState<String>,
    timer: ValueState<u64>,
}

impl Sessions {
    /// Emits the user's session, `(user, pages)`, and forgets it.
    fn end(
        &self,
        ctx: &mut KeyedContext<'_, String>,
        out: &mut Emitter<'_, (String, Vec<String>)>,
    ) -> Result<(), OperatorError> {
        let pages = ctx.list_take(&self.clicks)?;
        ctx.clear_value(&self.timer)?;
        if !pages.is_empty() {
            out.emit((ctx.key().to_string(), pages));
        }
        Ok(())
    }
}

impl KeyedProcessFunction<String, (String, String), (String, Vec<String>)> for Sessions {
    fn open(&mut self, states: &mut StateDeclarations<'_, String>) -> Result<(), OperatorError> {
        self.clicks = states.list_state("clicks")?;
        self.timer = states.value_state("timer")?;
        Ok(())
    }

    fn process(
        &mut self,
        (_, page): &(String, String),
        ctx: &mut KeyedContext<'_, String>,
        _: &mut Emitter<'_, (String, Vec<String>)>,
    ) -> Result<(), OperatorError> {
        ctx.list_push(&self.clicks, page.clone())?;
        if let Some(at) = ctx.value(&self.timer)?.copied() {
            ctx.delete_timer(at);
        }
        let at = ctx.processing_time() + GAP_US;
        ctx.register_timer(at)?;
        ctx.set_value(&self.timer, at)
    }

    fn on_timer(
        &mut self,
        _: u64,
        ctx: &mut KeyedContext<'_, String>,
        out: &mut Emitter<'_, (String, Vec<String>)>,
    ) -> Result<(), OperatorError> {
        self.end(ctx, out)
    }

    fn on_end_of_input(
        &mut self,
        ctx: &mut KeyedContext<'_, String>,
        out: &mut Emitter<'_, (String, Vec<String>)>,
    ) -> Result<(), OperatorError> {
        self.end(ctx, out)
    }
}

fn main() -> Result<(), EngineError> {
    let engine = Engine::builder().build()?;
    let clicks: u64 = 200_000;
    let df = Dataflow::new("sessions").parallelism(engine.shards().len() as u32);
    let sessions = df
        .generate("click-log", clicks, |i| format!("user-{} /page/{}", i % 1_000, i % 37))
        .try_map(|line: &str| {
            let (user, page) =
                line.split_once(' ').or_fail_with(|| format!("a click line without a page: {line:?}"))?;
            Ok((user.to_string(), page.to_string()))
        })
        .name("parse")
        .key_by_ref::<String, _>(|(user, _): &(String, String)| user.as_str())
        .process(Sessions::default())
        .name("sessions")
        .collect();
    let result = engine.run(df.build()?)?;
    let sessions = sessions.take();
    let held: usize = sessions.iter().map(|(_, pages)| pages.len()).sum();
    assert_eq!(held as u64, clicks, "every click is in exactly one session");
    let longest = sessions.iter().max_by_key(|(_, pages)| pages.len()).expect("a session");
    println!(
        "{clicks} clicks of 1000 users in {} sessions ({:.1} ms, a gap of {GAP_US} µs ends one); longest: {} with {} clicks",
        sessions.len(),
        result.duration().as_secs_f64() * 1e3,
        longest.0,
        longest.1.len()
    );
    Ok(())
}
