//! Word count over `String` lines: split, key by the word itself, count. Words
//! are read in place from the network buffers; a word's `String` is made only
//! the first time the word is seen.
//!
//! `cargo run --release -p shardflow-engine --example wordcount`

use shardflow_engine::{Dataflow, Emitter, Engine, EngineError};

fn main() -> Result<(), EngineError> {
    let engine = Engine::builder().build()?;
    let text = ["the quick brown fox jumps over the lazy dog", "the dog sleeps and the fox runs", "a quick brown dog"];
    let df = Dataflow::new("wordcount").parallelism(engine.shards().len() as u32);
    let counts = df
        .from_iter("lines", text.map(String::from))
        .flat_map(|line: &str, out: &mut Emitter<'_, String>| {
            for word in line.split_whitespace() {
                out.emit_ref(word);
            }
        })
        .key_by_ref::<String, _>(|word: &str| word)
        .count_final()
        .collect();
    engine.run(df.build()?)?;
    let mut counts = counts.take();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    for (word, n) in counts.iter().take(5) {
        println!("{n:>3} {word}");
    }
    Ok(())
}
