//! Stateless record-by-record operators: configured closures in the registry's
//! generic map, filter and flat-map operators.

use strength_reduce::StrengthReducedU64;

use crate::error::EngineError;
use crate::operator::{FilterFn, FlatMapFn, MapFn};
use crate::record::{OpConfig, Record};
use crate::registry::OperatorRegistry;

/// Most copies `flat_map.repeat` emits per record: a source batch of 1 024
/// records then yields at most 24 MiB of output.
pub(crate) const MAX_REPEAT: u64 = 1024;

fn positive(c: &OpConfig, op: &str, key: &str) -> Result<u64, EngineError> {
    let v = c.u64(op, key)?;
    if v == 0 {
        return Err(EngineError::InvalidOperatorConfig {
            operator: op.into(),
            reason: format!("{key} must be at least 1"),
        });
    }
    Ok(v)
}

pub(super) fn register(r: &mut OperatorRegistry) {
    r.register_operator("map.add", |c, _| {
        let add = c.u64("map.add", "add")?;
        Ok(Box::new(MapFn(move |r: Record| Record { value: r.value.wrapping_add(add), ..r })))
    });
    r.register_operator("filter.value_mod", |c, _| {
        let m = StrengthReducedU64::new(positive(c, "filter.value_mod", "modulus")?);
        let drop = c.u64_or("filter.value_mod", "drop", 0)?;
        Ok(Box::new(FilterFn(move |r: &Record| r.value % m != drop)))
    });
    r.register_operator("flat_map.repeat", |c, _| {
        let times = c.u64("flat_map.repeat", "times")?;
        if times > MAX_REPEAT {
            return Err(EngineError::InvalidOperatorConfig {
                operator: "flat_map.repeat".into(),
                reason: format!("times={times}: at most {MAX_REPEAT} (a batch's output is held at once)"),
            });
        }
        Ok(Box::new(FlatMapFn(move |r: &Record, out: &mut Vec<Record>| {
            out.extend((0..times).map(|i| Record { value: r.value.wrapping_add(i), ..*r }))
        })))
    });
    r.register_operator("key_by.value_mod", |c, _| {
        let m = StrengthReducedU64::new(positive(c, "key_by.value_mod", "modulus")?);
        Ok(Box::new(MapFn(move |r: Record| Record { key: r.value % m, ..r })))
    });
}
