//! Handler plugins: finding and loading cdylibs ([`load`]), the merged view of every plugin
//! directory ([`registry`]), and the context the host hands a handler ([`context`]).

pub mod context;
pub mod load;
pub mod registry;
pub mod watch;

pub use load::{LoadError, LoadedPlugin};
pub use registry::PluginSet;
