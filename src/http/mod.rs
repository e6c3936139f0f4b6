//! The HTTP layer: one route table, thin handlers, the request pipeline.

pub mod conditional;
pub mod endpoint;
pub mod extract;
pub mod forward;
pub mod handlers;
pub mod listing;
pub mod middleware;
pub mod routes;
pub mod stall;
