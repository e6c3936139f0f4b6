//! Storage workers. Each backend is an actor with the same message vocabulary; the HTTP layer
//! resolves a request to one of them (or to the peer proxy) in a single routing function.

pub mod localfs;
