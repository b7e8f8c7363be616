//! Handler plugins: finding and loading cdylibs ([`load`]), the merged view of every plugin
//! directory ([`registry`]), the context the host hands a handler ([`context`]), and the one
//! place a handler is called across the FFI boundary ([`call`]), and why a plugin crate built
//! nothing loadable ([`crate_type`]).

pub mod call;
pub mod context;
pub mod crate_type;
pub mod load;
pub mod registry;
pub mod watch;

pub use call::{CallMessage, Outcome};
pub use load::{ConstructError, LoadError, LoadedPlugin};
pub use registry::PluginSet;
