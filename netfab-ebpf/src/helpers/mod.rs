//! Helpers the programs share, one concern per module. They import each
//! other only downwards (maps <- counters <- packet <- the rest) and never
//! the programs.
pub mod counters;
pub mod direct;
pub mod encap;
pub mod endpoint;
pub mod guard;
pub mod maps;
pub mod native_decap;
pub mod native_encap;
pub mod overlay;
pub mod packet;
pub mod rate;
