//! shardflow's integration tests: the embedded engine end to end. One binary, one
//! module per area and behaviour. Every wait has a generous timeout that fails the
//! test with a message; nothing sleeps to wait for something.

mod cluster_inprocess;
mod cluster_own_binary;
mod common;
mod embedded_backpressure;
mod embedded_bad_input;
mod embedded_broadcast;
mod embedded_cancel;
mod embedded_failure;
mod embedded_hosted;
mod embedded_keyed_ingress;
mod embedded_lifecycle;
mod embedded_oracle;
mod embedded_placement;
mod embedded_random_graphs;
mod embedded_records;
mod embedded_routing;
mod embedded_select;
mod embedded_side_outputs;
mod embedded_spin;
mod embedded_state;
mod embedded_stop;
mod embedded_task_times;
mod embedded_time;
mod embedded_timers;
mod embedded_ttl;
