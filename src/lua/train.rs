//! `ftl.train` and `ftl.evaluate`.

use mlua::{Lua, Table};

pub fn register(_lua: &Lua, _ftl: &Table) -> mlua::Result<()> {
    Ok(())
}
