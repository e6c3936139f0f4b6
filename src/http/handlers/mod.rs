pub mod directories;
pub mod files;
pub mod system;
