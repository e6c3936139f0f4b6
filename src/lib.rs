//! callfs: a clustered storage node serving local disks (and later S3) as one filesystem over HTTP.

pub mod auth;
pub mod cli;
pub mod config;
pub mod correlation;
pub mod error;
pub mod files;
pub mod fsck;
pub mod http;
pub mod links;
pub mod logging;
pub mod node;
pub mod path;
pub mod rate_limit;
pub mod server;
pub mod tls;
pub mod uploads;
