//! Stateless record-by-record operators.

use strength_reduce::StrengthReducedU64;

use crate::error::{EngineError, OperatorError};
use crate::operator::Operator;
use crate::record::{OpConfig, Record};
use crate::registry::OperatorRegistry;

struct MapAdd(u64);
impl Operator for MapAdd {
    fn process_batch(&mut self, input: &[Record], out: &mut Vec<Record>) -> Result<(), OperatorError> {
        let add = self.0;
        out.extend(input.iter().map(|r| Record { value: r.value.wrapping_add(add), ..*r }));
        Ok(())
    }
}

struct FilterValueMod {
    modulus: StrengthReducedU64,
    drop: u64,
}
impl Operator for FilterValueMod {
    fn process_batch(&mut self, input: &[Record], out: &mut Vec<Record>) -> Result<(), OperatorError> {
        let (m, d) = (self.modulus, self.drop);
        out.extend(input.iter().filter(|r| r.value % m != d));
        Ok(())
    }
}

struct FlatMapRepeat(u64);
impl Operator for FlatMapRepeat {
    fn process_batch(&mut self, input: &[Record], out: &mut Vec<Record>) -> Result<(), OperatorError> {
        for r in input {
            out.extend((0..self.0).map(|i| Record { value: r.value.wrapping_add(i), ..*r }));
        }
        Ok(())
    }
}

struct KeyByValueMod(StrengthReducedU64);
impl Operator for KeyByValueMod {
    fn process_batch(&mut self, input: &[Record], out: &mut Vec<Record>) -> Result<(), OperatorError> {
        let m = self.0;
        out.extend(input.iter().map(|r| Record { key: r.value % m, ..*r }));
        Ok(())
    }
}

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
    r.register_operator("map.add", |c, _| Ok(Box::new(MapAdd(c.u64("map.add", "add")?))));
    r.register_operator("filter.value_mod", |c, _| {
        Ok(Box::new(FilterValueMod {
            modulus: StrengthReducedU64::new(positive(c, "filter.value_mod", "modulus")?),
            drop: c.u64_or("filter.value_mod", "drop", 0)?,
        }))
    });
    r.register_operator("flat_map.repeat", |c, _| Ok(Box::new(FlatMapRepeat(c.u64("flat_map.repeat", "times")?))));
    r.register_operator("key_by.value_mod", |c, _| {
        Ok(Box::new(KeyByValueMod(StrengthReducedU64::new(positive(c, "key_by.value_mod", "modulus")?))))
    });
}
