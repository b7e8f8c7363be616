// The crate documentation is the plugin guide, written once: plugin-api/GUIDE.md is also the
// book's "Writing plugins" chapter (docs/src/guide/writing-plugins.md includes it).
#![doc = include_str!("../GUIDE.md")]
#![warn(missing_docs)]

mod config;
mod context;
mod egress;
mod handler;
mod ingress;
mod message;
mod outcome;
mod reactor;

/// The types that cross the host/plugin boundary. Public because the export macros and the
/// host use them; a plugin never needs them (use [`Handler`], [`Message`] and [`Outcome`]).
#[doc(hidden)]
pub mod ffi;
pub mod payload;
pub mod testing;

#[doc(hidden)]
pub mod export;

pub use config::{Config, ConfigError};
pub use context::{Context, PublishError};
pub use egress::{Egress, EgressError, Event};
pub use handler::{AsyncHandler, BatchHandler, BatchResult, Handler, HandlerError, HandlerResult};
pub use ingress::{Incoming, Ingress, IngressOutcome, IngressSink};
pub use message::{Attribute, Message};
pub use outcome::Outcome;
pub use payload::{Encoding, MegaEvent, MegaObject, MegaPayload, PayloadError, PayloadKind};

/// The plugin-api version a plugin is built against; the host refuses incompatible ones.
pub const ABI_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Export this crate's handlers, egresses and ingresses as an iniesta plugin.
///
/// ```ignore
/// export_plugin! {
///     name: "my-plugin",                 // what bindings name in `plugin = "..."`
///     handlers: {
///         "first" => First::new,         // fn(Config) -> Result<impl Handler, impl Display>
///         "second" => |_config| Ok::<_, String>(Second),
///     },
///     async_handlers: {                  // optional: fn(Config) -> Result<impl AsyncHandler, _>
///         "notify" => Notify::new,
///     },
///     batch_handlers: {                  // optional: fn(Config) -> Result<impl BatchHandler, _>
///         "ledger" => Ledger::new,
///     },
///     egress: {                          // optional: `[[egress]] plugin = "my-plugin"`
///         "my-plugin" => MyEgress::new,  // fn(Config) -> Result<impl Egress, impl Display>
///     },
///     ingress: {                         // optional: `[[ingress]] plugin = "my-plugin"`
///         "my-plugin" => MyIngress::start, // fn(Config, IngressSink) -> Result<impl Ingress, impl Display>
///     },
/// }
/// ```
///
/// Use it once per crate; every section but `name` is optional, and the sections come in this
/// order. Handler names are one namespace across `handlers`, `async_handlers` and
/// `batch_handlers`: a binding names one with `handler = "..."` whatever its shape. The plugin's version is the
/// crate's `CARGO_PKG_VERSION`. The macro also records the panic strategy the plugin is
/// compiled with: the host refuses to run a `panic = "abort"` build inside its own process
/// (its first panic would end the host); such a plugin runs only isolated
/// (`[plugins.isolate]`).
#[macro_export]
macro_rules! export_plugin {
    (
        name: $name:literal
        $(, handlers: { $( $handler:literal => $ctor:expr ),* $(,)? } )?
        $(, async_handlers: { $( $ahandler:literal => $actor:expr ),* $(,)? } )?
        $(, batch_handlers: { $( $bhandler:literal => $bctor:expr ),* $(,)? } )?
        $(, egress: { $( $egress:literal => $ector:expr ),* $(,)? } )?
        $(, ingress: { $( $ingress:literal => $ictor:expr ),* $(,)? } )?
        $(,)?
    ) => {
        #[doc(hidden)]
        #[allow(non_upper_case_globals)]
        #[unsafe(export_name = "_1as_0lib_1header_0root_bmodule_bloader")]
        pub static __INIESTA_LIB_HEADER: $crate::export::LibHeader =
            $crate::export::lib_header(__iniesta_erased_root_module);

        #[doc(hidden)]
        extern "C" fn __iniesta_erased_root_module() -> $crate::export::RootModuleResult {
            $crate::export::__call_root_module_loader(__iniesta_root_module)
        }

        #[doc(hidden)]
        const __INIESTA_HANDLER_NAMES: &[$crate::export::RStr<'static>] =
            &[
                $($( $crate::export::RStr::from_str($handler), )*)?
                $($( $crate::export::RStr::from_str($ahandler), )*)?
                $($( $crate::export::RStr::from_str($bhandler), )*)?
            ];

        #[doc(hidden)]
        const __INIESTA_EGRESS_NAMES: &[$crate::export::RStr<'static>] =
            &[$($( $crate::export::RStr::from_str($egress) ),*)?];

        #[doc(hidden)]
        const __INIESTA_INGRESS_NAMES: &[$crate::export::RStr<'static>] =
            &[$($( $crate::export::RStr::from_str($ingress) ),*)?];

        #[doc(hidden)]
        fn __iniesta_root_module() -> $crate::export::PluginModRef {
            use $crate::export::PrefixTypeTrait as _;
            $crate::export::PluginMod {
                name: $crate::export::RStr::from_str($name),
                version: $crate::export::RStr::from_str(env!("CARGO_PKG_VERSION")),
                abi_version: $crate::export::RStr::from_str($crate::ABI_VERSION),
                handlers: $crate::export::RSlice::from_slice(__INIESTA_HANDLER_NAMES),
                new_handler: __iniesta_new_handler,
                egresses: $crate::export::RSlice::from_slice(__INIESTA_EGRESS_NAMES),
                new_egress: __iniesta_new_egress,
                ingresses: $crate::export::RSlice::from_slice(__INIESTA_INGRESS_NAMES),
                start_ingress: __iniesta_start_ingress,
                // Expanded in the plugin's crate: the plugin's own `panic` profile setting.
                panic: $crate::export::panic_strategy(cfg!(panic = "unwind")),
            }
            .leak_into_prefix()
        }

        #[doc(hidden)]
        extern "C" fn __iniesta_new_handler(
            name: $crate::export::RStr<'_>,
            config: $crate::export::RStr<'_>,
        ) -> $crate::export::RResult<$crate::ffi::HandlerBox, $crate::export::RString> {
            $crate::export::construct(config, move |config| {
                let _ = &config;
                match name.as_str() {
                    $($( $handler => $crate::export::build(($ctor)(config)), )*)?
                    $($( $ahandler => $crate::export::build_async(move || ($actor)(config)), )*)?
                    $($( $bhandler => $crate::export::build_batch(($bctor)(config)), )*)?
                    other => Err($crate::export::unknown_handler(
                        $name,
                        other,
                        &[$($($handler,)*)? $($($ahandler,)*)? $($($bhandler,)*)?],
                    )),
                }
            })
        }

        #[doc(hidden)]
        extern "C" fn __iniesta_new_egress(
            name: $crate::export::RStr<'_>,
            config: $crate::export::RStr<'_>,
        ) -> $crate::export::RResult<$crate::ffi::EgressBox, $crate::export::RString> {
            $crate::export::construct_egress(config, move |config| {
                let _ = &config;
                match name.as_str() {
                    $($( $egress => $crate::export::build_egress(($ector)(config)), )*)?
                    other => Err($crate::export::unknown_kind($name, "egress", other, &[$($($egress),*)?])),
                }
            })
        }

        #[doc(hidden)]
        extern "C" fn __iniesta_start_ingress(
            name: $crate::export::RStr<'_>,
            config: $crate::export::RStr<'_>,
            sink: $crate::ffi::IngressSinkBox,
        ) -> $crate::export::RResult<$crate::ffi::IngressBox, $crate::export::RString> {
            $crate::export::start_ingress(config, sink, move |config, sink| {
                let _ = (&config, &sink);
                match name.as_str() {
                    $($( $ingress => $crate::export::build_ingress(($ictor)(config, sink)), )*)?
                    other => Err($crate::export::unknown_kind($name, "ingress", other, &[$($($ingress),*)?])),
                }
            })
        }
    };
}
