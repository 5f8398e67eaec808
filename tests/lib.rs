//! The workspace integration tests live in `integration/` as one test binary, one
//! module per `<area>_<behaviour>`.
