//! Linking one module's imports to another module's exports.
//!
//! A library module provides the interfaces it exports. When a module
//! imports an interface a library provides, every function of that import
//! is defined in the importer's linker as a forwarder: it calls the
//! provider's export in the same store, on the provider's instance created
//! for that store just before the importer's. Values cross as
//! `wasmtime::component::Val`s, so any interface works whose types are
//! plain data (resources cannot cross: a handle means nothing in another
//! instance's table).

use wasmtime::Engine;
use wasmtime::component::types::{ComponentFunc, ComponentInstance, ComponentItem};
use wasmtime::component::{Component, Linker};

use crate::world::Ctx;

/// The interface instances `component` imports, by name.
pub(crate) fn imported_instances(
    engine: &Engine,
    component: &Component,
) -> Vec<(String, ComponentInstance)> {
    component
        .component_type()
        .imports(engine)
        .filter_map(|(name, item)| match item.ty {
            ComponentItem::ComponentInstance(ty) => Some((name.to_owned(), ty)),
            _ => None,
        })
        .collect()
}

/// The interface instances `component` exports, by name.
pub(crate) fn exported_instances(engine: &Engine, component: &Component) -> Vec<String> {
    component
        .component_type()
        .exports(engine)
        .filter_map(|(name, item)| match item.ty {
            ComponentItem::ComponentInstance(_) => Some(name.to_owned()),
            _ => None,
        })
        .collect()
}

fn same_signature(a: &ComponentFunc, b: &ComponentFunc) -> bool {
    a.params().len() == b.params().len()
        && a.params().zip(b.params()).all(|((_, x), (_, y))| x == y)
        && a.results().len() == b.results().len()
        && a.results().zip(b.results()).all(|(x, y)| x == y)
}

/// Defines every function of the imported interface `iface` (typed
/// `import`) in `linker` as a forwarder to the same function exported by
/// `provider`, whose instance in the calling store is keyed by
/// `provider_id`. Checks that every imported function exists in the
/// provider with the same signature.
pub(crate) fn forward(
    linker: &mut Linker<Ctx>,
    engine: &Engine,
    iface: &str,
    import: &ComponentInstance,
    provider: &Component,
    provider_id: u64,
) -> Result<(), String> {
    let Some((ComponentItem::ComponentInstance(_), iface_index)) = provider.get_export(None, iface)
    else {
        return Err(format!("the provider does not export interface `{iface}`"));
    };
    let mut instance = linker
        .instance(iface)
        .map_err(|e| format!("interface `{iface}`: {}", crate::error::describe(&e)))?;
    for (name, item) in import.exports(engine) {
        match item.ty {
            ComponentItem::ComponentFunc(wanted) => {
                let Some((ComponentItem::ComponentFunc(given), func_index)) =
                    provider.get_export(Some(&iface_index), name)
                else {
                    return Err(format!(
                        "`{iface}` of the provider has no function `{name}`"
                    ));
                };
                if !same_signature(&wanted, &given) {
                    return Err(format!(
                        "`{iface}.{name}` has another signature in the provider ({given:?}) than in the import ({wanted:?})"
                    ));
                }
                let fname = name.to_owned();
                instance
                    .func_new(name, move |mut store, _ty, params, results| {
                        let Some(&dep) = store.data().deps.get(&provider_id) else {
                            wasmtime::bail!(
                                "the provider of `{fname}` is not instantiated in this store"
                            );
                        };
                        let Some(func) = dep.get_func(&mut store, func_index) else {
                            wasmtime::bail!("the provider's instance lacks its export");
                        };
                        func.call(&mut store, params, results)
                    })
                    .map_err(|e| format!("`{iface}.{name}`: {}", crate::error::describe(&e)))?;
            }
            ComponentItem::Type(_) => {}
            ComponentItem::Resource(_) => {
                return Err(format!(
                    "`{iface}` uses resource `{name}`: resources cannot cross between modules"
                ));
            }
            _ => {
                return Err(format!(
                    "`{iface}` imports `{name}`, which is neither a function nor a type"
                ));
            }
        }
    }
    Ok(())
}
