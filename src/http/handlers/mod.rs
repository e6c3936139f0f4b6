pub mod directories;
pub mod files;
pub mod internal;
pub mod links;
pub mod system;
