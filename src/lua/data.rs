//! `ftl.data`: datasets for training and evaluation.

use mlua::{Lua, Table};

pub fn register(_lua: &Lua, _ftl: &Table) -> mlua::Result<()> {
    Ok(())
}
