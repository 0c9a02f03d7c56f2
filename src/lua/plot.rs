//! `ftl.plot(path, figure)`: a figure of line or point panels, checked against its option tables
//! and written as SVG in the output directory.

use super::api;
use super::opts::Opts;
use super::{lua_err, LuaExt};
use crate::plot::{Figure, Kind, Panel, Series};
use mlua::{Lua, Table};
use std::sync::Arc;

fn series(lua: &Lua, t: Table) -> mlua::Result<Series> {
    let o = Opts::new(lua, Some(t), &api::PLOT_SERIES)?;
    let name: String = o.or("name", String::new())?;
    let x: Vec<f64> = o.or("x", Vec::new())?;
    let y: Vec<f64> = o.or("y", Vec::new())?;
    if x.len() != y.len() {
        return Err(lua_err(
            lua,
            format!(
                "ftl.plot: series `{name}` has {} x values and {} y values",
                x.len(),
                y.len()
            ),
        ));
    }
    Ok(Series {
        name,
        points: x.into_iter().zip(y).collect(),
    })
}

fn panel(lua: &Lua, t: Table) -> mlua::Result<Panel> {
    let o = Opts::new(lua, Some(t), &api::PLOT_PANEL)?;
    let kind = match o.or::<String>("kind", "lines".into())?.as_str() {
        "lines" => Kind::Lines,
        "points" => Kind::Points,
        other => {
            return Err(lua_err(
                lua,
                format!("ftl.plot: unknown panel kind `{other}` (lines, points)"),
            ))
        }
    };
    let list: Vec<Table> = o.or("series", Vec::new())?;
    Ok(Panel {
        title: o.or("title", String::new())?,
        x_label: o.or("x", String::new())?,
        y_label: o.or("y", String::new())?,
        kind,
        log_x: o.or("log_x", false)?,
        series: list
            .into_iter()
            .map(|s| series(lua, s))
            .collect::<mlua::Result<_>>()?,
    })
}

pub fn register(lua: &Lua, ftl: &Table) -> mlua::Result<()> {
    ftl.set(
        "plot",
        lua.create_function(|lua, (path, fig): (String, Table)| {
            let o = Opts::new(lua, Some(fig), &api::PLOT)?;
            let panels: Vec<Table> = o.or("panels", Vec::new())?;
            let f = Figure {
                title: o.or("title", String::new())?,
                columns: o.or("columns", 2usize)?,
                panels: panels
                    .into_iter()
                    .map(|p| panel(lua, p))
                    .collect::<mlua::Result<_>>()?,
            };
            let env = lua.app_data_ref::<Arc<super::Env>>().unwrap().clone();
            let path = env.output(&path).lua(lua)?;
            if super::plan::writes(lua, "ftl.plot", &path) {
                return Ok(path.display().to_string());
            }
            let svg = crate::plot::svg(&f)
                .map_err(|e| lua_err(lua, format!("ftl.plot: {}: {e}", path.display())))?;
            crate::st::write_atomic(&path, svg.as_bytes()).lua(lua)?;
            Ok(path.display().to_string())
        })?,
    )
}
